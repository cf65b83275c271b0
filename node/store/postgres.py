"""The node's state on PostgreSQL (issue 16, docs/adr/0023): the PgStore (one connection,
one psycopg transaction per ``transaction()``, synchronous commit) and a PostgreSQL class for
each repository Protocol of ``node/store/``.

Each class is its SQLite sibling with only the dialect translated: ``?`` is ``%s``,
``INSERT OR IGNORE`` is ``ON CONFLICT DO NOTHING``, sqlite-utils' ``insert``/``upsert`` are
explicit statements, BLOB is BYTEA, and what SQLite numbers by rowid gets an explicit column
filled from the table's largest value plus one inside the writer's transaction (one writer per
node, ``node.store.pg.WriterLock``). A log index is never drawn from a sequence: it is the
tree size, which node/services/log.py computes, as on SQLite.

The schema is the one ordered list ``node.store.sqlite.MIGRATIONS``: per version, SQLite runs
its function and PostgreSQL runs ``PG_MIGRATIONS[version]``, and both end with the same
tables and columns (tests/store/test_repositories_contract.py). The one column SQLite has
implicitly, ``inbox.rowid``, is explicit here (``PG_ONLY_COLUMNS``).

Not yet here: ``accord init`` or ``serve`` on a PostgreSQL database (nothing in node/ opens
a PgStore yet), and ``read_snapshot()``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection, pq
from psycopg.rows import TupleRow

from exchange.errors import StoreError
from exchange.revocation import SignedRevocation
from keys.truststore import KeyRevocation, PeerRecord
from node.store.agreements import AgreementsRepo
from node.store.dialect import PgDialect, PgTx, pg_tx
from node.store.feed import _COLUMNS, Consumer, FeedRow, Visibility, _row
from node.store.inbox import ITEM_SQL, InboxRepo
from node.store.log import PG_LEAF_KIND_EXPR, LogRepo, SqlLogRepo
from node.store.loop import _MARK_OVERDUE, _WHICH, DEADLINE_SQL, LoopRepo
from node.store.meta import MetaRepo
from node.store.outbox import OutboxRepo
from node.store.peers import PeersRepo
from node.store.pg import WriterLock, _set_durable, check_durable, describe, lock_key
from node.store.reports import ReportsRepo
from node.store.sqlite import MIGRATIONS
from node.store.tx import Row, Tx
from node.store.witness import WitnessRepo

_NAME = re.compile(r"[a-z_]+\Z")


def _insert(db: Tx, table: str, row: dict[str, Any], *, number: str | None = None) -> None:
    """sqlite-utils' ``table.insert(row)`` as one statement. ``number``: a column SQLite fills
    from the rowid; here it is the table's largest value plus one."""
    names = [table, *row, *([number] if number else [])]
    if not all(_NAME.match(n) for n in names):
        raise ValueError(f"not a column name in {names}")
    columns = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    if number is not None:
        columns = f"{number}, {columns}"
        marks = f"(SELECT coalesce(max({number}), 0) + 1 FROM {table}), {marks}"  # noqa: S608
    pg_tx(db).execute(
        f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608 (names checked above)
        tuple(row.values()),
    )


def _upsert(db: Tx, table: str, row: dict[str, Any], pk: str) -> None:
    """sqlite-utils' ``table.upsert(row, pk=pk)``: insert, or set the given columns of the
    row with that key (columns not given keep their values)."""
    names = [table, pk, *row]
    if not all(_NAME.match(n) for n in names):
        raise ValueError(f"not a column name in {names}")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in row if c != pk)
    pg_tx(db).execute(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"  # noqa: S608
        f" ON CONFLICT ({pk}) DO UPDATE SET {updates}",
        tuple(row.values()),
    )


# Columns only the PostgreSQL tables have: SQLite's implicit rowid of ``inbox``.
PG_ONLY_COLUMNS = {("inbox", "rowid")}

_PG_MARK_OVERDUE = {step: sql.replace("?", "%s") for step, sql in _MARK_OVERDUE.items()}

