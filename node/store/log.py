"""The transparency log's rows: ``log_leaves`` (event, leaf hash, tag), ``log_subtrees``,
``log_checkpoints`` and ``log_cosignatures``.

Storage only: the Merkle math is exchange/merkle.py, and what may be appended or signed
(tags, rollback, foreign entries) is node/services/log.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Protocol

from exchange.errors import StoreError
from node.store.tx import Row

# The first 8 bytes of a leaf's kind: ``"kind":"`` occurs once in canonical event JSON (an
# attribute value holding it is escaped). Migration 16 indexes exactly this expression, so
# SQLite answers :meth:`SqliteLogRepo.events_of_kinds` from the index; dropping or replacing
# the index changes how fast the answer comes, never what it is.
LEAF_KIND_EXPR = "substr(event, instr(event, X'226b696e64223a22') + 8, 8)"

# Leaves by the first 8 bytes of their kind (the expression migration 16 indexes).
LEAVES_BY_KIND_SQL = (
    f"SELECT idx, event FROM log_leaves WHERE {LEAF_KIND_EXPR} IN (?, ?, ?, ?, ?, ?) "  # noqa: S608
    "AND idx >= ? AND idx < ? ORDER BY idx"
)


class SubtreeReader(Protocol):
    """``merkle.SubtreeReader`` with a count of the reads it made (the O(log n) test)."""

    reads: int

    def subtree(self, level: int, index: int) -> bytes: ...


class SqliteSubtrees:
    """``merkle.SubtreeReader`` over ``log_subtrees``; counts reads for the O(log n) test."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.reads = 0

    def subtree(self, level: int, index: int) -> bytes:
        self.reads += 1
        row = self._conn.execute(
            "SELECT hash FROM log_subtrees WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise StoreError(
                f"log subtree ({level}, {index}) is missing",
                code="store.log_damaged",
                next_step="Run 'accord audit verify' on an export; restore from a backup.",
            )
        return bytes(row[0])


class LogRepo(Protocol):
    def max_index(self) -> int | None: ...
    def subtrees(self) -> SubtreeReader: ...
    def event(self, index: int) -> bytes | None: ...
    def event_and_tag(self, index: int) -> tuple[bytes, bytes | None] | None: ...
    def leaf_hash(self, index: int) -> bytes | None: ...
    def events(self, start: int, limit: int) -> list[tuple[int, bytes]]: ...
    def leaves_from(self, start: int) -> Iterator[Row]: ...
    def events_of_kinds(
        self, prefixes: Sequence[bytes], start: int, end: int
    ) -> list[tuple[int, bytes]]: ...
    def add_leaves(self, rows: Sequence[tuple[int, bytes, bytes, bytes]]) -> None: ...
    def add_subtrees(self, rows: Sequence[tuple[int, int, bytes]]) -> None: ...
    def subtrees_between(self, level: int, lo: int, hi: int) -> list[tuple[int, bytes]]: ...
    def latest_checkpoint(self) -> Row | None: ...
    def checkpoints(self) -> list[Row]: ...
    def checkpoint_at(self, size: int) -> Row | None: ...
    def add_checkpoint(self, size: int, root: bytes, note: bytes, signed_at: str) -> None: ...
    def add_cosignature(self, size: int, witness: str, line: str, received_at: str) -> None: ...
    def cosignatures(self, size: int) -> list[tuple[str, str]]: ...
    def cosigned_size(self, witness: str) -> int | None: ...
    def export_rows(self, size: int) -> Iterator[Row]: ...


