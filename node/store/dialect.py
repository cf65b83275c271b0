"""The one place the two backends' SQL differs (issue 16, docs/adr/0023).

Every repository of ``node/store/`` writes each statement once, in SQLite's spelling (``?``
placeholders, ``INSERT OR IGNORE``, ``INDEXED BY``), and runs it through the ``Dialect`` of
its store: ``SqliteDialect`` runs it as written, ``PgDialect`` translates it (``to_pg``) and
runs it on the PgStore's one connection. The dialect also holds what is not a text rewrite:
sqlite-utils' ``insert``/``upsert`` as explicit statements (a column SQLite numbers by rowid
is filled on PostgreSQL from the table's largest value plus one, inside the writer's
transaction: one writer per node, ``node.store.pg.WriterLock``), and how a long read is
streamed (SQLite: one cursor, stepped row by row; PostgreSQL: keyset pages of ``PAGE_ROWS``,
since a psycopg client-side cursor holds the whole result in memory).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

import psycopg
from psycopg import Connection
from psycopg.rows import TupleRow

from exchange.errors import StoreError
from node.store.tx import Row, Tx, sqlite_db

# The largest integer key either backend stores (SQLite's INTEGER, PostgreSQL's BIGINT).
MAX_KEY = 2**63 - 1
# Rows per page of a streamed read on PostgreSQL.
PAGE_ROWS = 1000


class Cursor(Protocol):
    """What the repositories use of a sqlite3 or psycopg cursor."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class PgTx:
    """The PgStore's one connection as a ``Tx``: statements run in its open transaction (or
    on their own, autocommit, when none is open, as reads outside a transaction do)."""

    def __init__(self, conn: Connection[TupleRow]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Any = None, /) -> Any:
        try:
            return self.conn.execute(sql, parameters)
        except psycopg.OperationalError as e:
            raise _lost(e) from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self.conn.cursor() as cursor:
                cursor.executemany(sql, rows)
        except psycopg.OperationalError as e:
            raise _lost(e) from e


def _lost(error: psycopg.OperationalError) -> StoreError:
    """The server went away (or ended the session) under a statement: one stable code for
    every caller, retried by partners and officers, never an internal error of ours."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return StoreError(
        f"the database connection failed: {first}",
        code="store.unavailable",
        next_step="Retry once the database server answers; the node reconnects by itself.",
    )


def pg_tx(db: Tx) -> PgTx:
    """The PostgreSQL repositories' handle: the ``PgTx`` that ``PgStore.transaction()`` yields."""
    if not isinstance(db, PgTx):
        raise TypeError(f"a PostgreSQL repository was handed {type(db).__name__}, not a PgTx")
    return db


_NAME = re.compile(r"[a-z_]+\Z")
_OR_IGNORE = re.compile(r"INSERT OR IGNORE INTO (.*)\Z", re.DOTALL)
_INDEXED_BY = re.compile(r" INDEXED BY [a-z_]+")


@lru_cache(maxsize=1024)
def to_pg(sql: str) -> str:
    """A statement in SQLite's spelling, in PostgreSQL's: ``?`` is ``%s``; ``INSERT OR
    IGNORE INTO … VALUES (…)`` is ``INSERT INTO … VALUES (…) ON CONFLICT DO NOTHING``;
    ``INDEXED BY`` (a SQLite planner hint) is dropped. The repositories' statements hold
    no ``?`` or ``%`` inside a literal (a ``%`` is refused: psycopg reads it)."""
    if "%" in sql:
        raise ValueError("a statement for PostgreSQL holds '%'")
    ignore = _OR_IGNORE.match(sql)
    if ignore is not None:
        sql = f"INSERT INTO {ignore[1]} ON CONFLICT DO NOTHING"
    return _INDEXED_BY.sub("", sql).replace("?", "%s")


def _names(*names: str) -> None:
    if not all(_NAME.match(n) for n in names):
        raise ValueError(f"not a column name in {list(names)}")