# Per version of node.store.sqlite.MIGRATIONS: the statements that yield, on PostgreSQL, the
# tables and columns SQLite's migration function yields.
PG_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "CREATE TABLE own_cards (version BIGINT PRIMARY KEY, signed BYTEA)",
        "CREATE TABLE peers (node TEXT PRIMARY KEY, chain BYTEA NOT NULL,"
        " fingerprint TEXT NOT NULL, card_version BIGINT NOT NULL, status TEXT NOT NULL,"
        " revoked_from TEXT, tofu BIGINT, added_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    ),
    2: (
        "CREATE TABLE log_leaves (idx BIGINT PRIMARY KEY, event BYTEA NOT NULL,"
        " leaf_hash BYTEA NOT NULL)",
        "CREATE TABLE log_subtrees (level BIGINT NOT NULL, idx BIGINT NOT NULL,"
        " hash BYTEA NOT NULL, PRIMARY KEY (level, idx))",
        "CREATE TABLE log_checkpoints (size BIGINT PRIMARY KEY, root BYTEA NOT NULL,"
        " note BYTEA NOT NULL, signed_at TEXT NOT NULL)",
        "CREATE TABLE log_cosignatures (size BIGINT NOT NULL, witness TEXT NOT NULL,"
        " line TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (size, witness))",
        "CREATE TABLE witness_state (origin TEXT PRIMARY KEY, size BIGINT NOT NULL,"
        " root BYTEA NOT NULL, note BYTEA NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE TABLE witness_evidence (id BIGINT PRIMARY KEY, origin TEXT NOT NULL,"
        " held_size BIGINT NOT NULL, held_note BYTEA NOT NULL, offered_note BYTEA NOT NULL,"
        " reason TEXT NOT NULL, at TEXT NOT NULL)",
    ),
    3: (
        "CREATE TABLE reports (report_id TEXT NOT NULL, version BIGINT NOT NULL,"
        " sop TEXT NOT NULL, tlp TEXT NOT NULL, issuer_jwt_digest TEXT NOT NULL,"
        " issuer_key BYTEA NOT NULL, sealed BYTEA NOT NULL, fields TEXT NOT NULL,"
        " sealed_at TEXT NOT NULL, supersedes TEXT, retracted_at TEXT,"
        " PRIMARY KEY (report_id, version))",
        "CREATE INDEX reports_by_time ON reports (sealed_at)",
    ),
    4: (
        "CREATE TABLE agreements (digest TEXT PRIMARY KEY, peer TEXT NOT NULL, id TEXT NOT NULL,"
        " version BIGINT NOT NULL, signed BYTEA NOT NULL, not_before TEXT NOT NULL,"
        " not_after TEXT NOT NULL, stored_at TEXT NOT NULL)",
        "CREATE INDEX agreements_by_peer ON agreements (peer, not_after)",
    ),
    5: (
        "CREATE TABLE outbox (peer TEXT NOT NULL, seq BIGINT NOT NULL,"
        " envelope_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, report_id TEXT NOT NULL,"
        " version BIGINT NOT NULL, header BYTEA NOT NULL, ciphertext BYTEA NOT NULL,"
        " signature BYTEA NOT NULL, digest TEXT NOT NULL, created_at TEXT NOT NULL,"
        " state TEXT NOT NULL DEFAULT 'pending', code TEXT, PRIMARY KEY (peer, seq))",
        "CREATE TABLE inbound (peer TEXT NOT NULL, seq BIGINT NOT NULL, header BYTEA NOT NULL,"
        " ciphertext BYTEA NOT NULL, signature BYTEA NOT NULL, digest TEXT NOT NULL,"
        " status TEXT NOT NULL, code TEXT, received_at TEXT NOT NULL, PRIMARY KEY (peer, seq))",
        "CREATE TABLE inbox (peer TEXT NOT NULL, seq BIGINT NOT NULL,"
        " envelope_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, report_id TEXT NOT NULL,"
        " version BIGINT NOT NULL, issuer TEXT NOT NULL, sop TEXT NOT NULL, tlp TEXT NOT NULL,"
        " fields TEXT NOT NULL, transformed TEXT NOT NULL, issuer_jwt_digest TEXT NOT NULL,"
        " sealed BYTEA NOT NULL, received_at TEXT NOT NULL, rowid BIGINT NOT NULL UNIQUE,"
        " PRIMARY KEY (peer, seq))",
        "CREATE INDEX inbox_by_report ON inbox (issuer, report_id, version)",
        "CREATE INDEX inbox_by_time ON inbox (peer, received_at)",
        "CREATE TABLE cursors (peer TEXT PRIMARY KEY, last_applied BIGINT NOT NULL,"
        " updated_at TEXT NOT NULL)",
        "CREATE TABLE receipts (peer TEXT NOT NULL, direction TEXT NOT NULL,"
        " first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, statement BYTEA NOT NULL,"
        " signature BYTEA NOT NULL, digest TEXT NOT NULL, at TEXT NOT NULL,"
        " PRIMARY KEY (peer, direction, first_seq, last_seq, digest))",
        "CREATE TABLE evidence (id BIGINT PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL,"
        " seq BIGINT, held_digest TEXT, incoming_digest TEXT, incoming BYTEA, at TEXT NOT NULL)",
    ),
    6: ("ALTER TABLE peers ADD COLUMN log_index BIGINT",),
    7: (
        "ALTER TABLE witness_state ADD COLUMN grown_at TEXT",
        "UPDATE witness_state SET grown_at = updated_at",
    ),
    8: ("ALTER TABLE cursors ADD COLUMN acknowledged BIGINT NOT NULL DEFAULT 0",),
    9: (
        "CREATE INDEX inbox_by_report_version ON inbox (report_id, version)",
        "CREATE TABLE releases (report_id TEXT NOT NULL, version BIGINT NOT NULL,"
        " peer TEXT NOT NULL, log_index BIGINT NOT NULL, PRIMARY KEY (report_id, version, peer))",
    ),
    10: (
        "CREATE TABLE submissions (idempotency_key TEXT PRIMARY KEY, report_id TEXT NOT NULL,"
        " version BIGINT NOT NULL, at TEXT NOT NULL)",
    ),
    11: (
        "CREATE TABLE own_revocations (identity_key BYTEA PRIMARY KEY,"
        " revoked_from TEXT NOT NULL, statement BYTEA NOT NULL, signature BYTEA NOT NULL,"
        " log_index BIGINT NOT NULL)",
        "CREATE TABLE peer_revocations (peer TEXT NOT NULL, identity_key BYTEA NOT NULL,"
        " revoked_from TEXT NOT NULL, statement BYTEA NOT NULL, signature BYTEA NOT NULL,"
        " PRIMARY KEY (peer, identity_key))",
    ),
    12: (
        "INSERT INTO meta (key, value) SELECT 'policy.digest',"
        " convert_from(event, 'UTF8')::json ->> 'policy_digest' FROM log_leaves"
        " WHERE convert_from(event, 'UTF8') LIKE '%\"kind\":\"policy.changed\"%'"
        " ORDER BY idx DESC LIMIT 1"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ),
    13: ("CREATE INDEX outbox_by_state ON outbox (peer, state, seq)",),
    14: ("ALTER TABLE log_leaves ADD COLUMN tag BYTEA",),
    15: (
        # SQLite's migration 15 checks each held checkpoint's signature in Python; a
        # PostgreSQL database is created empty at the latest schema, so it has none to check.
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM witness_state) THEN RAISE EXCEPTION"
        " 'migration 15 cannot re-key held witness checkpoints on PostgreSQL'; END IF; END $$",
        "ALTER TABLE witness_evidence ADD COLUMN partner TEXT",
        "CREATE TABLE witness_state_v2 (partner TEXT NOT NULL, origin TEXT NOT NULL,"
        " log_key TEXT NOT NULL, size BIGINT NOT NULL, root BYTEA NOT NULL, note BYTEA NOT NULL,"
        " updated_at TEXT NOT NULL, grown_at TEXT, PRIMARY KEY (partner, origin, log_key))",
        "DROP TABLE witness_state",
        "ALTER TABLE witness_state_v2 RENAME TO witness_state",
        "ALTER INDEX witness_state_v2_pkey RENAME TO witness_state_pkey",
    ),
    16: (f"CREATE INDEX log_leaves_by_kind ON log_leaves (({PG_LEAF_KIND_EXPR}))",),
    17: (
        "ALTER TABLE evidence ADD COLUMN repeats BIGINT NOT NULL DEFAULT 0",
        "CREATE INDEX evidence_by_seq ON evidence (peer, kind, seq)",
        "CREATE INDEX evidence_by_time ON evidence (peer, kind, at)",
        "CREATE TABLE evidence_suppressed (peer TEXT PRIMARY KEY, count BIGINT NOT NULL,"
        " last_at TEXT NOT NULL)",
    ),
    18: (
        "CREATE TABLE own_key_revocations (kind TEXT NOT NULL, key TEXT NOT NULL,"
        " revoked_from TEXT NOT NULL, statement BYTEA NOT NULL, signature BYTEA NOT NULL,"
        " log_index BIGINT NOT NULL, PRIMARY KEY (kind, key))",
        "CREATE TABLE peer_key_revocations (peer TEXT NOT NULL, kind TEXT NOT NULL,"
        " key TEXT NOT NULL, revoked_from TEXT NOT NULL, statement BYTEA NOT NULL,"
        " signature BYTEA NOT NULL, log_index BIGINT NOT NULL, PRIMARY KEY (peer, kind, key))",
    ),
    19: (
        "CREATE TABLE feed_consumers (name TEXT PRIMARY KEY, class TEXT NOT NULL,"
        " collections TEXT NOT NULL, own_organisation BIGINT NOT NULL,"
        " cert_fingerprint TEXT NOT NULL UNIQUE, basic_hash TEXT, created_at TEXT NOT NULL,"
        " revoked_at TEXT)",
        "CREATE TABLE feed_objects (id BIGINT PRIMARY KEY, peer TEXT NOT NULL,"
        " stix_id TEXT NOT NULL, type TEXT NOT NULL, version TEXT NOT NULL,"
        " date_added TEXT NOT NULL, tlp TEXT NOT NULL, sop TEXT NOT NULL,"
        " envelope_id TEXT NOT NULL, fields TEXT NOT NULL, object BYTEA NOT NULL,"
        " UNIQUE (peer, stix_id, version))",
        "CREATE INDEX feed_page ON feed_objects (peer, date_added, id)",
        "CREATE TABLE feed_indexed (peer TEXT PRIMARY KEY, last_seq BIGINT NOT NULL)",
    ),
    20: (
        "CREATE TABLE acks_sent (ack_envelope_id TEXT PRIMARY KEY, peer TEXT NOT NULL,"
        " seq BIGINT NOT NULL, item_envelope_id TEXT NOT NULL, report_id TEXT NOT NULL,"
        " version BIGINT NOT NULL, status TEXT NOT NULL, acked_at TEXT NOT NULL,"
        " sealed BYTEA NOT NULL)",
        "CREATE INDEX acks_sent_item ON acks_sent (item_envelope_id)",
        "CREATE TABLE deadlines (direction TEXT NOT NULL, peer TEXT NOT NULL,"
        " envelope_id TEXT NOT NULL, seq BIGINT NOT NULL, report_id TEXT NOT NULL,"
        " version BIGINT NOT NULL, acknowledge_s BIGINT NOT NULL, respond_s BIGINT,"
        " started_at TEXT NOT NULL, acked_at TEXT, replied_at TEXT, ack_overdue_at TEXT,"
        " respond_overdue_at TEXT, PRIMARY KEY (direction, peer, envelope_id))",
        "CREATE INDEX deadlines_report ON deadlines (peer, report_id)",
        "CREATE TABLE replies (direction TEXT NOT NULL, peer TEXT NOT NULL,"
        " report_id TEXT NOT NULL, version BIGINT NOT NULL, envelope_id TEXT NOT NULL,"
        " in_reply_to TEXT NOT NULL, at TEXT NOT NULL,"
        " PRIMARY KEY (direction, peer, envelope_id))",
        "CREATE INDEX replies_to ON replies (in_reply_to)",
        "CREATE TABLE inbox_read (envelope_id TEXT PRIMARY KEY, at TEXT NOT NULL)",
        "CREATE TABLE acks_received (digest TEXT PRIMARY KEY, peer TEXT NOT NULL,"
        " envelope_id TEXT NOT NULL)",
    ),
}


