"""The node's SQLite store: one file, WAL, ``synchronous=FULL``, one writer.

The Store opens the file, runs transactions and the ordered migrations; the repositories
beside it in ``node/store/`` hold every SQL statement the node runs (docs/adr/0023).

Every write happens inside ``Store.transaction()`` (``BEGIN IMMEDIATE``), so a batch is one
durable commit. Schema changes are numbered migrations, applied in order at open.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from exchange.card import verify_chain_bytes
from exchange.checkpoint import open_checkpoint
from exchange.errors import AccordError, StoreError
from exchange.note import parse_verifier_key
from node.store.agreements import AgreementsRepo, SqlAgreementsRepo
from node.store.dialect import SqliteDialect
from node.store.inbox import InboxRepo, SqlInboxRepo
from node.store.log import LEAF_KIND_EXPR, LogRepo, SqlLogRepo
from node.store.loop import LoopRepo, SqlLoopRepo
from node.store.meta import MetaRepo, SqlMetaRepo
from node.store.outbox import OutboxRepo, SqlOutboxRepo
from node.store.peers import PeersRepo, SqlPeersRepo
from node.store.reports import ReportsRepo, SqlReportsRepo
from node.store.tx import Tx
from node.store.witness import SqlWitnessRepo, WitnessRepo

DB_FILE = "node.db"
PAGE_SIZE = 16384

Migration = Callable[[sqlite_utils.Database], None]


def _m001_foundation(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("own_cards").create({"version": int, "signed": bytes}, pk="version")
    db.table("peers").create(
        {
            "node": str,
            "chain": bytes,
            "fingerprint": str,
            "card_version": int,
            "status": str,
            "revoked_from": str,
            "tofu": int,
            "added_at": str,
            "updated_at": str,
        },
        pk="node",
        not_null={"chain", "fingerprint", "card_version", "status", "added_at", "updated_at"},
    )


def _run_sql(db: sqlite_utils.Database, script: str) -> None:
    """Run several statements inside the caller's transaction (``executescript`` would
    commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _m002_log(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE TABLE log_leaves (
            idx INTEGER PRIMARY KEY, event BLOB NOT NULL, leaf_hash BLOB NOT NULL);
        CREATE TABLE log_subtrees (
            level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
            PRIMARY KEY (level, idx)) WITHOUT ROWID;
        CREATE TABLE log_checkpoints (
            size INTEGER PRIMARY KEY, root BLOB NOT NULL, note BLOB NOT NULL,
            signed_at TEXT NOT NULL);
        CREATE TABLE log_cosignatures (
            size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,
            received_at TEXT NOT NULL, PRIMARY KEY (size, witness));
        CREATE TABLE witness_state (
            origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
            note BLOB NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE witness_evidence (
            id INTEGER PRIMARY KEY, origin TEXT NOT NULL, held_size INTEGER NOT NULL,
            held_note BLOB NOT NULL, offered_note BLOB NOT NULL, reason TEXT NOT NULL,
            at TEXT NOT NULL);
        """,
    )


def _m003_reports(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE TABLE reports (
            report_id TEXT NOT NULL, version INTEGER NOT NULL, sop TEXT NOT NULL,
            tlp TEXT NOT NULL, issuer_jwt_digest TEXT NOT NULL, issuer_key BLOB NOT NULL,
            sealed BLOB NOT NULL, fields TEXT NOT NULL, sealed_at TEXT NOT NULL,
            supersedes TEXT, retracted_at TEXT,
            PRIMARY KEY (report_id, version));
        CREATE INDEX reports_by_time ON reports (sealed_at)
        """,
    )


def _m004_agreements(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE TABLE agreements (
            digest TEXT PRIMARY KEY, peer TEXT NOT NULL, id TEXT NOT NULL,
            version INTEGER NOT NULL, signed BLOB NOT NULL, not_before TEXT NOT NULL,
            not_after TEXT NOT NULL, stored_at TEXT NOT NULL);
        CREATE INDEX agreements_by_peer ON agreements (peer, not_after)
        """,
    )


def _m005_exchange(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE TABLE outbox (
            peer TEXT NOT NULL, seq INTEGER NOT NULL, envelope_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL, report_id TEXT NOT NULL, version INTEGER NOT NULL,
            header BLOB NOT NULL, ciphertext BLOB NOT NULL, signature BLOB NOT NULL,
            digest TEXT NOT NULL, created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending', code TEXT,
            PRIMARY KEY (peer, seq));
        CREATE TABLE inbound (
            peer TEXT NOT NULL, seq INTEGER NOT NULL, header BLOB NOT NULL,
            ciphertext BLOB NOT NULL, signature BLOB NOT NULL, digest TEXT NOT NULL,
            status TEXT NOT NULL, code TEXT, received_at TEXT NOT NULL,
            PRIMARY KEY (peer, seq));
        CREATE TABLE inbox (
            peer TEXT NOT NULL, seq INTEGER NOT NULL, envelope_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL, report_id TEXT NOT NULL, version INTEGER NOT NULL,
            issuer TEXT NOT NULL, sop TEXT NOT NULL, tlp TEXT NOT NULL, fields TEXT NOT NULL,
            transformed TEXT NOT NULL, issuer_jwt_digest TEXT NOT NULL, sealed BLOB NOT NULL,
            received_at TEXT NOT NULL, PRIMARY KEY (peer, seq));
        CREATE INDEX inbox_by_report ON inbox (issuer, report_id, version);
        CREATE INDEX inbox_by_time ON inbox (peer, received_at);
        CREATE TABLE cursors (
            peer TEXT PRIMARY KEY, last_applied INTEGER NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE receipts (
            peer TEXT NOT NULL, direction TEXT NOT NULL, first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL, statement BLOB NOT NULL, signature BLOB NOT NULL,
            digest TEXT NOT NULL, at TEXT NOT NULL,
            PRIMARY KEY (peer, direction, first_seq, last_seq, digest));
        CREATE TABLE evidence (
            id INTEGER PRIMARY KEY, peer TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER,
            held_digest TEXT, incoming_digest TEXT, incoming BLOB, at TEXT NOT NULL)
        """,
    )


def _m006_peer_log_index(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE peers ADD COLUMN log_index INTEGER")


def _m007_witness_growth(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE witness_state ADD COLUMN grown_at TEXT")
    db.execute("UPDATE witness_state SET grown_at = updated_at")


def _m008_receipts_acknowledged(db: sqlite_utils.Database) -> None:
    # 0 for existing partners: every receipt is offered once more, the partner keeps one copy.
    db.execute("ALTER TABLE cursors ADD COLUMN acknowledged INTEGER NOT NULL DEFAULT 0")


def _m009_lookups(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE INDEX inbox_by_report_version ON inbox (report_id, version);
        CREATE TABLE releases (
            report_id TEXT NOT NULL, version INTEGER NOT NULL, peer TEXT NOT NULL,
            log_index INTEGER NOT NULL, PRIMARY KEY (report_id, version, peer))
        """,
    )


def _m010_submissions(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE submissions (idempotency_key TEXT PRIMARY KEY, report_id TEXT NOT NULL,"
        " version INTEGER NOT NULL, at TEXT NOT NULL)"
    )


def _m011_revocations(db: sqlite_utils.Database) -> None:
    _run_sql(
        db,
        """
        CREATE TABLE own_revocations (
            identity_key BLOB PRIMARY KEY, revoked_from TEXT NOT NULL,
            statement BLOB NOT NULL, signature BLOB NOT NULL, log_index INTEGER NOT NULL);
        CREATE TABLE peer_revocations (
            peer TEXT NOT NULL, identity_key BLOB NOT NULL, revoked_from TEXT NOT NULL,
            statement BLOB NOT NULL, signature BLOB NOT NULL, PRIMARY KEY (peer, identity_key))
        """,
    )


def _m012_policy_digest(db: sqlite_utils.Database) -> None:
    """The digest of the policy last logged, so a policy file edited by hand is refused."""
    row = db.execute(
        "SELECT event FROM log_leaves WHERE CAST(event AS TEXT) LIKE ? ORDER BY idx DESC LIMIT 1",
        ('%"kind":"policy.changed"%',),
    ).fetchone()
    if row is not None:
        digest = json.loads(bytes(row[0]))["policy_digest"]
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('policy.digest', ?)", (digest,)
        )


def _m013_outbox_by_state(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX outbox_by_state ON outbox (peer, state, seq)")


def _m014_leaf_tags(db: sqlite_utils.Database) -> None:
    """Each leaf's HMAC tag under the keyring's ``log.leaf`` key (ADR 0012). Leaves written
    before have none and get none (this migration runs without the passphrase): those a
    checkpoint signed by this node covers are authenticated by it; any untagged leaf past
    the newest such checkpoint is refused as foreign before anything is signed."""
    db.execute("ALTER TABLE log_leaves ADD COLUMN tag BLOB")


LOG_SUFFIX = ".accord/log"


def _m015_witness_per_partner(db: sqlite_utils.Database) -> None:
    """Witness state keyed by (authenticated partner, origin, log key), not by the origin a
    caller's card names (docs/THREATS.md P16). A held checkpoint is kept only when the partner
    its origin names is trusted and the note verifies under that partner's own log key;
    anything else (e.g. state written by another partner under a borrowed origin) is moved
    to witness_evidence and dropped, so the real log's next checkpoint starts afresh."""
    _run_sql(
        db,
        """
        ALTER TABLE witness_evidence ADD COLUMN partner TEXT;
        CREATE TABLE witness_state_v2 (
            partner TEXT NOT NULL, origin TEXT NOT NULL, log_key TEXT NOT NULL,
            size INTEGER NOT NULL, root BLOB NOT NULL, note BLOB NOT NULL,
            updated_at TEXT NOT NULL, grown_at TEXT,
            PRIMARY KEY (partner, origin, log_key))
        """,
    )
    rows = db.execute(
        "SELECT origin, size, root, note, updated_at, grown_at FROM witness_state"
    ).fetchall()
    for origin, size, root, note, updated_at, grown_at in rows:
        partner = origin[: -len(LOG_SUFFIX)] if str(origin).endswith(LOG_SUFFIX) else None
        peer = (
            None
            if partner is None
            else db.execute("SELECT chain FROM peers WHERE node = ?", (partner,)).fetchone()
        )
        log_key = None
        if peer is not None:
            try:
                key = parse_verifier_key(verify_chain_bytes(bytes(peer[0])).latest.log_vkey)
                opened = open_checkpoint(bytes(note), [key], origin=origin)
                if (opened.checkpoint.size, opened.checkpoint.root_hash) == (size, bytes(root)):
                    log_key = key.encode()
            except AccordError:
                log_key = None
        if log_key is not None:
            db.execute(
                "INSERT INTO witness_state_v2 (partner, origin, log_key, size, root, note, "
                "updated_at, grown_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (partner, origin, log_key, size, root, note, updated_at, grown_at),
            )
        else:
            db.execute(
                "INSERT INTO witness_evidence (origin, held_size, held_note, offered_note, "
                "reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    origin,
                    size,
                    note,
                    b"",
                    "migration 15: held checkpoint not signed by the log key of the "
                    "trusted partner its origin names; dropped",
                    updated_at,
                ),
            )
    _run_sql(
        db,
        """
        DROP TABLE witness_state;
        ALTER TABLE witness_state_v2 RENAME TO witness_state
        """,
    )


def _m016_leaves_by_kind(db: sqlite_utils.Database) -> None:
    db.execute(f"CREATE INDEX log_leaves_by_kind ON log_leaves ({LEAF_KIND_EXPR})")


def _m017_bounded_evidence(db: sqlite_utils.Database) -> None:
    """Equivocations kept once per partner and seq, later ones counted on that row, and
    those beyond the alarm budget counted per partner (L06, ADR 0016)."""
    _run_sql(
        db,
        """
        ALTER TABLE evidence ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX evidence_by_seq ON evidence (peer, kind, seq);
        CREATE INDEX evidence_by_time ON evidence (peer, kind, at);
        CREATE TABLE evidence_suppressed (
            peer TEXT PRIMARY KEY, count INTEGER NOT NULL, last_at TEXT NOT NULL)
        """,
    )


def _m018_key_revocations(db: sqlite_utils.Database) -> None:
    """Signed revocations of replaced log, witness and TLS CA keys (ADR 0018)."""
    _run_sql(
        db,
        """
        CREATE TABLE own_key_revocations (
            kind TEXT NOT NULL, key TEXT NOT NULL, revoked_from TEXT NOT NULL,
            statement BLOB NOT NULL, signature BLOB NOT NULL, log_index INTEGER NOT NULL,
            PRIMARY KEY (kind, key));
        CREATE TABLE peer_key_revocations (
            peer TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
            revoked_from TEXT NOT NULL, statement BLOB NOT NULL, signature BLOB NOT NULL,
            log_index INTEGER NOT NULL, PRIMARY KEY (peer, kind, key))
        """,
    )


def _m019_feed(db: sqlite_utils.Database) -> None:
    """The TAXII feed (node/services/feed.py): consumers, and the STIX objects of received items
    (encrypted at rest), in the order the feed added them (docs/adr/0014). Idempotent: a
    database whose migration records were rewound past it (as tests of older migrations
    do) replays it without harm."""
    _run_sql(
        db,
        """
        CREATE TABLE IF NOT EXISTS feed_consumers (
            name TEXT PRIMARY KEY, class TEXT NOT NULL, collections TEXT NOT NULL,
            own_organisation INTEGER NOT NULL, cert_fingerprint TEXT NOT NULL UNIQUE,
            basic_hash TEXT, created_at TEXT NOT NULL, revoked_at TEXT);
        CREATE TABLE IF NOT EXISTS feed_objects (
            id INTEGER PRIMARY KEY, peer TEXT NOT NULL, stix_id TEXT NOT NULL,
            type TEXT NOT NULL, version TEXT NOT NULL, date_added TEXT NOT NULL,
            tlp TEXT NOT NULL, sop TEXT NOT NULL, envelope_id TEXT NOT NULL,
            fields TEXT NOT NULL, object BLOB NOT NULL, UNIQUE (peer, stix_id, version));
        CREATE INDEX IF NOT EXISTS feed_page ON feed_objects (peer, date_added, id);
        CREATE TABLE IF NOT EXISTS feed_indexed (peer TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)
        """,
    )


def _m020_warning_loop(db: sqlite_utils.Database) -> None:
    """The warning loop (ADR 0022): acknowledgements this node sent (the signed statement
    sealed at rest; what it received is an inbox row of kind ``ack``), the deadlines of
    every report with a response rule in either direction, replies, and what the officer
    has read. Idempotent like migration 19."""
    _run_sql(
        db,
        """
        CREATE TABLE IF NOT EXISTS acks_sent (
            ack_envelope_id TEXT PRIMARY KEY, peer TEXT NOT NULL, seq INTEGER NOT NULL,
            item_envelope_id TEXT NOT NULL, report_id TEXT NOT NULL, version INTEGER NOT NULL,
            status TEXT NOT NULL, acked_at TEXT NOT NULL, sealed BLOB NOT NULL);
        CREATE INDEX IF NOT EXISTS acks_sent_item ON acks_sent (item_envelope_id);
        CREATE TABLE IF NOT EXISTS deadlines (
            direction TEXT NOT NULL, peer TEXT NOT NULL, envelope_id TEXT NOT NULL,
            seq INTEGER NOT NULL, report_id TEXT NOT NULL, version INTEGER NOT NULL,
            acknowledge_s INTEGER NOT NULL, respond_s INTEGER, started_at TEXT NOT NULL,
            acked_at TEXT, replied_at TEXT, ack_overdue_at TEXT, respond_overdue_at TEXT,
            PRIMARY KEY (direction, peer, envelope_id));
        CREATE INDEX IF NOT EXISTS deadlines_report ON deadlines (peer, report_id);
        CREATE TABLE IF NOT EXISTS replies (
            direction TEXT NOT NULL, peer TEXT NOT NULL, report_id TEXT NOT NULL,
            version INTEGER NOT NULL, envelope_id TEXT NOT NULL, in_reply_to TEXT NOT NULL,
            at TEXT NOT NULL, PRIMARY KEY (direction, peer, envelope_id));
        CREATE INDEX IF NOT EXISTS replies_to ON replies (in_reply_to);
        CREATE TABLE IF NOT EXISTS inbox_read (envelope_id TEXT PRIMARY KEY, at TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS acks_received (
            digest TEXT PRIMARY KEY, peer TEXT NOT NULL, envelope_id TEXT NOT NULL)
        """,
    )


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "foundation: meta, own card chain, partner trust store", _m001_foundation),
    (2, "transparency log: leaves, subtrees, checkpoints, cosignatures, witness", _m002_log),
    (3, "sealed reports, plaintext encrypted at rest", _m003_reports),
    (4, "bilateral agreements signed by both parties", _m004_agreements),
    (5, "exchange: outbox, inbound envelopes, inbox, cursors, receipts, evidence", _m005_exchange),
    (6, "each trusted partner bound to the log entry that recorded it", _m006_peer_log_index),
    (7, "witness: when each followed log last grew (frozen partners, P03)", _m007_witness_growth),
    (8, "cursors: the partner confirmed our receipts up to this seq", _m008_receipts_acknowledged),
    (9, "lookups: inbox by report, each release decision by report", _m009_lookups),
    (10, "idempotent submissions: the report each key produced", _m010_submissions),
    (11, "signed revocations: of our own keys, and those partners served", _m011_revocations),
    (12, "the digest of the release policy last logged", _m012_policy_digest),
    (13, "outbox by state: what a partner acknowledged, without a scan", _m013_outbox_by_state),
    (14, "log leaves: each leaf's tag by this node's keyring (I07)", _m014_leaf_tags),
    (
        15,
        "witness state per authenticated partner, origin and log key (P16)",
        _m015_witness_per_partner,
    ),
    (16, "log leaves by event kind: trust, policy and agreement events", _m016_leaves_by_kind),
    (17, "evidence once per seq, repeats counted, alarm budget", _m017_bounded_evidence),
    (18, "signed revocations of replaced log, witness and TLS keys", _m018_key_revocations),
    (19, "TAXII feed: consumers, STIX objects of received items, indexing cursor", _m019_feed),
    (20, "warning loop: acknowledgements sent, deadlines, replies, read marks", _m020_warning_loop),
]


def _wrap(e: sqlite3.Error, path: Path) -> StoreError:
    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return StoreError(f"database {path} is read-only", code="store.read_only")
    if "full" in text:
        return StoreError(
            f"disk full while writing {path}",
            code="store.disk_full",
            next_step="Free disk space, then retry; nothing partial was kept.",
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreError(
            f"database {path} is corrupt ({e})",
            code="store.corrupt",
            next_step="Do not serve from it: restore the data directory from a backup.",
        )
    return StoreError(f"database error on {path}: {e}", code="store.error")


class Store:
    """The node database. Open with ``Store.open(data_dir)``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.db = sqlite_utils.Database(conn)
        self.sql = SqliteDialect(conn)
        # The repositories: every SQL statement the node runs outside this module.
        self.inbox: InboxRepo = SqlInboxRepo(self.sql)
        self.outbox: OutboxRepo = SqlOutboxRepo(self.sql)
        self.reports: ReportsRepo = SqlReportsRepo(self.sql)
        self.loop: LoopRepo = SqlLoopRepo(self.sql)
        self.log: LogRepo = SqlLogRepo(self.sql)
        self.meta: MetaRepo = SqlMetaRepo(self.sql)
        self.peers: PeersRepo = SqlPeersRepo(self.sql)
        self.witness: WitnessRepo = SqlWitnessRepo(self.sql)
        self.agreements: AgreementsRepo = SqlAgreementsRepo(self.sql)
        # Work of the open transaction that runs just before it commits (e.g. the log's
        # staged events); dropped with the transaction when it rolls back.
        self.staged: dict[str, Any] = {}
        self._before_commit: list[Callable[[], None]] = []

    @classmethod
    def open(cls, data_dir: Path, *, create: bool = False) -> Store:
        path = data_dir / DB_FILE
        if not create and not path.is_file():
            raise StoreError(f"database {path} is missing", code="store.missing")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            if create:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"database {path} cannot use WAL mode", code="store.error")
            conn.execute("PRAGMA synchronous = FULL")
            # After a checkpoint the WAL file is cut back to this size, so a long reader
            # (an audit export) can grow it for a while but not keep it large.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA foreign_keys = ON")
            if not create:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StoreError(
                        f"database {path} failed its integrity check",
                        code="store.corrupt",
                        next_step="Do not serve from it: restore the data directory from a backup.",
                    )
        except sqlite3.Error as e:
            raise _wrap(e, path) from e
        store = cls(conn, path)
        store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """One durable commit: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise _wrap(e, self.path) from e
        self.staged, self._before_commit = {}, []
        try:
            yield self.db
            for hook in self._before_commit:
                hook()
        except sqlite3.Error as e:  # e.g. disk full mid-transaction: SQLite may have rolled back
            self.staged, self._before_commit = {}, []
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _wrap(e, self.path) from e
        except BaseException:
            self.staged, self._before_commit = {}, []
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.staged, self._before_commit = {}, []
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _wrap(e, self.path) from e

    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """One consistent read of the database (a deferred ``BEGIN`` … ``COMMIT``); inside
        an open transaction, that transaction's own view."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def before_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` inside the open transaction, just before it commits."""
        if not self.conn.in_transaction:
            raise StoreError("before_commit outside a transaction", code="store.no_transaction")
        self._before_commit.append(hook)

    def schema_version(self) -> int:
        if "_migrations" not in self.db.table_names():
            return 0
        row = self.conn.execute("SELECT max(version) FROM _migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        try:
            current = self.schema_version()
            latest = MIGRATIONS[-1][0]
            if current > latest:
                raise StoreError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"Accord ({latest})",
                    code="store.too_new",
                    next_step="Upgrade Accord before opening this node.",
                )
            for version, name, apply in MIGRATIONS:
                if version <= current:
                    continue
                with self.transaction() as db:
                    if version == 1:
                        db.table("_migrations").create(
                            {"version": int, "name": str}, pk="version", if_not_exists=True
                        )
                    apply(db)
                    db.table("_migrations").insert({"version": version, "name": name})
        except sqlite3.Error as e:
            raise _wrap(e, self.path) from e

    # -- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, db: Tx, key: str, value: str) -> None:
        self.meta.set(db, key, value)

    # -- our own card chain -------------------------------------------------------------
    def own_card_rows(self) -> list[bytes]:
        return self.meta.own_cards()
