"""The node's state: the SQLite Store (open, transactions, durability, migrations) and one
repository per aggregate. No SQL runs anywhere else in ``node`` (docs/adr/0023)."""

from node.store.log import LEAF_KIND_EXPR, SqliteSubtrees, SubtreeReader
from node.store.peers import SqlitePeerRecords
from node.store.sqlite import DB_FILE, MIGRATIONS, PAGE_SIZE, Store
from node.store.tx import Row, Tx

__all__ = [
    "DB_FILE",
    "LEAF_KIND_EXPR",
    "MIGRATIONS",
    "PAGE_SIZE",
    "Row",
    "SqlitePeerRecords",
    "SqliteSubtrees",
    "Store",
    "SubtreeReader",
    "Tx",
]