# A store opened without a node id (tools, the contract suite) serialises its writers with
# this transaction-scoped advisory lock instead of the node's WriterLock. An advisory lock
# is scoped to its database, and one database holds one node.
TRANSACTION_LOCK = lock_key("transaction", "")
WRITE_WAIT = 30.0  # seconds, SQLite's busy_timeout


class PgStore:
    """The node database on PostgreSQL. Open with ``PgStore.open(dsn)``; the repositories
    are the same attributes as ``Store``'s, typed by the same Protocols."""

    def __init__(
        self, conn: Connection[TupleRow], where: str, writer: WriterLock | None = None
    ) -> None:
        self.conn = conn
        self.where = where
        self.writer = writer
        self.db = PgTx(conn)
        self.sql = PgDialect(self.db)
        self.inbox: InboxRepo = PgInboxRepo(self.db)
        self.outbox: OutboxRepo = PgOutboxRepo(self.db)
        self.reports: ReportsRepo = PgReportsRepo(self.db)
        self.loop: LoopRepo = PgLoopRepo(self.db)
        self.log: LogRepo = SqlLogRepo(self.sql)
        self.meta: MetaRepo = PgMetaRepo(self.db)
        self.peers: PeersRepo = PgPeersRepo(self.db)
        self.witness: WitnessRepo = PgWitnessRepo(self.db)
        self.agreements: AgreementsRepo = PgAgreementsRepo(self.db)
        self.staged: dict[str, Any] = {}
        self._before_commit: list[Callable[[], None]] = []

    @classmethod
    def open(cls, dsn: str, *, node_id: str | None = None) -> PgStore:
        """Connect (autocommit between transactions, ``synchronous_commit = on``), refuse a
        server that could lose a commit, and run the migrations.

        With ``node_id`` every write transaction runs under that node's ``WriterLock``,
        taken on this same connection (docs/adr/0024): the log's appends and checkpoint
        signing, like every other write, happen only while this session holds the lock,
        and cannot happen once the session (and with it the lock) is gone."""
        where = describe(dsn)
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as e:
            raise StoreError(
                f"cannot connect to {where}",
                code="store.unavailable",
                next_step="Check that the database server runs and the URL, role and password.",
            ) from e
        try:
            _set_durable(conn)
            check_durable(conn, where)
            writer = None if node_id is None else WriterLock(dsn, node_id, session=conn)
            store = cls(conn, where, writer)
            store.migrate()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        """One durable commit: one psycopg transaction, rolled back on any error."""
        if self.in_transaction():
            raise StoreError("a transaction is already open", code="store.error")
        self.staged, self._before_commit = {}, []
        # One writer at a time, as SQLite's BEGIN IMMEDIATE: the serving process and a CLI
        # command on the same node queue here (as long as SQLite's busy timeout), so the
        # log's next index and each checkpoint are read after the previous writer committed.
        locked = False
        try:
            if self.writer is not None:
                if not self.writer.acquire(timeout=WRITE_WAIT):
                    raise StoreError(
                        f"another process has held the writer lock of node "
                        f"{self.writer.node_id} on {self.where} for {WRITE_WAIT:g} s",
                        code="store.busy",
                        next_step="Retry; if it persists, find the process that holds it "
                        "(pg_locks, advisory).",
                    )
                locked = True
                if not self.writer.uses(self.conn):  # the session was lost and replaced
                    raise StoreError(
                        f"the connection to {self.where} was lost",
                        code="store.unavailable",
                        next_step="Restart the node once the database server answers.",
                    )
            with self.conn.transaction():
                if self.writer is None:
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (TRANSACTION_LOCK,))
                yield self.db
                for hook in self._before_commit:
                    hook()
        except psycopg.Error as e:
            raise StoreError(f"database error on {self.where}: {e}", code="store.error") from e
        finally:
            self.staged, self._before_commit = {}, []
            if locked and self.writer is not None:
                self.writer.unlock()

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One consistent read of the database: a ``REPEATABLE READ READ ONLY`` transaction
        (every statement in it sees the same snapshot, as a SQLite deferred ``BEGIN``
        does); inside an open transaction, that transaction's own view."""
        if self.in_transaction():
            yield
            return
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield
        except psycopg.Error as e:
            raise StoreError(f"database error on {self.where}: {e}", code="store.error") from e

    def before_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` inside the open transaction, just before it commits."""
        if not self.in_transaction():
            raise StoreError("before_commit outside a transaction", code="store.no_transaction")
        self._before_commit.append(hook)

    # -- meta (as ``Store``'s) ------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, db: Tx, key: str, value: str) -> None:
        self.meta.set(db, key, value)

    def own_card_rows(self) -> list[bytes]:
        return self.meta.own_cards()

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return 0
        row = self.conn.execute("SELECT max(version) FROM _migrations").fetchone()
        return int(row[0] or 0) if row is not None else 0

    def migrate(self) -> None:
        current = self.schema_version()
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise StoreError(
                f"{self.where} has schema version {current}, newer than this Accord ({latest})",
                code="store.too_new",
                next_step="Upgrade Accord before opening this node.",
            )
        for version, name, _sqlite in MIGRATIONS:
            if version <= current:
                continue
            with self.transaction() as db:
                if version == 1:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS _migrations (version BIGINT PRIMARY KEY,"
                        " name TEXT)"
                    )
                for statement in PG_MIGRATIONS[version]:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO _migrations (version, name) VALUES (%s, %s)", (version, name)
                )


# -- meta ----------------------------------------------------------------------------------
class PgMetaRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    # -- meta ---------------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, db: Tx, key: str, value: str) -> None:
        pg_tx(db).execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (key, value),
        )

    # -- our own card chain -------------------------------------------------------------------
    def own_cards(self) -> list[bytes]:
        rows = self._conn.execute("SELECT signed FROM own_cards ORDER BY version").fetchall()
        return [bytes(r[0]) for r in rows]

    def add_own_card(self, db: Tx, version: int, signed: bytes) -> None:
        _insert(db, "own_cards", {"version": version, "signed": signed})

    # -- revocations of our own keys ----------------------------------------------------------
    def own_revocations(self) -> list[tuple[bytes, bytes]]:
        """(statement, signature) of our identity keys' revocations, oldest first."""
        rows = self._conn.execute(
            "SELECT statement, signature FROM own_revocations ORDER BY log_index"
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]

    def own_revocation(self, identity_key: bytes) -> bytes | None:
        row = self._conn.execute(
            "SELECT statement FROM own_revocations WHERE identity_key = %s", (identity_key,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def add_own_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "own_revocations", row)

    def own_key_revocations(self) -> list[tuple[bytes, bytes]]:
        """(statement, signature) of our other keys' revocations (ADR 0018), oldest first."""
        rows = self._conn.execute(
            "SELECT statement, signature FROM own_key_revocations ORDER BY log_index"
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]

    def own_key_revocation(self, kind: str, key: str) -> bytes | None:
        row = self._conn.execute(
            "SELECT statement FROM own_key_revocations WHERE kind = %s AND key = %s",
            (kind, key),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def add_own_key_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "own_key_revocations", row)

    def own_revocation_count(self) -> int:
        row = self._conn.execute(
            "SELECT (SELECT count(*) FROM own_revocations)"
            " + (SELECT count(*) FROM own_key_revocations)"
        ).fetchone()
        return int(row[0])


# -- peers ---------------------------------------------------------------------------------
class PgPeerRecords:
    """``keys.truststore.PeerRecords`` over the ``peers`` table. Call inside a transaction."""

    SELECT = (
        "SELECT node, chain, fingerprint, card_version, status, revoked_from, tofu, added_at,"
        " updated_at, log_index FROM peers"
    )

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def get(self, node: str) -> PeerRecord | None:
        row = self._store.db.execute(self.SELECT + " WHERE node = %s", (node,)).fetchone()
        return None if row is None else self._record(row)

    def put(self, record: PeerRecord) -> None:
        _upsert(
            self._store.db,
            "peers",
            {
                "node": record.node,
                "chain": record.chain,
                "fingerprint": record.fingerprint,
                "card_version": record.card_version,
                "status": record.status,
                "revoked_from": record.revoked_from,
                "tofu": int(record.tofu),
                "added_at": record.added_at,
                "updated_at": record.updated_at,
                "log_index": record.log_index,
            },
            "node",
        )

    def delete(self, node: str) -> None:
        self._store.db.execute("DELETE FROM peers WHERE node = %s", (node,))

    def all(self) -> list[PeerRecord]:
        rows = self._store.db.execute(self.SELECT + " ORDER BY node").fetchall()
        return [self._record(r) for r in rows]

    def key_revocations(self, node: str) -> list[KeyRevocation]:
        rows = self._store.db.execute(
            "SELECT identity_key, revoked_from, statement, signature FROM peer_revocations"
            " WHERE peer = %s ORDER BY revoked_from",
            (node,),
        ).fetchall()
        return [
            KeyRevocation(bytes(k), str(t), SignedRevocation(bytes(st), bytes(sig)))
            for k, t, st, sig in rows
        ]

    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None:
        self._store.db.execute(
            "INSERT INTO peer_revocations (peer, identity_key, revoked_from, statement, signature)"
            " VALUES (%s, %s, %s, %s, %s)",
            (
                node,
                revocation.identity_key,
                revocation.revoked_from,
                revocation.signed.statement,
                revocation.signed.signature,
            ),
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> PeerRecord:
        node, chain, fp, version, status, revoked_from, tofu, added, updated, log_index = row
        return PeerRecord(
            node=str(node),
            chain=bytes(chain),
            fingerprint=str(fp),
            card_version=int(version),
            status=str(status),
            revoked_from=None if revoked_from is None else str(revoked_from),
            tofu=bool(tofu),
            added_at=str(added),
            updated_at=str(updated),
            log_index=None if log_index is None else int(log_index),
        )


# -- peers ---------------------------------------------------------------------------------
class PgPeersRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    def bind_log_index(self, peer: str, log_index: int) -> None:
        """In the open transaction: the partner's row is the one entry ``log_index`` logged."""
        self._conn.execute("UPDATE peers SET log_index = %s WHERE node = %s", (log_index, peer))

    def key_revocation_known(self, peer: str, kind: str, key: str) -> bool:
        known = self._conn.execute(
            "SELECT 1 FROM peer_key_revocations WHERE peer = %s AND kind = %s AND key = %s",
            (peer, kind, key),
        ).fetchone()
        return known is not None

    def add_key_revocation(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "peer_key_revocations", row)

    def key_revocation_statements(self, peer: str) -> list[tuple[bytes, bytes]]:
        rows = self._conn.execute(
            "SELECT statement, signature FROM peer_key_revocations WHERE peer = %s"
            " ORDER BY log_index",
            (peer,),
        ).fetchall()
        return [(bytes(st), bytes(sig)) for st, sig in rows]


# -- agreements ----------------------------------------------------------------------------
class PgAgreementsRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    def exists(self, digest: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM agreements WHERE digest = %s", (digest,)).fetchone()
        return row is not None

    def add(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "agreements", row)

    def rows(self, peer: str | None) -> list[Row]:
        """(digest, peer, id, version, not_before, not_after, stored_at, signed), by partner
        and newest end first."""
        sql = (
            "SELECT digest, peer, id, version, not_before, not_after, stored_at, signed "
            "FROM agreements"
        )
        args: tuple[Any, ...] = ()
        if peer is not None:
            sql += " WHERE peer = %s"
            args = (peer,)
        rows: list[Row] = self._conn.execute(
            sql + " ORDER BY peer, not_after DESC", args
        ).fetchall()
        return rows

    def row(self, digest: str) -> Row | None:
        row: Row | None = self._conn.execute(
            "SELECT digest, peer, id, version, not_before, not_after, stored_at, signed "
            "FROM agreements WHERE digest = %s",
            (digest,),
        ).fetchone()
        return row


# -- reports -------------------------------------------------------------------------------
class PgReportsRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    def add(self, db: Tx, values: Row) -> None:
        pg_tx(db).execute(
            "INSERT INTO reports (report_id, version, sop, tlp, issuer_jwt_digest, issuer_key, "
            "sealed, fields, sealed_at, supersedes) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            values,
        )

    def exists(self, report_id: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM reports WHERE report_id = %s", (report_id,)
            ).fetchone()
            is not None
        )

    def sealed(self, report_id: str, version: int | None) -> tuple[int, bytes, bytes] | None:
        """(version, issuer_key, sealed) of the named version, or of the latest."""
        sql = "SELECT version, issuer_key, sealed FROM reports WHERE report_id = %s"
        args: tuple[object, ...] = (report_id,)
        if version is not None:
            sql += " AND version = %s"
            args = (report_id, version)
        row = self._conn.execute(sql + " ORDER BY version DESC LIMIT 1", args).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def latest(self, report_id: str) -> tuple[int, str, str | None] | None:
        """(version, issuer_jwt_digest, retracted_at) of the latest version."""
        row = self._conn.execute(
            "SELECT version, issuer_jwt_digest, retracted_at FROM reports WHERE report_id = %s "
            "ORDER BY version DESC LIMIT 1",
            (report_id,),
        ).fetchone()
        return (
            None
            if row is None
            else (int(row[0]), str(row[1]), None if row[2] is None else str(row[2]))
        )

    def newest(self, limit: int) -> list[Row]:
        """(report_id, version, sop, tlp, issuer_jwt_digest, fields, sealed_at), newest first."""
        rows: list[Row] = self._conn.execute(
            "SELECT report_id, version, sop, tlp, issuer_jwt_digest, fields, sealed_at "
            "FROM reports ORDER BY sealed_at DESC, report_id LIMIT %s",
            (limit,),
        ).fetchall()
        return rows

    def ids_between(self, low: str, high: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT report_id FROM reports WHERE report_id >= %s AND report_id < %s "
            "ORDER BY report_id LIMIT 2",
            (low, high),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def retracted_ids(self) -> set[str]:
        return {
            r[0]
            for r in self._conn.execute(
                "SELECT report_id FROM reports WHERE retracted_at IS NOT NULL"
            )
        }

    def set_retracted(self, db: Tx, report_id: str, at: str) -> None:
        pg_tx(db).execute(
            "UPDATE reports SET retracted_at = %s WHERE report_id = %s", (at, report_id)
        )

    def issuer_key(self, report_id: str, version: int) -> bytes:
        return bytes(
            self._conn.execute(
                "SELECT issuer_key FROM reports WHERE report_id = %s AND version = %s",
                (report_id, version),
            ).fetchone()[0]
        )

    def latest_issuer_key(self, report_id: str | None) -> bytes:
        return bytes(
            self._conn.execute(
                "SELECT issuer_key FROM reports WHERE report_id = %s ORDER BY version DESC",
                (report_id,),
            ).fetchone()[0]
        )

    def key_and_times(self, report_id: str, version: int) -> tuple[bytes, str, str | None]:
        """(issuer_key, sealed_at, retracted_at) of one version."""
        key = self._conn.execute(
            "SELECT issuer_key, sealed_at, retracted_at FROM reports "
            "WHERE report_id = %s AND version = %s",
            (report_id, version),
        ).fetchone()
        return bytes(key[0]), key[1], key[2]

    def versions(self, report_id: str) -> list[int]:
        return [
            int(r[0])
            for r in self._conn.execute(
                "SELECT version FROM reports WHERE report_id = %s ORDER BY version",
                (report_id,),
            )
        ]

    def sop_tlp(self, report_id: str, version: int) -> tuple[str, str] | None:
        row = self._conn.execute(
            "SELECT sop, tlp FROM reports WHERE report_id = %s AND version = %s",
            (report_id, version),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def add_submission(
        self, db: Tx, idempotency_key: str, report_id: str, version: int, at: str
    ) -> None:
        pg_tx(db).execute(
            "INSERT INTO submissions (idempotency_key, report_id, version, at) "
            "VALUES (%s, %s, %s, %s)",
            (idempotency_key, report_id, version, at),
        )

    def submission(self, idempotency_key: str) -> tuple[str, int] | None:
        row = self._conn.execute(
            "SELECT report_id, version FROM submissions WHERE idempotency_key = %s",
            (idempotency_key,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def add_release(self, db: Tx, report_id: str, version: int, peer: str, log_index: int) -> None:
        pg_tx(db).execute(
            "INSERT INTO releases (report_id, version, peer, log_index) VALUES (%s, %s, %s, %s)",
            (report_id, version, peer, log_index),
        )

    def release_events(self, report_id: str, version: int) -> list[bytes]:
        """The log events of one version's release decisions, by partner."""
        rows = self._conn.execute(
            "SELECT l.event FROM releases r JOIN log_leaves l ON l.idx = r.log_index "
            "WHERE r.report_id = %s AND r.version = %s ORDER BY r.peer",
            (report_id, version),
        ).fetchall()
        return [bytes(data) for (data,) in rows]


# -- outbox --------------------------------------------------------------------------------
class PgOutboxRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    def max_seq(self, peer: str) -> int | None:
        row = self._conn.execute("SELECT max(seq) FROM outbox WHERE peer = %s", (peer,)).fetchone()
        return None if row[0] is None else int(row[0])

    def max_seq_in_state(self, peer: str, state: str) -> int | None:
        row = self._conn.execute(
            "SELECT max(seq) FROM outbox WHERE peer = %s AND state = %s", (peer, state)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def add(self, db: Tx, values: Row) -> None:
        pg_tx(db).execute(
            "INSERT INTO outbox (peer, seq, envelope_id, kind, report_id, version, header, "
            "ciphertext, signature, digest, created_at, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')",
            values,
        )

    def after(self, peer: str, after_seq: int, limit: int) -> list[Row]:
        """(seq, header, ciphertext, signature) after ``after_seq``, in seq order."""
        rows: list[Row] = self._conn.execute(
            "SELECT seq, header, ciphertext, signature FROM outbox "
            "WHERE peer = %s AND seq > %s ORDER BY seq LIMIT %s",
            (peer, after_seq, limit),
        ).fetchall()
        return rows

    def digests(self, peer: str, first: int, last: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT digest FROM outbox WHERE peer = %s AND seq BETWEEN %s AND %s ORDER BY seq",
            (peer, first, last),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def peers_sent(self, report_id: str) -> set[str]:
        return {
            r[0]
            for r in self._conn.execute(
                "SELECT DISTINCT peer FROM outbox WHERE report_id = %s AND kind = 'report'",
                (report_id,),
            )
        }

    def pending_count(self, peer: str, first: int, last: int) -> int:
        pending = self._conn.execute(
            "SELECT count(*) FROM outbox WHERE peer = %s AND seq BETWEEN %s AND %s "
            "AND state = 'pending'",
            (peer, first, last),
        ).fetchone()
        return int(pending[0])

    def mark_delivered(self, db: Tx, peer: str, first: int, last: int) -> None:
        pg_tx(db).execute(
            "UPDATE outbox SET state = 'delivered' "
            "WHERE peer = %s AND seq BETWEEN %s AND %s AND state = 'pending'",
            (peer, first, last),
        )

    def mark_rejected(self, db: Tx, peer: str, seq: int, code: str) -> None:
        pg_tx(db).execute(
            "UPDATE outbox SET state = 'rejected', code = %s WHERE peer = %s AND seq = %s",
            (code, peer, seq),
        )

    def receipt_received(self, peer: str, digest: str) -> bool:
        seen = self._conn.execute(
            "SELECT 1 FROM receipts WHERE peer = %s AND direction = 'received' AND digest = %s",
            (peer, digest),
        ).fetchone()
        return seen is not None

    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "receipts", row)

    def first_release_time(
        self, peer: str, report_id: str, version: int, jwt_digest: str
    ) -> str | None:
        """When that version of our report (by its issuer JWT digest) was first queued."""
        row = self._conn.execute(
            "SELECT o.created_at FROM outbox o JOIN reports r ON r.report_id = o.report_id "
            "AND r.version = o.version WHERE o.peer = %s AND o.report_id = %s AND o.version = %s "
            "AND o.kind = 'report' AND r.issuer_jwt_digest = %s ORDER BY o.seq LIMIT 1",
            (peer, report_id, version, jwt_digest),
        ).fetchone()
        return None if row is None else str(row[0])

    def pending_created_between(self, start: str, end: str) -> int:
        """Envelopes no partner acknowledged yet, queued in [start, end)."""
        row = self._conn.execute(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND created_at >= %s"
            " AND created_at < %s",
            (start, end),
        ).fetchone()
        return int(row[0])

    def last_receipt_received_at(self, peer: str) -> str | None:
        at = self._conn.execute(
            "SELECT max(at) FROM receipts WHERE peer = %s AND direction = 'received'", (peer,)
        ).fetchone()[0]
        return None if at is None else str(at)

    def report_states(self, report_id: str, version: int) -> dict[tuple[str, int], str]:
        """(partner, seq) -> delivery state of each envelope of that report version."""
        return {
            (str(peer), int(seq)): str(state)
            for peer, seq, state in self._conn.execute(
                "SELECT peer, seq, state FROM outbox WHERE report_id = %s AND version = %s "
                "AND kind = 'report'",
                (report_id, version),
            )
        }


# -- inbox ---------------------------------------------------------------------------------
class PgInboxRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    # -- cursors ----------------------------------------------------------------------------
    def cursor(self, peer: str) -> int | None:
        row = self._conn.execute(
            "SELECT last_applied FROM cursors WHERE peer = %s", (peer,)
        ).fetchone()
        return None if row is None else int(row[0])

    def acknowledged(self, peer: str) -> int | None:
        row = self._conn.execute(
            "SELECT acknowledged FROM cursors WHERE peer = %s", (peer,)
        ).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, db: Tx, peer: str, last_applied: int, updated_at: str) -> None:
        _upsert(
            db,
            "cursors",
            {"peer": peer, "last_applied": last_applied, "updated_at": updated_at},
            "peer",
        )

    def set_acknowledged(self, db: Tx, peer: str, through: int) -> None:
        pg_tx(db).execute(
            "UPDATE cursors SET acknowledged = %s WHERE peer = %s AND acknowledged < %s",
            (through, peer, through),
        )

    # -- inbound envelopes --------------------------------------------------------------------
    def inbound(self, peer: str, seq: int) -> tuple[bytes, bytes, bytes] | None:
        row = self._conn.execute(
            "SELECT header, ciphertext, signature FROM inbound WHERE peer = %s AND seq = %s",
            (peer, seq),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bytes(row[2]))

    def add_inbound(
        self,
        db: Tx,
        peer: str,
        seq: int,
        header: bytes,
        ciphertext: bytes,
        signature: bytes,
        digest: str,
        status: str,
        code: str | None,
        received_at: str,
    ) -> None:
        pg_tx(db).execute(
            "INSERT INTO inbound (peer, seq, header, ciphertext, signature, digest, status, code, "
            "received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (peer, seq, header, ciphertext, signature, digest, status, code, received_at),
        )

    def rejections(self, peer: str | None) -> list[tuple[str, int, str]]:
        sql = "SELECT peer, seq, code FROM inbound WHERE status = 'rejected'"
        args: tuple[Any, ...] = ()
        if peer:
            sql += " AND peer = %s"
            args = (peer,)
        return [
            (r[0], int(r[1]), r[2]) for r in self._conn.execute(sql + " ORDER BY peer, seq", args)
        ]

    # -- inbox items --------------------------------------------------------------------------
    def add_item(self, db: Tx, values: Row) -> None:
        pg_tx(db).execute(  # the rowid SQLite gives the row, explicit
            "INSERT INTO inbox (peer, seq, envelope_id, kind, report_id, version, issuer, sop, "
            "tlp, fields, transformed, issuer_jwt_digest, sealed, received_at, rowid) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "(SELECT coalesce(max(rowid), 0) + 1 FROM inbox))",
            values,
        )

    def _rows(self, sql: str, args: Any) -> list[Row]:
        rows: list[Row] = self._conn.execute(sql, args).fetchall()
        return rows

    def items_of_report_by(self, report_id: str, issuer: str) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.report_id = %s AND i.issuer = %s", (report_id, issuer)
        )

    def items_not_report(self, peer: str) -> list[Row]:
        return self._rows(ITEM_SQL + " WHERE i.peer = %s AND i.kind != 'report'", (peer,))

    def items_not_report_of(self, peer: str, report_id: str) -> list[Row]:
        return self._rows(
            ITEM_SQL
            + " WHERE i.peer = %s AND i.report_id = %s AND i.kind != 'report' ORDER BY i.seq",
            (peer, report_id),
        )

    def acks(self, peer: str | None, report_id: str | None) -> list[Row]:
        sql, args = ITEM_SQL + " WHERE i.kind != 'report'", []
        if peer is not None:
            sql, args = sql + " AND i.peer = %s", [peer]
        if report_id is not None:
            sql, args = sql + " AND i.report_id = %s", [*args, report_id]
        return self._rows(sql + " ORDER BY i.peer, i.seq", args)

    def reports(self, peer: str | None, before: str | None, limit: int) -> list[Row]:
        where, args = ["i.kind = 'report'"], []
        if peer:
            where.append("i.peer = %s")
            args.append(peer)
        if before:
            where.append("i.envelope_id < %s")
            args.append(before)
        return self._rows(
            ITEM_SQL + " WHERE " + " AND ".join(where) + " ORDER BY i.envelope_id DESC LIMIT %s",
            (*args, limit),
        )

    def reports_received_after(self, peer: str, since: str, limit: int) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = %s AND i.kind = 'report' AND i.received_at > %s "
            "ORDER BY i.received_at DESC LIMIT %s",
            (peer, since, limit),
        )

    def items_after(self, peer: str, after_seq: int, limit: int) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = %s AND i.seq > %s ORDER BY i.seq LIMIT %s",
            (peer, after_seq, limit),
        )

    def last_rowid(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(rowid), 0) FROM inbox").fetchone()[0])

    def rows_after(self, after: int, limit: int) -> list[Row]:
        """Item rows after rowid ``after``, each with its rowid first."""
        return self._rows(
            "SELECT i.rowid, " + ITEM_SQL.removeprefix("SELECT ") + " WHERE i.rowid > %s "
            "ORDER BY i.rowid LIMIT %s",
            (after, limit),
        )

    def items_of_report(self, peer: str, report_id: str) -> list[Row]:
        return self._rows(
            ITEM_SQL + " WHERE i.peer = %s AND i.report_id = %s ORDER BY i.seq",
            (peer, report_id),
        )

    def item(self, envelope_id: str) -> Row | None:
        row = self._conn.execute(ITEM_SQL + " WHERE i.envelope_id = %s", (envelope_id,)).fetchone()
        return None if row is None else row

    def envelope_ids_between(self, low: str, high: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT envelope_id FROM inbox WHERE envelope_id >= %s AND envelope_id < %s "
            "ORDER BY envelope_id LIMIT 2",
            (low, high),
        ).fetchall()
        return [str(r[0]) for r in rows]

    # -- receipts sent ------------------------------------------------------------------------
    def add_receipt(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "receipts", row)

    def sent_receipts_after(self, peer: str, after_first_seq: int) -> list[Row]:
        """(last_seq, statement, signature) of the receipts sent ``peer`` past a first seq."""
        return self._rows(
            "SELECT last_seq, statement, signature FROM receipts "
            "WHERE peer = %s AND direction = 'sent' AND first_seq > %s ORDER BY first_seq",
            (peer, after_first_seq),
        )

    def last_sent_receipt(self, peer: str) -> tuple[bytes, bytes] | None:
        row = self._conn.execute(
            "SELECT statement, signature FROM receipts WHERE peer = %s AND direction = 'sent' "
            "ORDER BY last_seq DESC LIMIT 1",
            (peer,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    # -- evidence -----------------------------------------------------------------------------
    def equivocations_since(self, peer: str, since: str) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM evidence WHERE peer = %s AND kind = 'equivocation' AND at > %s",
            (peer, since),
        ).fetchone()
        return int(row[0])

    def count_suppressed(self, db: Tx, peer: str, at: str) -> None:
        pg_tx(db).execute(
            "INSERT INTO evidence_suppressed (peer, count, last_at) VALUES (%s, 1, %s) "
            "ON CONFLICT (peer) DO UPDATE SET count = evidence_suppressed.count + 1, "
            "last_at = excluded.last_at",
            (peer, at),
        )

    def first_equivocation(self, peer: str, seq: int) -> tuple[int, str] | None:
        kept = self._conn.execute(
            "SELECT id, incoming_digest FROM evidence WHERE peer = %s AND kind = 'equivocation' "
            "AND seq = %s ORDER BY id LIMIT 1",
            (peer, seq),
        ).fetchone()
        return None if kept is None else (int(kept[0]), str(kept[1]))

    def count_repeat(self, db: Tx, evidence_id: int) -> None:
        pg_tx(db).execute("UPDATE evidence SET repeats = repeats + 1 WHERE id = %s", (evidence_id,))

    def add_evidence(self, db: Tx, row: dict[str, Any]) -> None:
        _insert(db, "evidence", row, number="id")

    # -- single columns other modules need ------------------------------------------------------
    def jwt_digest(self, peer: str, envelope_id: str) -> str:
        row = self._conn.execute(
            "SELECT issuer_jwt_digest FROM inbox WHERE peer = %s AND envelope_id = %s",
            (peer, envelope_id),
        ).fetchone()
        return str(row[0])

    def first_report_peer(self, db: Tx, report_id: str) -> str | None:
        """The partner whose report ``report_id`` arrived first, read in ``db``."""
        row = (
            pg_tx(db)
            .execute(
                "SELECT peer FROM inbox WHERE report_id = %s AND kind = 'report' "
                "ORDER BY seq LIMIT 1",
                (report_id,),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def sop_tlp(self, peer: str, envelope_id: str) -> tuple[str, str] | None:
        row = self._conn.execute(
            "SELECT sop, tlp FROM inbox WHERE peer = %s AND envelope_id = %s",
            (peer, envelope_id),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # -- counts for Status ----------------------------------------------------------------------
    def evidence_counts(self) -> list[tuple[str, int]]:
        """Per partner: equivocations kept as evidence, each with its repeats (P07)."""
        return [
            (str(peer), int(count))
            for peer, count in self._conn.execute(
                "SELECT peer, count(*) + sum(repeats) FROM evidence GROUP BY peer"
            )
        ]

    def suppressed_counts(self) -> list[tuple[str, int]]:
        """Per partner: equivocations beyond the alarm budget (L06)."""
        return [
            (str(peer), int(count))
            for peer, count in self._conn.execute("SELECT peer, count FROM evidence_suppressed")
        ]


# -- loop ----------------------------------------------------------------------------------
class PgLoopRepo:
    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    # -- deadlines ----------------------------------------------------------------------------
    def add_deadline(
        self,
        db: Tx,
        direction: str,
        peer: str,
        envelope_id: str,
        seq: int,
        report_id: str,
        version: int,
        acknowledge_s: int,
        respond_s: int | None,
        started_at: str,
    ) -> None:
        """Once per (direction, partner, envelope): a second insert changes nothing."""
        values = (peer, envelope_id, seq, report_id, version, acknowledge_s, respond_s, started_at)
        if direction == "in":
            pg_tx(db).execute(
                "INSERT INTO deadlines (direction, peer, envelope_id, seq, report_id, "
                "version, acknowledge_s, respond_s, started_at) "
                "VALUES ('in', %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                values,
            )
        else:
            pg_tx(db).execute(
                "INSERT INTO deadlines (direction, peer, envelope_id, seq, report_id, "
                "version, acknowledge_s, respond_s, started_at) "
                "VALUES ('out', %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                values,
            )

    def deadlines(
        self,
        direction: str | None,
        peer: str | None,
        envelope_id: str | None,
        report_id: str | None,
        which: str | None = None,
    ) -> list[Row]:
        """Deadline rows (``DEADLINE_SQL`` columns) matching every filter given, by start.
        ``which="unreported"``: a step neither done nor reported overdue yet (what the
        overdue check reads); ``"unfinished"``: a step not done (what status counts). Both
        leave years of finished history unread."""
        where, args = [], []
        if which is not None:
            where.append(_WHICH[which])
        if direction is not None:
            where.append("direction = %s")
            args.append(direction)
        for column, value in (
            ("peer", peer),
            ("envelope_id", envelope_id),
            ("report_id", report_id),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        sql = DEADLINE_SQL + (" WHERE " + " AND ".join(where) if where else "")
        rows: list[Row] = self._conn.execute(sql + " ORDER BY started_at", args).fetchall()
        return rows

    def add_ack_received(self, db: Tx, digest: str, peer: str, envelope_id: str) -> None:
        pg_tx(db).execute(
            "INSERT INTO acks_received (digest, peer, envelope_id) VALUES (%s, %s, %s)",
            (digest, peer, envelope_id),
        )

    def ack_received(self, digest: str, peer: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM acks_received WHERE digest = %s AND peer = %s", (digest, peer)
        ).fetchone()
        return row is not None

    def deadline_acked(
        self, db: Tx, direction: str, peer: str, envelope_id: str, acked_at: str
    ) -> None:
        if direction == "in":
            pg_tx(db).execute(
                "UPDATE deadlines SET acked_at = %s WHERE direction = 'in' AND peer = %s "
                "AND envelope_id = %s AND acked_at IS NULL",
                (acked_at, peer, envelope_id),
            )
        else:
            pg_tx(db).execute(
                "UPDATE deadlines SET acked_at = %s WHERE direction = 'out' AND peer = %s "
                "AND envelope_id = %s AND acked_at IS NULL",
                (acked_at, peer, envelope_id),
            )

    def deadline_replied(
        self, db: Tx, direction: str, peer: str, report_id: str, replied_at: str
    ) -> None:
        if direction == "in":
            pg_tx(db).execute(
                "UPDATE deadlines SET replied_at = %s WHERE direction = 'in' AND peer = %s "
                "AND report_id = %s AND replied_at IS NULL",
                (replied_at, peer, report_id),
            )
        else:
            pg_tx(db).execute(
                "UPDATE deadlines SET replied_at = %s WHERE direction = 'out' AND peer = %s "
                "AND report_id = %s AND replied_at IS NULL",
                (replied_at, peer, report_id),
            )

    def deadlines_started(self, db: Tx, peer: str, first: int, last: int, at: str) -> None:
        """Outgoing deadlines of seqs first..last start at ``at`` unless they started later."""
        pg_tx(db).execute(
            "UPDATE deadlines SET started_at = GREATEST(started_at, %s) WHERE direction = 'out' "
            "AND peer = %s AND seq BETWEEN %s AND %s",
            (at, peer, first, last),
        )

    def mark_overdue(
        self, db: Tx, step: str, at: str, direction: str, peer: str, envelope_id: str
    ) -> bool:
        """Record that ``step`` went overdue; False when it was recorded before."""
        changed = (
            pg_tx(db).execute(_PG_MARK_OVERDUE[step], (at, direction, peer, envelope_id)).rowcount
        )
        return bool(changed)

    # -- replies ------------------------------------------------------------------------------
    def add_reply(
        self,
        db: Tx,
        direction: str,
        peer: str,
        report_id: str,
        version: int,
        envelope_id: str,
        in_reply_to: str,
        at: str,
    ) -> None:
        values = (peer, report_id, version, envelope_id, in_reply_to, at)
        if direction == "in":
            pg_tx(db).execute(
                "INSERT INTO replies (direction, peer, report_id, version, envelope_id, "
                "in_reply_to, at) VALUES ('in', %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                values,
            )
        else:
            pg_tx(db).execute(
                "INSERT INTO replies (direction, peer, report_id, version, envelope_id, "
                "in_reply_to, at) VALUES ('out', %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                values,
            )

    def replies(self, in_reply_to: str) -> list[Row]:
        """(direction, peer, report_id, version, envelope_id, at) of the replies, by time."""
        rows: list[Row] = self._conn.execute(
            "SELECT direction, peer, report_id, version, envelope_id, at FROM replies "
            "WHERE in_reply_to = %s ORDER BY at",
            (in_reply_to,),
        ).fetchall()
        return rows

    # -- acknowledgements sent ----------------------------------------------------------------
    def add_ack_sent(self, db: Tx, values: Row) -> None:
        pg_tx(db).execute(
            "INSERT INTO acks_sent (ack_envelope_id, peer, seq, item_envelope_id, report_id, "
            "version, status, acked_at, sealed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            values,
        )

    def acks_sent(self, item_envelope_id: str | None) -> list[Row]:
        """(ack_envelope_id, peer, item_envelope_id, status, acked_at, sealed), by time."""
        sql = (
            "SELECT ack_envelope_id, peer, item_envelope_id, status, acked_at, sealed "
            "FROM acks_sent"
        )
        args: tuple[Any, ...] = ()
        if item_envelope_id is not None:
            sql += " WHERE item_envelope_id = %s"
            args = (item_envelope_id,)
        rows: list[Row] = self._conn.execute(
            sql + " ORDER BY acked_at, ack_envelope_id", args
        ).fetchall()
        return rows

    # -- read marks ---------------------------------------------------------------------------
    def mark_read(self, db: Tx, envelope_id: str, at: str) -> None:
        pg_tx(db).execute(
            "INSERT INTO inbox_read (envelope_id, at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (envelope_id, at),
        )

    def read_ids(self) -> set[str]:
        return {str(r[0]) for r in self._conn.execute("SELECT envelope_id FROM inbox_read")}


# -- witness -------------------------------------------------------------------------------
class PgWitnessRepo:
    """Writes run in the open transaction of the Store's connection."""

    def __init__(self, conn: PgTx) -> None:
        self._conn = conn

    def held(self, partner: str, origin: str, log_key: str) -> tuple[int, bytes, bytes] | None:
        """(size, root, note) held for that partner, origin and log key."""
        row = self._conn.execute(
            "SELECT size, root, note FROM witness_state WHERE partner = %s AND origin = %s "
            "AND log_key = %s",
            (partner, origin, log_key),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def largest(self, partner: str, origin: str) -> tuple[int, bytes, bytes] | None:
        """(size, root, note) of the largest checkpoint held for the origin, any log key."""
        row = self._conn.execute(
            "SELECT size, root, note FROM witness_state WHERE partner = %s AND origin = %s "
            "ORDER BY size DESC LIMIT 1",
            (partner, origin),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def hold(
        self,
        partner: str,
        origin: str,
        log_key: str,
        size: int,
        root: bytes,
        note: bytes,
        at: str,
    ) -> None:
        """Hold this checkpoint; ``grown_at`` moves only when the size grew."""
        self._conn.execute(
            "INSERT INTO witness_state (partner, origin, log_key, size, root, note, "
            "updated_at, grown_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT(partner, origin, log_key) DO UPDATE SET "
            "size = excluded.size, root = excluded.root, note = excluded.note, "
            "updated_at = excluded.updated_at, grown_at = CASE WHEN excluded.size > "
            "witness_state.size THEN excluded.grown_at ELSE witness_state.grown_at END",
            (partner, origin, log_key, size, root, note, at, at),
        )

    def grown_at(self, partner: str, origin: str) -> str | None:
        row = self._conn.execute(
            "SELECT max(grown_at) FROM witness_state WHERE partner = %s AND origin = %s",
            (partner, origin),
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def add_evidence(
        self,
        origin: str,
        partner: str,
        held_size: int,
        held_note: bytes,
        offered_note: bytes,
        reason: str,
        at: str,
    ) -> None:
        self._conn.execute(
            "INSERT INTO witness_evidence "
            "(id, origin, partner, held_size, held_note, offered_note, reason, at) "
            "VALUES ((SELECT coalesce(max(id), 0) + 1 FROM witness_evidence), "
            "%s, %s, %s, %s, %s, %s, %s)",
            (origin, partner, held_size, held_note, offered_note, reason, at),
        )

    def evidence(self, origin: str) -> list[tuple[bytes, bytes, str]]:
        rows = self._conn.execute(
            "SELECT held_note, offered_note, reason FROM witness_evidence "
            "WHERE origin = %s ORDER BY id",
            (origin,),
        ).fetchall()
        return [(bytes(a), bytes(b), str(c)) for a, b, c in rows]


# -- feed ----------------------------------------------------------------------------------
def _pg_visible(visible: Visibility, alias: str) -> tuple[str, list[Any]]:
    """``Visibility.sql`` in PostgreSQL's dialect: ``%s`` placeholders, FALSE for nothing."""
    sql, args = visible.sql(alias)
    return ("FALSE" if sql == "0" else sql.replace("?", "%s")), args


class PgFeedRepo:
    """``FeedRepo`` over a ``PgStore``: FeedStore's statements in PostgreSQL's dialect
    (``%s``, ``FALSE`` for SQLite's ``0``, no ``INDEXED BY``, an explicit ``id``)."""

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self._conn = store.db

    # -- consumers ----------------------------------------------------------------------
    _CONSUMER = (
        "SELECT name, class, collections, own_organisation, cert_fingerprint, basic_hash, "
        "created_at, revoked_at FROM feed_consumers"
    )

    @staticmethod
    def _consumer(r: Sequence[Any]) -> Consumer:
        return Consumer(r[0], r[1], tuple(json.loads(r[2])), bool(r[3]), r[4], r[5], r[6], r[7])

    def add_consumer(self, db: Tx, c: Consumer) -> None:
        pg_tx(db).execute(
            "INSERT INTO feed_consumers (name, class, collections, own_organisation, "
            "cert_fingerprint, basic_hash, created_at, revoked_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, NULL)",
            (
                c.name,
                c.recipient_class,
                json.dumps(sorted(c.collections)),
                int(c.own_organisation),
                c.cert_fingerprint,
                c.basic_hash,
                c.created_at,
            ),
        )

    def consumer(self, name: str) -> Consumer | None:
        r = self._conn.execute(self._CONSUMER + " WHERE name = %s", (name,)).fetchone()
        return None if r is None else self._consumer(r)

    def consumer_by_certificate(self, fingerprint: str) -> Consumer | None:
        r = self._conn.execute(
            self._CONSUMER + " WHERE cert_fingerprint = %s", (fingerprint,)
        ).fetchone()
        return None if r is None else self._consumer(r)

    def consumers(self) -> list[Consumer]:
        return [self._consumer(r) for r in self._conn.execute(self._CONSUMER + " ORDER BY name")]

    def revoke_consumer(self, db: Tx, name: str, at: str) -> None:
        pg_tx(db).execute(
            "UPDATE feed_consumers SET revoked_at = %s, basic_hash = NULL "
            "WHERE name = %s AND revoked_at IS NULL",
            (at, name),
        )

    # -- indexing -----------------------------------------------------------------------
    def indexed_seq(self, peer: str) -> int:
        r = self._conn.execute(
            "SELECT last_seq FROM feed_indexed WHERE peer = %s", (peer,)
        ).fetchone()
        return 0 if r is None else int(r[0])

    def set_indexed_seq(self, db: Tx, peer: str, seq: int) -> None:
        pg_tx(db).execute(
            "INSERT INTO feed_indexed (peer, last_seq) VALUES (%s, %s) "
            "ON CONFLICT (peer) DO UPDATE SET last_seq = excluded.last_seq",
            (peer, seq),
        )

    def peers_with_items(self) -> list[str]:
        """Partners this node trusts (each a collection)."""
        return [str(r[0]) for r in self._conn.execute("SELECT node FROM peers ORDER BY node")]

    def last_date_added(self) -> str | None:
        r = self._conn.execute("SELECT max(date_added) FROM feed_objects").fetchone()
        return None if r[0] is None else str(r[0])

    def has_object(self, peer: str, stix_id: str, version: str) -> bool:
        return (
            self._conn.execute(
                "SELECT 1 FROM feed_objects WHERE peer = %s AND stix_id = %s AND version = %s",
                (peer, stix_id, version),
            ).fetchone()
            is not None
        )

    def add_object(
        self,
        db: Tx,
        *,
        peer: str,
        stix_id: str,
        type: str,
        version: str,
        date_added: str,
        tlp: str,
        sop: str,
        envelope_id: str,
        fields: Sequence[str],
        blob: bytes,
    ) -> None:
        pg_tx(db).execute(
            "INSERT INTO feed_objects (id, peer, stix_id, type, version, date_added, tlp, sop, "
            "envelope_id, fields, object) VALUES ((SELECT coalesce(max(id), 0) + 1 "
            "FROM feed_objects), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                peer,
                stix_id,
                type,
                version,
                date_added,
                tlp,
                sop,
                envelope_id,
                json.dumps(sorted(fields)),
                blob,
            ),
        )

    # -- reading pages ------------------------------------------------------------------
    def page(
        self,
        peer: str,
        visible: Visibility,
        *,
        after: tuple[str, int] | None,
        added_after: str | None,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        versions: Sequence[str] = ("last",),
        limit: int,
    ) -> list[FeedRow]:
        sql, args = self.page_sql(
            peer,
            visible,
            after=after,
            added_after=added_after,
            ids=ids,
            types=types,
            versions=versions,
            limit=limit,
        )
        return [_row(r) for r in self._conn.execute(sql, args)]

    def page_sql(
        self,
        peer: str,
        visible: Visibility,
        *,
        after: tuple[str, int] | None,
        added_after: str | None,
        ids: Sequence[str] = (),
        types: Sequence[str] = (),
        versions: Sequence[str] = ("last",),
        limit: int,
    ) -> tuple[str, list[Any]]:
        """The SQL of ``page`` (tests check its query plan).

        Up to ``limit`` visible rows of ``peer``'s collection in (date_added, id) order,
        after the keyset position ``after`` and strictly after ``added_after``.

        ``versions``: ``last``, ``first``, ``all`` or exact ``modified`` timestamps; last
        and first are among the versions this consumer may see."""
        seen, seen_args = _pg_visible(visible, "f")
        where = ["f.peer = %s", seen]
        args: list[Any] = [peer, *seen_args]
        if after is not None:
            where.append("(f.date_added, f.id) > (%s, %s)")
            args += [after[0], after[1]]
        if added_after is not None:
            where.append("f.date_added > %s")
            args.append(added_after)
        if ids:
            where.append(f"f.stix_id IN ({', '.join(['%s'] * len(ids))})")
            args += list(ids)
        if types:
            where.append(f"f.type IN ({', '.join(['%s'] * len(types))})")
            args += list(types)
        if "all" not in versions:
            alternatives: list[str] = []
            other, other_args = _pg_visible(visible, "o")
            for mode, op in (("last", ">"), ("first", "<")):
                if mode in versions:
                    alternatives.append(
                        "NOT EXISTS (SELECT 1 FROM feed_objects o WHERE o.peer = f.peer AND "  # noqa: S608
                        f"o.stix_id = f.stix_id AND o.version {op} f.version AND {other})"
                    )
                    args += other_args
            exact = [v for v in versions if v not in ("last", "first")]
            if exact:
                alternatives.append(f"f.version IN ({', '.join(['%s'] * len(exact))})")
                args += exact
            where.append("(" + " OR ".join(alternatives) + ")")
        sql = (
            f"SELECT {_COLUMNS} FROM feed_objects f WHERE "  # noqa: S608
            + " AND ".join(where)
            + " ORDER BY f.date_added, f.id LIMIT %s"
        )
        return sql, [*args, limit]

    def versions(self, peer: str, stix_id: str, visible: Visibility) -> list[FeedRow]:
        """Every visible version of one object, oldest first."""
        seen, seen_args = _pg_visible(visible, "f")
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM feed_objects f WHERE f.peer = %s AND f.stix_id = %s AND "  # noqa: S608
            f"{seen} ORDER BY f.version",
            (peer, stix_id, *seen_args),
        )
        return [_row(r) for r in rows]