def insert_sql(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (?, …)`` (names checked)."""
    _names(table, *columns)
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608


def upsert_sql(table: str, columns: Sequence[str], pk: str) -> str:
    """sqlite-utils' ``table.upsert(row, pk=pk)`` as one statement: insert, or set the given
    columns of the row with that key (columns not given keep their values)."""
    _names(pk)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != pk)
    return f"{insert_sql(table, columns)} ON CONFLICT ({pk}) DO UPDATE SET {updates}"


class Dialect:
    """A store's connection and the spelling of its statements. ``execute``/``one``/``all``
    read on the store's connection (inside an open transaction they see its writes);
    ``run`` writes in the caller's transaction handle ``db``."""

    name: str

    def sql(self, text: str) -> str:
        raise NotImplementedError

    def _conn_execute(self, sql: str, args: Sequence[Any]) -> Cursor:
        raise NotImplementedError

    def _tx_execute(self, db: Tx, sql: str, args: Sequence[Any]) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def scan(self, sql: str, lo: int, hi: int | None, last: str = "") -> Iterator[Row]:
        """The rows of ``sql`` whose integer key (its first column) is in [lo, hi], in key
        order: ``sql`` ends ``WHERE … key BETWEEN ? AND ? ORDER BY key`` and those are
        its only placeholders. ``hi`` None: up to the largest key when the read starts
        (``last`` selects it), as one statement would read."""
        raise NotImplementedError

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self._conn_execute(self.sql(sql), args)

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = self.execute(sql, args).fetchall()
        return rows

    def run(self, db: Tx, sql: str, args: Sequence[Any] = ()) -> Cursor:
        """One statement in the caller's open transaction ``db`` (this backend's handle)."""
        return self._tx_execute(db, self.sql(sql), args)

    def insert(
        self, db: Tx | None, table: str, row: Mapping[str, Any], *, number: str | None = None
    ) -> None:
        """sqlite-utils' ``table.insert(row)`` as one statement, in ``db`` (or on the
        connection's open transaction). ``number``: a column SQLite fills from the rowid."""
        sql, args = insert_sql(table, list(row)), tuple(row.values())
        if db is None:
            self.execute(sql, args)
        else:
            self.run(db, sql, args)

    def upsert(self, db: Tx | None, table: str, row: Mapping[str, Any], pk: str) -> None:
        sql, args = upsert_sql(table, list(row), pk), tuple(row.values())
        if db is None:
            self.execute(sql, args)
        else:
            self.run(db, sql, args)


class SqliteDialect(Dialect):
    """Statements as written, on the Store's sqlite3 connection; writes in the ``Database``
    that ``Store.transaction()`` yields (on that same connection)."""

    name = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def sql(self, text: str) -> str:
        return text

    def _conn_execute(self, sql: str, args: Sequence[Any]) -> Cursor:
        return self.conn.execute(sql, args)

    def _tx_execute(self, db: Tx, sql: str, args: Sequence[Any]) -> Cursor:
        return sqlite_db(db).conn.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def scan(self, sql: str, lo: int, hi: int | None, last: str = "") -> Iterator[Row]:
        """One statement; its cursor steps through the rows as they are read (SQLite
        holds one read snapshot for the statement)."""
        rows: Iterator[Row] = self.conn.execute(sql, (lo, MAX_KEY if hi is None else hi))
        return rows


class PgDialect(Dialect):
    """Statements translated by ``to_pg``, on the PgStore's ``PgTx``."""

    name = "postgresql"

    def __init__(self, conn: PgTx, page_rows: int = PAGE_ROWS) -> None:
        self.conn = conn
        self.page_rows = page_rows

    def sql(self, text: str) -> str:
        return to_pg(text)

    def _conn_execute(self, sql: str, args: Sequence[Any]) -> Cursor:
        cursor: Cursor = self.conn.execute(sql, tuple(args))
        return cursor

    def _tx_execute(self, db: Tx, sql: str, args: Sequence[Any]) -> Cursor:
        cursor: Cursor = pg_tx(db).execute(sql, tuple(args))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(self.sql(sql), rows)

    def scan(self, sql: str, lo: int, hi: int | None, last: str = "") -> Iterator[Row]:
        """Keyset pages of ``page_rows`` along the key's index: each page is one statement
        starting after the last key read, so memory holds one page, never the result.
        Inside ``read_snapshot()`` (or a transaction) every page reads the same snapshot;
        outside one, ``hi`` None is fixed by ``last`` before the first page, so rows
        appended meanwhile are not read (the log is append-only below it)."""
        page = self.sql(sql) + " LIMIT %s"
        if hi is None:
            top = self.conn.execute(self.sql(last)).fetchone()
            hi = -1 if top is None or top[0] is None else int(top[0])
        while lo <= hi:
            rows = self.conn.execute(page, (lo, hi, self.page_rows)).fetchall()
            yield from rows
            if len(rows) < self.page_rows:
                return
            lo = int(rows[-1][0]) + 1

    def insert(
        self, db: Tx | None, table: str, row: Mapping[str, Any], *, number: str | None = None
    ) -> None:
        if number is None:
            super().insert(db, table, row)
            return
        _names(table, number, *row)
        columns = ", ".join([number, *row])
        marks = ", ".join(["%s"] * len(row))
        sql = (
            f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 (names checked above)
            f"((SELECT coalesce(max({number}), 0) + 1 FROM {table}), {marks})"
        )
        handle = self.conn if db is None else pg_tx(db)
        handle.execute(sql, tuple(row.values()))