class SqliteLogRepo:
    """Writes run in the open transaction of the Store's connection (the log is staged
    and flushed inside it; node/services/log.py checks there is one)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # -- leaves -------------------------------------------------------------------------------
    def max_index(self) -> int | None:
        row = self._conn.execute("SELECT max(idx) FROM log_leaves").fetchone()
        return None if row[0] is None else int(row[0])

    def subtrees(self) -> SqliteSubtrees:
        return SqliteSubtrees(self._conn)

    def event(self, index: int) -> bytes | None:
        row = self._conn.execute("SELECT event FROM log_leaves WHERE idx = ?", (index,)).fetchone()
        return None if row is None else bytes(row[0])

    def event_and_tag(self, index: int) -> tuple[bytes, bytes | None] | None:
        row = self._conn.execute(
            "SELECT event, tag FROM log_leaves WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            return None
        return bytes(row[0]), None if row[1] is None else bytes(row[1])

    def leaf_hash(self, index: int) -> bytes | None:
        row = self._conn.execute(
            "SELECT leaf_hash FROM log_leaves WHERE idx = ?", (index,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def events(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._conn.execute(
            "SELECT idx, event FROM log_leaves WHERE idx >= ? ORDER BY idx LIMIT ?", (start, limit)
        ).fetchall()
        return [(int(i), bytes(e)) for i, e in rows]

    def leaves_from(self, start: int) -> Iterator[Row]:
        """(idx, event, leaf_hash, tag) from ``start`` on, streamed in index order."""
        rows: Iterator[Row] = self._conn.execute(
            "SELECT idx, event, leaf_hash, tag FROM log_leaves WHERE idx >= ? ORDER BY idx",
            (start,),
        )
        return rows

    def events_of_kinds(
        self, prefixes: Sequence[bytes], start: int, end: int
    ) -> list[tuple[int, bytes]]:
        """Events in [start, end) whose kind starts with one of six 8-byte prefixes."""
        return [
            (int(i), bytes(e))
            for i, e in self._conn.execute(LEAVES_BY_KIND_SQL, (*prefixes, start, end)).fetchall()
        ]

    def add_leaves(self, rows: Sequence[tuple[int, bytes, bytes, bytes]]) -> None:
        self._conn.executemany(
            "INSERT INTO log_leaves (idx, event, leaf_hash, tag) VALUES (?, ?, ?, ?)", rows
        )

    # -- subtrees -----------------------------------------------------------------------------
    def add_subtrees(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        self._conn.executemany("INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)", rows)

    def subtrees_between(self, level: int, lo: int, hi: int) -> list[tuple[int, bytes]]:
        return [
            (int(idx), bytes(h))
            for idx, h in self._conn.execute(
                "SELECT idx, hash FROM log_subtrees WHERE level = ? AND idx BETWEEN ? AND ?",
                (level, lo, hi),
            )
        ]

    # -- checkpoints --------------------------------------------------------------------------
    def latest_checkpoint(self) -> Row | None:
        """(size, root, note, signed_at) of the largest checkpoint."""
        row: Row | None = self._conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return row

    def checkpoints(self) -> list[Row]:
        rows: list[Row] = self._conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size"
        ).fetchall()
        return rows

    def checkpoint_at(self, size: int) -> Row | None:
        row: Row | None = self._conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints WHERE size = ?", (size,)
        ).fetchone()
        return row

    def add_checkpoint(self, size: int, root: bytes, note: bytes, signed_at: str) -> None:
        self._conn.execute(
            "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
            (size, root, note, signed_at),
        )

    # -- cosignatures -------------------------------------------------------------------------
    def add_cosignature(self, size: int, witness: str, line: str, received_at: str) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO log_cosignatures (size, witness, line, received_at) "
            "VALUES (?, ?, ?, ?)",
            (size, witness, line, received_at),
        )

    def cosignatures(self, size: int) -> list[tuple[str, str]]:
        rows = self._conn.execute(
            "SELECT witness, line FROM log_cosignatures WHERE size = ? ORDER BY witness", (size,)
        ).fetchall()
        return [(str(w), str(line)) for w, line in rows]

    def cosigned_size(self, witness: str) -> int | None:
        row = self._conn.execute(
            "SELECT max(size) FROM log_cosignatures WHERE witness = ?", (witness,)
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def export_rows(self, size: int) -> Iterator[Row]:
        """(idx, event, leaf_hash) below ``size`` exactly as stored, streamed in order."""
        rows: Iterator[Row] = self._conn.execute(
            "SELECT idx, event, leaf_hash FROM log_leaves WHERE idx < ? ORDER BY idx", (size,)
        )
        return rows
