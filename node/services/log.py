"""The node's exchange log: events appended in the caller's transaction, perfect-subtree
hashes stored beside them so roots and proofs cost O(log n) indexed reads, and signed
checkpoints that are never inconsistent with an earlier one (docs/DESIGN.md §9)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from exchange import merkle
from exchange.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from exchange.crypto import Signer
from exchange.errors import AccordError, InputError, StoreError
from exchange.events import event_bytes
from exchange.note import verifier_key
from exchange.times import format_time
from keys.rowauth import LeafAuthenticator
from node.store import NodeStore, SubtreeReader, Tx

HIGHWATER_FILE = "log.highwater"
MAX_PROOF_RANGE = 2**40
_STAGED = "log.staged"


class LogKeys(Protocol):
    """What the log needs from the keyring (``keys.keyring.Keyring`` is one)."""

    def leaf_authenticator(self) -> LeafAuthenticator: ...

    def log_signer(self) -> Signer: ...


FOREIGN_STEP = (
    "Do not serve from this database. Someone wrote to node.db outside Accord: keep a copy "
    "for the investigation, then restore the data directory from the latest backup. "
    "Nothing was signed; partners still hold the last good checkpoint. There is no "
    "command that rewrites the log (ADR 0012)."
)
ROLLED_BACK_STEP = (
    "The database was restored from an old backup, truncated or edited: keep a copy for "
    "the investigation and restore the latest backup. Partners' witnesses hold the "
    "published checkpoint."
)


def foreign_entry(index: int, why: str) -> StoreError:
    return StoreError(
        f"log entry {index} was not written by this node ({why}); refusing to sign",
        code="log.foreign_entry",
        next_step=FOREIGN_STEP,
    )


@dataclass
class _Staged:
    """Events recorded in the open transaction, not yet in ``log_leaves``."""

    start: int
    rows: list[tuple[int, bytes, bytes]]


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root: bytes
    note: bytes
    signed_at: str


class ExchangeLog:
    """``keys`` gives the keyring (loaded, and the passphrase asked, only when a leaf is
    written or a checkpoint signed): every leaf is stored with its tag (ADR 0012)."""

    def __init__(
        self,
        store: NodeStore,
        origin: str,
        data_dir: Path | None = None,
        keys: Callable[[], LogKeys] | None = None,
    ) -> None:
        self.store = store
        self.origin = origin
        self._highwater = None if data_dir is None else data_dir / HIGHWATER_FILE
        self._keys = keys

    def _keyring(self) -> LogKeys:
        if self._keys is None:
            raise StoreError(
                "this log was opened without the keyring; it can neither write nor sign",
                code="log.no_keyring",
            )
        return self._keys()

    # -- reading ---------------------------------------------------------------------------
    def size(self) -> int:
        self._flush()
        last = self.store.log.max_index()
        return 0 if last is None else last + 1

    def reader(self) -> SubtreeReader:
        self._flush()
        return self.store.log.subtrees()

    def root(self, size: int | None = None) -> bytes:
        return merkle.root(self.size() if size is None else size, self.reader())

    def leaf(self, index: int) -> bytes:
        self._flush()
        event = self.store.log.event(index)
        if event is None:
            raise InputError(f"no log entry {index}", code="log.no_entry")
        return event

    def leaves(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        self._flush()
        return self.store.log.events(start, limit)

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
        db: Tx,
        events: Sequence[tuple[str, datetime, Mapping[str, object]]],
    ) -> list[int]:
        """Append events in the caller's transaction; returns their indexes."""
        if not self.store.in_transaction():
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
        if not self.store.in_transaction():
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
        tags = self._keyring().leaf_authenticator()
        result = merkle.new_subtrees_after_append_batch(start, [r[2] for r in rows], self.reader())
        self.store.log.add_leaves([(i, data, h, tags.tag(i, h)) for i, data, h in rows])
        self.store.log.add_subtrees([(s.level, s.index, s.hash) for s in result.subtrees])

    # -- checkpoints ----------------------------------------------------------------------
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = self.store.log.latest_checkpoint()
        if row is None:
            return None
        return SignedCheckpoint(int(row[0]), bytes(row[1]), bytes(row[2]), str(row[3]))

    def checkpoints(self) -> list[SignedCheckpoint]:
        rows = self.store.log.checkpoints()
        return [SignedCheckpoint(int(r[0]), bytes(r[1]), bytes(r[2]), str(r[3])) for r in rows]

    def checkpoint_at(self, size: int) -> SignedCheckpoint | None:
        row = self.store.log.checkpoint_at(size)
        return (
            None
            if row is None
            else SignedCheckpoint(int(row[0]), bytes(row[1]), bytes(row[2]), str(row[3]))
        )

    def sign_checkpoint(
        self, signer: Signer, now: datetime, *, previous_keys: Sequence[bytes] = ()
    ) -> SignedCheckpoint:
        """Sign the current tree head unless nothing was appended since the last one.

        Signs only what :meth:`verify` accepts: a log that extends the last checkpoint
        this node signed, is not smaller than one it published (a database restored from
        an old backup, docs/THREATS.md I04), and whose every entry since holds this node's tag
        (an entry appended by an insider, I07). Otherwise raises and signs nothing."""
        with self.store.transaction():
            verified = self.verify(signer.public_key, previous_keys=previous_keys)
            latest = self.latest_checkpoint()
            if latest is not None and latest.size == verified.size:
                return latest
            size, new_root = verified.size, verified.root
            note = sign_checkpoint(Checkpoint(self.origin, size, new_root), self.origin, signer)
            signed = SignedCheckpoint(size, new_root, note, format_time(now))
            self.store.log.add_checkpoint(size, new_root, note, signed.signed_at)
        self._write_highwater(signed)
        return signed

    def verify(
        self, log_public_key: bytes | None = None, *, previous_keys: Sequence[bytes] = ()
    ) -> merkle.AppendResult:
        """Check, without writing, that the stored log may be signed as it is; returns its
        size and the root computed from authenticated data only.

        - the log is not smaller than the high-water mark or the newest checkpoint row
          (``log.rolled_back``, naming both sizes);
        - the newest checkpoint row is signed by this node's log key (or, just after a
          log-key rotation, by the key it replaced: ``previous_keys``, ADR 0017) and the
          stored tree still has its root (``log.inconsistent``);
        - every entry after it is contiguous, hashes to its ``leaf_hash`` and carries a
          valid tag (``log.foreign_entry`` naming the first index that does not);
        - the stored subtrees over those entries are the ones their hashes give
          (``log.inconsistent``), so proofs served later agree with the signed root.

        Leaves written before migration 14 have no tag: those a verified checkpoint
        covers need none (that checkpoint authenticates them), any later one is foreign.
        """
        self._flush()
        keys = self._keyring()
        public_key = log_public_key if log_public_key is not None else keys.log_signer().public_key
        size = self.size()
        self._check_highwater(size)
        latest = self.latest_checkpoint()
        start = 0
        if latest is not None:
            if latest.size > size:
                raise StoreError(
                    f"the log has {size} entries but this node signed and published a "
                    f"checkpoint of size {latest.size}",
                    code="log.rolled_back",
                    next_step=ROLLED_BACK_STEP,
                )
            self._check_own_checkpoint(latest, [public_key, *previous_keys])
            start = latest.size
        tags = keys.leaf_authenticator()
        rows = self.store.log.leaves_from(start)
        hashes = []
        for expected, (idx, event, stored_hash, tag) in enumerate(rows, start=start):
            if int(idx) != expected:
                raise StoreError(
                    f"log entry {expected} is missing (the next stored entry is {idx})",
                    code="log.inconsistent",
                    next_step=ROLLED_BACK_STEP,
                )
            leaf = merkle.leaf_hash(bytes(event))
            if bytes(stored_hash) != leaf:
                raise foreign_entry(expected, "its stored hash is not the hash of its event")
            if tag is None:
                raise foreign_entry(expected, "it carries no tag")
            if not tags.verify(expected, leaf, bytes(tag)):
                raise foreign_entry(expected, "its tag does not verify")
            hashes.append(leaf)
        result = merkle.new_subtrees_after_append_batch(start, hashes, self.reader())
        stored = self._stored_subtrees(result.subtrees)
        for subtree in result.subtrees:
            if stored.get((subtree.level, subtree.index)) != subtree.hash:
                raise StoreError(
                    f"log subtree ({subtree.level}, {subtree.index}) does not match the "
                    "entries it covers; refusing to sign",
                    code="log.inconsistent",
                    next_step="Run 'accord audit verify' on an export to find the edit; "
                    + ROLLED_BACK_STEP,
                )
        return result

    def _stored_subtrees(self, wanted: Sequence[merkle.Subtree]) -> dict[tuple[int, int], bytes]:
        """The stored rows at the positions of ``wanted``: one range read per level."""
        ranges: dict[int, tuple[int, int]] = {}
        for s in wanted:
            lo, hi = ranges.get(s.level, (s.index, s.index))
            ranges[s.level] = (min(lo, s.index), max(hi, s.index))
        out: dict[tuple[int, int], bytes] = {}
        for level, (lo, hi) in ranges.items():
            for idx, h in self.store.log.subtrees_between(level, lo, hi):
                out[(level, idx)] = h
        return out

    def _check_own_checkpoint(self, latest: SignedCheckpoint, public_keys: Sequence[bytes]) -> None:
        """The newest checkpoint row must be one this node signed, over the stored tree: an
        insider cannot make entries look covered by inserting a checkpoint row."""
        try:
            opened = open_checkpoint(
                latest.note, [verifier_key(self.origin, k) for k in public_keys], origin=self.origin
            )
            signed_ok = (opened.checkpoint.size, opened.checkpoint.root_hash) == (
                latest.size,
                latest.root,
            )
        except AccordError:
            signed_ok = False
        if not signed_ok:
            raise StoreError(
                f"checkpoint {latest.size} in the database is not signed by this node's log "
                "key; refusing to sign",
                code="log.inconsistent",
                next_step=ROLLED_BACK_STEP,
            )
        if self.root(latest.size) != latest.root:
            raise StoreError(
                f"the stored log does not extend checkpoint {latest.size}; refusing to sign",
                code="log.inconsistent",
                next_step="Run 'accord audit export' and 'accord audit verify' to find the "
                "edit; " + ROLLED_BACK_STEP,
            )

    def authenticated_event(self, index: int) -> bytes | None:
        """The event at ``index`` if this node wrote it, else None: covered by the newest
        checkpoint it signed (an inclusion proof against that signed root), or carrying a
        valid tag. Used to attest trust-store rows (docs/THREATS.md I03)."""
        self._flush()
        row = self.store.log.event_and_tag(index)
        if row is None:
            return None
        event, tag = row
        leaf = merkle.leaf_hash(event)
        keys = self._keyring()
        if keys.leaf_authenticator().verify(index, leaf, tag):
            return event
        latest = self.latest_checkpoint()
        if latest is None or index >= latest.size:
            return None
        try:
            self._check_own_checkpoint(latest, [keys.log_signer().public_key])
            proof = merkle.inclusion_proof(index, latest.size, self.reader())
            merkle.verify_inclusion(leaf, index, latest.size, proof, latest.root)
        except AccordError:
            return None
        return event

    def follow_highwater(self, public_keys: Sequence[bytes]) -> int | None:
        """A standby's copy of the mark (docs/adr/0026): raise this process's high-water
        file to the newest checkpoint in the database once it is signed under one of
        ``public_keys`` (the node's own log keys, public) over the stored tree. Returns the
        size followed, None while there is no checkpoint. Raises, and raises no mark, when
        that checkpoint is not the node's (``log.inconsistent``) or the database holds less
        than this process already saw (``log.rolled_back``)."""
        latest = self.latest_checkpoint()
        if latest is None:
            return None
        self._check_highwater(self.size())
        self._check_own_checkpoint(latest, public_keys)
        self._write_highwater(latest)
        return latest.size

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
                next_step=ROLLED_BACK_STEP,
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
        self.store.log.add_cosignature(size, witness, line, format_time(now))

    def cosignatures(self, size: int) -> list[tuple[str, str]]:
        return self.store.log.cosignatures(size)

    def cosigned_note(self, checkpoint: SignedCheckpoint) -> bytes:
        """The checkpoint note with every cosignature line we hold appended."""
        lines = "".join(line + "\n" for _w, line in self.cosignatures(checkpoint.size))
        return checkpoint.note + lines.encode("utf-8")
