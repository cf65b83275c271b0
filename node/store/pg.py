"""The first piece of the PostgreSQL backend (issue 16): a connection pool that keeps the
durability promise, and the two per-node locks that make one process the writer and one the
leader (docs/adr/0024).

- :func:`open_pool` opens a ``psycopg_pool.ConnectionPool`` on a DSN. Every connection it
  hands out runs with ``synchronous_commit = on`` (set on the session, then read back), and
  the pool is refused when the server runs with ``fsync = off`` or is older than
  PostgreSQL 15: a COMMIT that returned is on disk on the database server, as a SQLite
  ``synchronous=FULL`` commit is on the node's disk.
- :class:`WriterLock` and :class:`LeaderLock` are session-level advisory locks
  (``pg_advisory_lock``) on one dedicated connection each, keyed by the node id. A session
  lock lives exactly as long as the session: a process that is killed loses its connection,
  the server ends that backend and the lock is free for the process waiting on it. That is
  what a standby relies on to take over.

The SQL lives here until the store becomes a package of repositories (it will move under the
store then); nothing outside this module speaks SQL to PostgreSQL.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import ClassVar, Self

import psycopg
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from exchange.errors import StoreError

MIN_SERVER_VERSION = 150000  # PostgreSQL 15 (server_version_num)
LOCK_DOMAIN = "accord/v1/"

# Client-side keepalives (libpq) and server-side ones (per session) on the lock sessions: on a
# TCP connection a dead peer host is noticed within ~6 s either way, so a standby on another
# host takes over within the 10 s of issue 16. Unix sockets ignore both; there a killed
# process's socket is closed by its kernel and the server sees it at once.
_CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 3,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}
_SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": "3",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "6000",  # ms: unacknowledged data to a vanished host
}


def describe(dsn: str) -> str:
    """Where a DSN points, for messages: host, port and database, never a password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable database URL"
    host = parts.get("host") or "the default socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"database {parts.get('dbname') or '(default)'} on {host}{port}"


def dsn_settings(dsn: str) -> dict[str, object] | None:
    """The settings a libpq URL or keyword string names, or None when libpq cannot parse
    it (the parser's message is not passed on: it can quote a password)."""
    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.ProgrammingError:
        return None


