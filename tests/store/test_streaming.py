"""The log's long reads (``leaves_from``, ``export_rows``: what ``LogService.verify`` and
``accord audit export`` iterate) hold one page in memory on PostgreSQL, never the whole
result (a psycopg client-side cursor fetches all of it); on SQLite they stay one cursor
stepped row by row (issue 16)."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from node.store import Store
from node.store.dialect import PAGE_ROWS, PgTx
from node.store.postgres import PgStore
from tests.postgres import PgCluster

ROWS = 2 * PAGE_ROWS + PAGE_ROWS // 2  # two full pages and a half one
_names = itertools.count()


class CountingTx(PgTx):
    """The PgStore's connection, recording each statement and how many rows it returned."""

    def __init__(self, inner: PgTx) -> None:
        super().__init__(inner.conn)
        self.statements: list[tuple[str, int]] = []

    def execute(self, sql: str, parameters: Any = None, /) -> Any:
        cursor = super().execute(sql, parameters)
        self.statements.append((sql, cursor.rowcount))
        return cursor


def _leaves(n: int) -> list[tuple[int, bytes, bytes, bytes]]:
    return [(i, b'{"kind":"x","i":%d}' % i, b"h%d" % i, b"t%d" % i) for i in range(n)]


@pytest.fixture
def pg(pg_cluster: PgCluster) -> Any:
    store = PgStore.open(pg_cluster.createdb(f"streaming_{next(_names)}"))
    with store.transaction():
        store.log.add_leaves(_leaves(ROWS))
    counting = CountingTx(store.db)
    store.sql.conn = counting
    try:
        yield store, counting
    finally:
        store.close()


def _pages(counting: CountingTx) -> list[int]:
    return [n for sql, n in counting.statements if "FROM log_leaves WHERE idx BETWEEN" in sql]


def test_export_rows_reads_pages_lazily_on_postgres(pg: tuple[PgStore, CountingTx]) -> None:
    store, counting = pg
    with store.read_snapshot():
        rows = store.log.export_rows(ROWS)
        assert counting.statements == []  # nothing is read before the first row is asked for
        first = next(rows)
        assert first[0] == 0
        assert _pages(counting) == [PAGE_ROWS]
        rest = list(rows)
    assert [int(r[0]) for r in [first, *rest]] == list(range(ROWS))
    assert _pages(counting) == [PAGE_ROWS, PAGE_ROWS, ROWS - 2 * PAGE_ROWS]
    assert all("LIMIT" in sql for sql, _n in counting.statements)


def test_leaves_from_reads_up_to_the_end_it_saw_first(pg: tuple[PgStore, CountingTx]) -> None:
    store, counting = pg
    rows = store.log.leaves_from(10)
    assert next(rows)[0] == 10
    # Appended after the read began: not read, as one statement would not have read it.
    with store.transaction():
        store.log.add_leaves([(ROWS, b'{"kind":"x"}', b"h", b"t")])
    assert [int(r[0]) for r in rows] == list(range(11, ROWS))
    assert _pages(counting) == [PAGE_ROWS, PAGE_ROWS, ROWS - 10 - 2 * PAGE_ROWS]
    assert max(n for _sql, n in counting.statements) <= PAGE_ROWS


def test_an_exact_number_of_pages_needs_no_empty_page(pg: tuple[PgStore, CountingTx]) -> None:
    store, counting = pg
    assert len(list(store.log.export_rows(2 * PAGE_ROWS))) == 2 * PAGE_ROWS
    assert _pages(counting) == [PAGE_ROWS, PAGE_ROWS]
    assert list(store.log.export_rows(0)) == []


def test_sqlite_streams_with_one_cursor(tmp_path: Path) -> None:
    store = Store.open(tmp_path, create=True)
    try:
        with store.transaction():
            store.log.add_leaves(_leaves(ROWS))
        rows = store.log.leaves_from(0)
        assert isinstance(rows, sqlite3.Cursor)  # stepped row by row, one read snapshot
        assert sum(1 for _ in rows) == ROWS
        assert isinstance(store.log.export_rows(ROWS), sqlite3.Cursor)
    finally:
        store.close()
