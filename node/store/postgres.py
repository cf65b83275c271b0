"""The node's state on PostgreSQL (issue 16, docs/adr/0023): the PgStore (one connection,
one psycopg transaction per ``transaction()``, synchronous commit) and the schema.

The repositories are the ones of ``node/store/`` on both backends: each statement is written
once, and ``node.store.dialect.PgDialect`` spells it for PostgreSQL (``?`` is ``%s``,
``INSERT OR IGNORE`` is ``ON CONFLICT DO NOTHING``, sqlite-utils' ``insert``/``upsert`` are
explicit statements, what SQLite numbers by rowid gets an explicit column filled from the
table's largest value plus one inside the writer's transaction, long reads are keyset
pages). A log index is never drawn from a sequence: it is the tree size, which
node/services/log.py computes, as on SQLite.

The schema is the one ordered list ``node.store.sqlite.MIGRATIONS``: per version, SQLite runs
its function and PostgreSQL runs ``PG_MIGRATIONS[version]``, and both end with the same
tables and columns (tests/store/test_repositories_contract.py). The one column SQLite has
implicitly, ``inbox.rowid``, is explicit here (``PG_ONLY_COLUMNS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import Connection, pq
from psycopg.rows import TupleRow

from exchange.errors import StoreError
from node.store.agreements import AgreementsRepo, SqlAgreementsRepo
from node.store.dialect import PgDialect, PgTx, pg_tx
from node.store.feed import FeedStore
from node.store.inbox import InboxRepo, SqlInboxRepo
from node.store.log import PG_LEAF_KIND_EXPR, LogRepo, SqlLogRepo
from node.store.loop import LoopRepo, SqlLoopRepo
from node.store.meta import MetaRepo, SqlMetaRepo
from node.store.outbox import OutboxRepo, SqlOutboxRepo
from node.store.peers import PeersRepo, PgPeerRecords, SqlPeersRepo
from node.store.pg import LeaderLock, WriterLock, _set_durable, check_durable, describe, lock_key
from node.store.reports import ReportsRepo, SqlReportsRepo
from node.store.sqlite import MIGRATIONS
from node.store.tx import Tx
from node.store.witness import SqlWitnessRepo, WitnessRepo

# The names other modules import: the one class of each on both backends.
PgFeedRepo = FeedStore
__all__ = ["PG_LEAF_KIND_EXPR", "PG_MIGRATIONS", "PG_ONLY_COLUMNS", "PgFeedRepo", "PgPeerRecords",
           "PgStore", "PgTx", "pg_tx"]  # fmt: skip

# Columns only the PostgreSQL tables have: SQLite's implicit rowid of ``inbox``.
PG_ONLY_COLUMNS = {("inbox", "rowid")}

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
        self.inbox: InboxRepo = SqlInboxRepo(self.sql)
        self.outbox: OutboxRepo = SqlOutboxRepo(self.sql)
        self.reports: ReportsRepo = SqlReportsRepo(self.sql)
        self.loop: LoopRepo = SqlLoopRepo(self.sql)
        self.log: LogRepo = SqlLogRepo(self.sql)
        self.meta: MetaRepo = SqlMetaRepo(self.sql)
        self.peers: PeersRepo = SqlPeersRepo(self.sql)
        self.witness: WitnessRepo = SqlWitnessRepo(self.sql)
        self.agreements: AgreementsRepo = SqlAgreementsRepo(self.sql)
        self.staged: dict[str, Any] = {}
        self._before_commit: list[Callable[[], None]] = []
        # Set by a leading `serve` (docs/adr/0026): no write commits unless the server still
        # grants this process the node's leader lock, checked inside the transaction.
        self.fence: LeaderLock | None = None

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
                if self.fence is not None and not self.fence.granted_on(self.conn):
                    raise StoreError(
                        f"this process no longer leads node {self.fence.node_id}: its leader "
                        "lock was released; nothing was written",
                        code="server.not_leader",
                        next_step="The standby serves the node now; restart this process "
                        "to wait as a standby.",
                    )
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
                if self.schema_version() >= version:
                    continue  # a process that opened the node at the same time did it first
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
