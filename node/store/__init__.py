"""The node's state: the SQLite Store (open, transactions, durability, migrations), its
PostgreSQL sibling ``PgStore``, and one repository per aggregate. No SQL runs anywhere else
in ``node`` (docs/adr/0023)."""

from __future__ import annotations

from pathlib import Path

from keys.truststore import PeerRecords
from node.store.feed import FeedRepo, FeedStore
from node.store.log import LEAF_KIND_EXPR, SqliteSubtrees, SubtreeReader
from node.store.peers import SqlitePeerRecords, SqlPeerRecords
from node.store.postgres import PgStore
from node.store.sqlite import DB_FILE, MIGRATIONS, PAGE_SIZE, Store
from node.store.tx import Row, Tx

# The store a node runs on: SQLite in the data directory, or PostgreSQL when config.toml
# names a ``database`` (docs/adr/0024). Both have the same repositories, transactions,
# ``read_snapshot()`` and ``before_commit()``.
NodeStore = Store | PgStore


def open_store(
    data_dir: Path, database: str | None, node_id: str, *, create: bool = False
) -> NodeStore:
    """PostgreSQL at ``database`` when it is set (every write under node ``node_id``'s
    writer lock), else ``node.db`` in ``data_dir``."""
    if database is not None:
        return PgStore.open(database, node_id=node_id)
    return Store.open(data_dir, create=create)


def feed_repo(store: NodeStore) -> FeedRepo:
    """The TAXII feed's repository on the store's backend."""
    return FeedStore(store)


def peer_records(store: NodeStore) -> PeerRecords:
    """The trust store's rows on the store's backend (call inside a transaction)."""
    return SqlPeerRecords(store)


def store_name(store: NodeStore) -> str:
    """Which database a store is, for caches keyed by it and for messages (never a
    password): the SQLite file's path, or host, port and database name."""
    return store.where if isinstance(store, PgStore) else str(store.path)


__all__ = [
    "DB_FILE",
    "LEAF_KIND_EXPR",
    "MIGRATIONS",
    "PAGE_SIZE",
    "FeedRepo",
    "NodeStore",
    "PgStore",
    "Row",
    "SqlitePeerRecords",
    "SqliteSubtrees",
    "Store",
    "SubtreeReader",
    "Tx",
    "feed_repo",
    "open_store",
    "peer_records",
    "store_name",
]
