"""The node's exchange log: events appended in the caller's transaction, perfect-subtree
hashes stored beside them so roots and proofs cost O(log n) indexed reads, and signed
checkpoints that are never inconsistent with an earlier one (docs/DESIGN.md §9)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlite_utils

from exchange import merkle
from exchange.checkpoint import Checkpoint, sign_checkpoint
from exchange.crypto import Signer
from exchange.errors import AccordError, InputError, StoreError
from exchange.events import event_bytes
from exchange.times import format_time
from node.store import Store

HIGHWATER_FILE = "log.highwater"
MAX_PROOF_RANGE = 2**40
_STAGED = "log.staged"


@dataclass
class _Staged:
    """Events recorded in the open transaction, not yet in ``log_leaves``."""

    start: int
    rows: list[tuple[int, bytes, bytes]]


class SqliteSubtrees:
    """``merkle.SubtreeReader`` over ``log_subtrees``; counts reads for the O(log n) test."""

    def __init__(self, store: Store) -> None:
        self._conn = store.conn
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


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root: bytes
    note: bytes
    signed_at: str


class ExchangeLog:
    def __init__(self, store: Store, origin: str, data_dir: Path | None = None) -> None:
        self.store = store
        self.origin = origin
        self._highwater = None if data_dir is None else data_dir / HIGHWATER_FILE

    # -- reading ---------------------------------------------------------------------------
    def size(self) -> int:
        self._flush()
        row = self.store.conn.execute("SELECT max(idx) FROM log_leaves").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def reader(self) -> SqliteSubtrees:
        self._flush()
        return SqliteSubtrees(self.store)

    def root(self, size: int | None = None) -> bytes:
        return merkle.root(self.size() if size is None else size, self.reader())

    def leaf(self, index: int) -> bytes:
        self._flush()
        row = self.store.conn.execute(
            "SELECT event FROM log_leaves WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            raise InputError(f"no log entry {index}", code="log.no_entry")
        return bytes(row[0])

    def leaves(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        self._flush()
        rows = self.store.conn.execute(
            "SELECT idx, event FROM log_leaves WHERE idx >= ? ORDER BY idx LIMIT ?", (start, limit)
        ).fetchall()
        return [(int(i), bytes(e)) for i, e in rows]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return merkle.inclusion_proof(index, size, self.reader())

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        self._check_size(new_size)
        if old_size > new_size:
            raise InputError(f"old size {old_size} is larger than new size {new_size}")
        return merkle.consistency_proof(old_size, new_size, self.reader())

    def _check_size(self, size: int) -> None:
        current = self.size()
        if not 0 < size <= current:
            raise InputError(
                f"tree size {size} is not between 1 and the log size {current}", code="log.bad_size"
            )

    # -- appending (inside the caller's transaction) --------------------------------------
    def append(
        self,
        db: sqlite_utils.Database,
        events: Sequence[tuple[str, datetime, Mapping[str, object]]],
    ) -> list[int]:
        """Append events in the caller's transaction; returns their indexes."""
        if not self.store.conn.in_transaction:
            raise StoreError("log append outside a transaction", code="store.no_transaction")
        start = self.size()
        rows = []
        for offset, (kind, at, attrs) in enumerate(events):
            data = event_bytes(kind, start + offset, format_time(at), attrs)
            rows.append((start + offset, data, merkle.leaf_hash(data)))
        self._insert(start, rows)
        return [r[0] for r in rows]

    def stage(self, kind: str, at: datetime, attrs: Mapping[str, object]) -> int:
        """Record one event in the caller's transaction and return its index.

        The event's bytes are built (and checked) now; the events of one transaction reach
        ``log_leaves`` and ``log_subtrees`` together, in order, just before it commits (or
        before anything reads the log), so the right edge is read once per transaction
        rather than once per event. What is stored is what ``append`` would store."""
        if not self.store.conn.in_transaction:
            raise StoreError("log append outside a transaction", code="store.no_transaction")
        staged = self.store.staged.get(_STAGED)
        if staged is None:
            staged = _Staged(self.size(), [])
            self.store.staged[_STAGED] = staged
            self.store.before_commit(self._flush)
        index = staged.start + len(staged.rows)
        data = event_bytes(kind, index, format_time(at), attrs)
        staged.rows.append((index, data, merkle.leaf_hash(data)))
        return index

    def _flush(self) -> None:
        staged = self.store.staged.pop(_STAGED, None)
        if staged is not None and staged.rows:
            self._insert(staged.start, staged.rows)

    def _insert(self, start: int, rows: list[tuple[int, bytes, bytes]]) -> None:
        result = merkle.new_subtrees_after_append_batch(start, [r[2] for r in rows], self.reader())
        self.store.conn.executemany(
            "INSERT INTO log_leaves (idx, event, leaf_hash) VALUES (?, ?, ?)", rows
        )
        self.store.conn.executemany(
            "INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)",
            [(s.level, s.index, s.hash) for s in result.subtrees],
        )

    # -- checkpoints ----------------------------------------------------------------------
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = self.store.conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return SignedCheckpoint(int(row[0]), bytes(row[1]), bytes(row[2]), str(row[3]))

    def checkpoints(self) -> list[SignedCheckpoint]:
        rows = self.store.conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints ORDER BY size"
        ).fetchall()
        return [SignedCheckpoint(int(r[0]), bytes(r[1]), bytes(r[2]), str(r[3])) for r in rows]

    def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        row = self.store.conn.execute(
            "SELECT size, root, note, signed_at FROM log_checkpoints WHERE size = ?", (size,)
        ).fetchone()
        return (
            None
            if row is None
            else SignedCheckpoint(int(row[0]), bytes(row[1]), bytes(row[2]), str(row[3]))
        )

    def sign_checkpoint(self, signer: Signer, now: datetime) -> SignedCheckpoint:
        """Sign the current tree head unless nothing was appended since the last one.

        Refuses (and signs nothing) when the stored tree does not extend the last signed
        checkpoint, or the log is smaller than a checkpoint this node published before
        (a database restored from an old backup, docs/THREATS.md I04)."""
        with self.store.transaction():
            size = self.size()
            latest = self.latest_checkpoint()
            self._check_highwater(size)
            if latest is not None and latest.size == size:
                return latest
            if latest is not None and latest.size > size:
                raise StoreError(
                    f"the log has {size} entries but checkpoint {latest.size} was signed",
                    code="log.rolled_back",
                    next_step="The database was rolled back or truncated; "
                    "restore the latest backup.",
                )
            new_root = self.root(size)
            if latest is not None:
                proof = merkle.consistency_proof(latest.size, size, self.reader())
                try:
                    merkle.verify_consistency(latest.size, size, latest.root, new_root, proof)
                except AccordError as e:
                    raise StoreError(
                        f"the stored log does not extend checkpoint {latest.size}; "
                        "refusing to sign",
                        code="log.inconsistent",
                        next_step="Run 'accord audit export' and 'accord audit verify' "
                        "to find the edit.",
                    ) from e
            note = sign_checkpoint(Checkpoint(self.origin, size, new_root), self.origin, signer)
            signed = SignedCheckpoint(size, new_root, note, format_time(now))
            self.store.conn.execute(
                "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
                (size, new_root, note, signed.signed_at),
            )
        self._write_highwater(signed)
        return signed

    def _check_highwater(self, size: int) -> None:
        """The last published checkpoint is also kept outside the database, so restoring
        ``node.db`` alone from an old backup cannot make the node sign a smaller log."""
        if self._highwater is None or not self._highwater.exists():
            return
        try:
            mark = json.loads(self._highwater.read_text("utf-8"))
            mark_size, mark_root = int(mark["size"]), bytes.fromhex(mark["root"])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self._highwater} is unreadable", code="log.highwater") from e
        if mark_size > size or (mark_size > 0 and self.root(mark_size) != mark_root):
            raise StoreError(
                f"this node published a checkpoint of size {mark_size}, but the database "
                f"holds {size} entries that do not extend it",
                code="log.rolled_back",
                next_step="The database was restored from an old backup or edited; restore "
                "the latest backup. Partners' witnesses hold the published checkpoint.",
            )

    def _write_highwater(self, signed: SignedCheckpoint) -> None:
        """Raise the mark to ``signed`` (never lower it). Two writers (a server and a CLI
        command, or two threads) take turns on a lock file, each with its own temp file."""
        if self._highwater is None:
            return
        lock_path = self._highwater.with_name(HIGHWATER_FILE + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                mark = json.loads(self._highwater.read_text("utf-8"))
                if int(mark["size"]) >= signed.size:
                    return
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                pass  # no mark yet (or unreadable: the next check names it)
            fd, tmp = tempfile.mkstemp(prefix=HIGHWATER_FILE + ".", dir=self._highwater.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"size": signed.size, "root": signed.root.hex()}))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._highwater)

    # -- cosignatures ---------------------------------------------------------------------
    def add_cosignature(self, size: int, witness: str, line: str, now: datetime) -> None:
        self.store.conn.execute(
            "INSERT OR IGNORE INTO log_cosignatures (size, witness, line, received_at) "
            "VALUES (?, ?, ?, ?)",
            (size, witness, line, format_time(now)),
        )

    def cosignatures(self, size: int) -> list[tuple[str, str]]:
        rows = self.store.conn.execute(
            "SELECT witness, line FROM log_cosignatures WHERE size = ? ORDER BY witness", (size,)
        ).fetchall()
        return [(str(w), str(line)) for w, line in rows]

    def cosigned_note(self, checkpoint: SignedCheckpoint) -> bytes:
        """The checkpoint note with every cosignature line we hold appended."""
        lines = "".join(line + "\n" for _w, line in self.cosignatures(checkpoint.size))
        return checkpoint.note + lines.encode("utf-8")