def lock_key(purpose: str, node_id: str) -> int:
    """The advisory-lock key of one of a node's locks: the first 8 bytes of
    SHA-256("accord/v1/<purpose>\\n" || node id), as PostgreSQL's signed bigint."""
    digest = hashlib.sha256(f"{LOCK_DOMAIN}{purpose}\n{node_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _set_durable(conn: Connection[TupleRow]) -> None:
    """The pool's configure hook: every connection commits synchronously, whatever the
    server's, role's or database's default."""
    conn.execute("SELECT set_config('synchronous_commit', 'on', false)")


def check_durable(conn: Connection[TupleRow], where: str) -> None:
    """Refuse a server whose acknowledged commits could be lost to a crash."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int,"
        " current_setting('fsync'), current_setting('synchronous_commit')"
    ).fetchone()
    assert row is not None
    version, fsync, synchronous_commit = row
    if version < MIN_SERVER_VERSION:
        raise StoreError(
            f"{where} runs PostgreSQL {version // 10000}; Accord needs 15 or newer",
            code="store.too_old",
            next_step="Upgrade the database server to PostgreSQL 15 or newer.",
        )
    if fsync != "on":
        raise StoreError(
            f"{where} runs with fsync = {fsync}: a commit it acknowledges can be lost",
            code="store.not_durable",
            next_step="Set fsync = on in the server's postgresql.conf and reload it.",
        )
    if synchronous_commit != "on":
        raise StoreError(
            f"{where} does not commit synchronously (synchronous_commit = {synchronous_commit})",
            code="store.not_durable",
            next_step="Remove any setting that turns synchronous_commit off for this role.",
        )


def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 4, timeout: float = 30.0
) -> ConnectionPool[Connection[TupleRow]]:
    """An open pool on ``dsn`` whose connections are autocommit (write inside
    ``with conn.transaction():``) and commit synchronously; checked before it is returned."""
    where = describe(dsn)
    pool: ConnectionPool[Connection[TupleRow]] = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        configure=_set_durable,
        timeout=timeout,
        open=False,
        name="accord",
    )
    try:
        pool.open(wait=True, timeout=timeout)
        with pool.connection() as conn:
            check_durable(conn, where)
    except PoolTimeout:
        pool.close()
        raise StoreError(
            f"cannot connect to {where} within {timeout:g} s",
            code="store.unavailable",
            next_step="Check that the database server runs and the URL, role and password.",
        ) from None
    except BaseException:
        pool.close()
        raise
    return pool


class SessionLock:
    """A session-level advisory lock on one dedicated connection, for one node.

    ``held`` is true from a successful acquire until release(), close(), or the first sign
    that the session is gone (check(), or a failed statement on it). The lock goes with the
    session: if this process dies, the server ends its backend and the lock is released."""

    purpose: ClassVar[str]

    def __init__(
        self,
        dsn: str,
        node_id: str,
        *,
        connect_timeout: int = 10,
        session: Connection[TupleRow] | None = None,
    ) -> None:
        """``session``: take the lock on this (autocommit) connection instead of one of the
        lock's own, e.g. the store's, so the writes and the lock share one session."""
        self.dsn = dsn
        self.node_id = node_id
        self.key = lock_key(self.purpose, node_id)
        self._connect_timeout = connect_timeout
        self._conn: Connection[TupleRow] | None = session
        self._held = False
        self._mutex = threading.RLock()

    @property
    def held(self) -> bool:
        return self._held

    @property
    def backend_pid(self) -> int | None:
        """The server process of the lock's session (what pg_locks shows as the holder)."""
        with self._mutex:
            return None if self._conn is None or self._conn.closed else self._conn.info.backend_pid

    def _session(self) -> Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            self._held = False
            try:
                defaults: dict[str, str | int] = {
                    "connect_timeout": self._connect_timeout,
                    "application_name": f"accord {self.purpose} lock",
                    **_CLIENT_KEEPALIVES,
                }
                given = conninfo_to_dict(self.dsn)  # what the operator's URL says wins
                extra = {k: v for k, v in defaults.items() if k not in given}
                conn = psycopg.connect(make_conninfo(self.dsn, **extra), autocommit=True)
            except psycopg.OperationalError as e:
                raise StoreError(
                    f"cannot connect to {describe(self.dsn)} for the {self.purpose} lock: "
                    f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                    code="store.unavailable",
                    next_step="Check that the database server runs and the URL is right.",
                ) from None
            # A lock wait is bounded by acquire()'s own timeout, not by a server default.
            conn.execute("SELECT set_config('statement_timeout', '0', false)")
            for name, value in _SERVER_KEEPALIVES.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            self._conn = conn
        return self._conn

    def _lost(self) -> None:
        """The session failed: the server has ended it, or will; the lock is not ours."""
        self._held = False
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits."""
        with self._mutex:
            if self._held:
                return True
            conn = self._session()
            try:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            except psycopg.OperationalError:
                self._lost()
                return False
            self._held = bool(row and row[0])
            return self._held

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for the lock; True once held.

        The wait is the server's own lock queue, so a waiter gets the lock the moment the
        holder's session ends."""
        with self._mutex:
            if self._held:
                return True
            if timeout is not None and timeout <= 0:
                return self.try_acquire()
            conn = self._session()
            wait = "0" if timeout is None else f"{max(1, round(timeout * 1000))}ms"
            try:
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (wait,))
                try:
                    conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
                except psycopg.errors.LockNotAvailable:
                    return False
                finally:
                    conn.execute("SELECT set_config('lock_timeout', '0', false)")
            except psycopg.OperationalError:
                self._lost()
                return False
            self._held = True
            return True

    def check(self) -> bool:
        """Ask the server whether this session still holds the lock (a round trip)."""
        with self._mutex:
            if not self._held or self._conn is None:
                return False
            try:
                row = self._conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND granted AND objsubid = 1"
                    " AND classid::bigint = %s AND objid::bigint = %s",
                    ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
                ).fetchone()
            except psycopg.OperationalError:
                self._lost()
                return False
            if not (row and row[0]):
                self._held = False
            return self._held

    def uses(self, conn: Connection[TupleRow]) -> bool:
        """Whether the lock is taken on ``conn`` (its session is that connection)."""
        return self._conn is conn

    def unlock(self) -> None:
        """Give the lock up and keep the session (for the next acquire)."""
        with self._mutex:
            if self._conn is not None and self._held:
                try:
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
                except psycopg.OperationalError:
                    self._lost()
            self._held = False

    def release(self) -> None:
        """Give the lock up and end the session."""
        with self._mutex:
            if self._conn is not None and self._held:
                with suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._lost()

    close = release

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class WriterLock(SessionLock):
    """The node's single writer: the log's appends and checkpoint signing happen only on
    this lock's session, inside :meth:`transaction`, so they cannot happen at all once the
    session (and with it the lock) is gone."""

    purpose = "writer"

    @contextmanager
    def transaction(self) -> Iterator[Connection[TupleRow]]:
        """A transaction on the lock's own session; refused unless the lock is held."""
        with self._mutex:
            if not self._held or self._conn is None:
                raise StoreError(
                    f"this process does not hold the writer lock of node {self.node_id}",
                    code="store.not_writer",
                    next_step="Only the process that holds the writer lock appends or signs.",
                )
            conn = self._conn
            try:
                with conn.transaction():
                    yield conn
            except psycopg.OperationalError:
                self._lost()
                raise


class LeaderLock(SessionLock):
    """Active/standby: the process holding it serves the node; the others wait on it."""

    purpose = "leader"

    def granted_on(self, conn: Connection[TupleRow]) -> bool:
        """Whether the server, asked on ``conn`` (inside the caller's transaction), still
        grants this lock to this lock's own session: the fence of every write transaction
        of a leader (docs/adr/0026). False once that session is gone, even while this
        process has not noticed yet."""
        pid = self.backend_pid
        if pid is None or not self._held:
            return False
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND pid = %s AND granted AND objsubid = 1"
            " AND classid::bigint = %s AND objid::bigint = %s",
            (pid, (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
        ).fetchone()
        return bool(row and row[0])
