"""The transparency log's rows: ``log_leaves`` (event, leaf hash, tag), ``log_subtrees``,
``log_checkpoints`` and ``log_cosignatures``.

Storage only: the Merkle math is exchange/merkle.py, and what may be appended or signed
(tags, rollback, foreign entries) is node/services/log.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from exchange.errors import StoreError
from node.store.dialect import Dialect
from node.store.tx import Row

# The first 8 bytes of a leaf's kind: ``"kind":"`` occurs once in canonical event JSON (an
# attribute value holding it is escaped). Migration 16 indexes exactly this expression, so
# SQLite answers :meth:`SqlLogRepo.events_of_kinds` from the index; dropping or replacing
# the index changes how fast the answer comes, never what it is.
LEAF_KIND_EXPR = "substr(event, instr(event, X'226b696e64223a22') + 8, 8)"

# The same on PostgreSQL (``position`` is 0 when absent, like ``instr``; both strings count
# from 1): PG_MIGRATIONS[16] indexes it.
PG_LEAF_KIND_EXPR = (
    "substring(event from position('\\x226b696e64223a22'::bytea in event) + 8 for 8)"
)
_KIND_EXPR = {"sqlite": LEAF_KIND_EXPR, "postgresql": PG_LEAF_KIND_EXPR}

# Leaves by the first 8 bytes of their kind (the expression migration 16 indexes).
_LEAVES_BY_KIND = (
    "SELECT idx, event FROM log_leaves WHERE {kind} IN (?, ?, ?, ?, ?, ?) "
    "AND idx >= ? AND idx < ? ORDER BY idx"
)
LEAVES_BY_KIND_SQL = _LEAVES_BY_KIND.format(kind=LEAF_KIND_EXPR)

# The streamed reads (``Dialect.scan``): the key first, bounded by its last two placeholders.
_LEAVES_FROM = (
    "SELECT idx, event, leaf_hash, tag FROM log_leaves WHERE idx BETWEEN ? AND ? ORDER BY idx"
)
_EXPORT_ROWS = "SELECT idx, event, leaf_hash FROM log_leaves WHERE idx BETWEEN ? AND ? ORDER BY idx"


class SubtreeReader(Protocol):
    """``merkle.SubtreeReader`` with a count of the reads it made (the O(log n) test)."""

    reads: int

    def subtree(self, level: int, index: int) -> bytes: ...


class Subtrees:
    """``merkle.SubtreeReader`` over ``log_subtrees``; counts reads for the O(log n) test."""

    def __init__(self, sql: Dialect) -> None:
        self._sql = sql
        self.reads = 0

    def subtree(self, level: int, index: int) -> bytes:
        self.reads += 1
        row = self._sql.one(
            "SELECT hash FROM log_subtrees WHERE level = ? AND idx = ?", (level, index)
        )
        if row is None:
            raise StoreError(
                f"log subtree ({level}, {index}) is missing",
                code="store.log_damaged",
                next_step="Run 'accord audit verify' on an export; restore from a backup.",
            )
        return bytes(row[0])


SqliteSubtrees = Subtrees  # the name node.store exports


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


class SqlLogRepo:
    """Writes run in the open transaction of the Store's connection (the log is staged
    and flushed inside it; node/services/log.py checks there is one)."""

    def __init__(self, sql: Dialect) -> None:
        self._sql = sql
        self._by_kind = _LEAVES_BY_KIND.format(kind=_KIND_EXPR[sql.name])

    # -- leaves -------------------------------------------------------------------------------
    def max_index(self) -> int | None:
        row = self._sql.one("SELECT max(idx) FROM log_leaves")
        return None if row[0] is None else int(row[0])

    def subtrees(self) -> Subtrees:
        return Subtrees(self._sql)

    def event(self, index: int) -> bytes | None:
        row = self._sql.one("SELECT event FROM log_leaves WHERE idx = ?", (index,))
        return None if row is None else bytes(row[0])

    def event_and_tag(self, index: int) -> tuple[bytes, bytes | None] | None:
        row = self._sql.one("SELECT event, tag FROM log_leaves WHERE idx = ?", (index,))
        if row is None:
            return None
        return bytes(row[0]), None if row[1] is None else bytes(row[1])

    def leaf_hash(self, index: int) -> bytes | None:
        row = self._sql.one("SELECT leaf_hash FROM log_leaves WHERE idx = ?", (index,))
        return None if row is None else bytes(row[0])

    def events(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self._sql.all(
            "SELECT idx, event FROM log_leaves WHERE idx >= ? ORDER BY idx LIMIT ?", (start, limit)
        )
        return [(int(i), bytes(e)) for i, e in rows]

    def leaves_from(self, start: int) -> Iterator[Row]:
        """(idx, event, leaf_hash, tag) from ``start`` on, streamed in index order (in
        bounded memory: ``Dialect.scan``)."""
        return self._sql.scan(_LEAVES_FROM, start, None, "SELECT max(idx) FROM log_leaves")

    def events_of_kinds(
        self, prefixes: Sequence[bytes], start: int, end: int
    ) -> list[tuple[int, bytes]]:
        """Events in [start, end) whose kind starts with one of six 8-byte prefixes."""
        return [
            (int(i), bytes(e)) for i, e in self._sql.all(self._by_kind, (*prefixes, start, end))
        ]

    def add_leaves(self, rows: Sequence[tuple[int, bytes, bytes, bytes]]) -> None:
        self._sql.executemany(
            "INSERT INTO log_leaves (idx, event, leaf_hash, tag) VALUES (?, ?, ?, ?)", rows
        )

    # -- subtrees -----------------------------------------------------------------------------
    def add_subtrees(self, rows: Sequence[tuple[int, int, bytes]]) -> None:
        self._sql.executemany("INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)", rows)

    def subtrees_between(self, level: int, lo: int, hi: int) -> list[tuple[int, bytes]]:
        return [
            (int(idx), bytes(h))
            for idx, h in self._sql.execute(
                "SELECT idx, hash FROM log_subtrees WHERE level = ? AND idx BETWEEN ? AND ?",
                (level, lo, hi),
            )
        ]

    # -- checkpoints --------------------------------------------------------------------------
    def latest_checkpoint(self) -> Row | None:
        """(size, root, note, signed_at) of the largest checkpoint."""
        row: Row | None = self._sql.one(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        )
        return row

    def checkpoints(self) -> list[Row]:
        return self._sql.all(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size"
        )

    def checkpoint_at(self, size: int) -> Row | None:
        row: Row | None = self._sql.one(
            "SELECT size, root, note, signed_at FROM log_checkpoints WHERE size = ?", (size,)
        )
        return row

    def add_checkpoint(self, size: int, root: bytes, note: bytes, signed_at: str) -> None:
        self._sql.execute(
            "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
            (size, root, note, signed_at),
        )

    # -- cosignatures -------------------------------------------------------------------------
    def add_cosignature(self, size: int, witness: str, line: str, received_at: str) -> None:
        self._sql.execute(
            "INSERT OR IGNORE INTO log_cosignatures (size, witness, line, received_at) "
            "VALUES (?, ?, ?, ?)",
            (size, witness, line, received_at),
        )

    def cosignatures(self, size: int) -> list[tuple[str, str]]:
        rows = self._sql.all(
            "SELECT witness, line FROM log_cosignatures WHERE size = ? ORDER BY witness", (size,)
        )
        return [(str(w), str(line)) for w, line in rows]

    def cosigned_size(self, witness: str) -> int | None:
        row = self._sql.one("SELECT max(size) FROM log_cosignatures WHERE witness = ?", (witness,))
        return None if row[0] is None else int(row[0])

    def export_rows(self, size: int) -> Iterator[Row]:
        """(idx, event, leaf_hash) below ``size`` exactly as stored, streamed in order (in
        bounded memory: ``Dialect.scan``)."""
        return self._sql.scan(_EXPORT_ROWS, 0, size - 1)
