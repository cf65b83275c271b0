"""RFC 6962 / RFC 9162 Merkle trees: hashing, proofs from stored perfect subtrees, verifiers.

A log stores the hash of every *perfect* subtree: level 0 holds the leaf hashes, and the
node at ``(level, index)`` covers leaves ``[index * 2**level, (index + 1) * 2**level)``.
Any range of leaves is a short list of such subtrees (a compact range), so the root and
every proof need O(log n) reads from a ``SubtreeReader`` and never rehash the log.

The verifiers follow transparency-dev/merkle's ``proof`` package exactly (same accept and
reject decisions on its test probes) and return what they verified, or raise
``PeerDataError`` naming the rule that failed. One deliberate difference: proof hashes
that are not 32 bytes are rejected up front (Go hashes them and fails later).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exchange.errors import AccordError, InputError, PeerDataError

HASH_LEN = 32
MAX_TREE_SIZE = 2**64 - 1
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


class SubtreeReader(Protocol):
    """Serves the stored hash of one perfect subtree.

    ``subtree(level, index)`` returns the hash covering leaves
    ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes. Callers only
    ask for subtrees that are complete in the tree size they pass, so a store can answer
    each call with one indexed read and raise its own error for a missing row.
    """

    def subtree(self, level: int, index: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Subtree:
    """One perfect-subtree hash, as a store persists it."""

    level: int
    index: int
    hash: bytes

    def as_row(self) -> tuple[int, int, bytes]:
        """``(level, index, hash)``, e.g. for an ``executemany`` insert."""
        return (self.level, self.index, self.hash)


@dataclass(frozen=True)
class AppendResult:
    """The outcome of appending a batch of leaves: what to persist, and the new root."""

    size: int
    root: bytes
    subtrees: tuple[Subtree, ...]


@dataclass(frozen=True)
class VerifiedInclusion:
    """A leaf hash proven to sit at ``index`` in the tree of ``size`` with ``root``."""

    leaf_hash: bytes
    index: int
    size: int
    root: bytes


@dataclass(frozen=True)
class VerifiedConsistency:
    """The tree of ``new_size`` with ``new_root`` proven to extend ``old_size``/``old_root``."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes


# ---------------------------------------------------------------------------- helpers


def _check_size(value: object, what: str, error: type[AccordError]) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TREE_SIZE:
        raise error(f"{what} must be an integer from 0 to 2**64-1")
    return value


def _check_hash(value: object, what: str, error: type[AccordError]) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_LEN:
        shown = len(value) if isinstance(value, bytes) else type(value).__name__
        raise error(f"{what} must be a {HASH_LEN}-byte SHA-256 hash, got {shown}")
    return value


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def _range_nodes(begin: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` covering ``[begin, end)``, left to right."""
    nodes: list[tuple[int, int]] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, _trailing_zeros(begin))
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    """Hash subtrees of descending size the way RFC 6962 builds a right edge."""
    acc = hashes[-1]
    for left in reversed(hashes[:-1]):
        acc = node_hash(left, acc)
    return acc


def _range_hash(begin: int, end: int, reader: SubtreeReader) -> bytes:
    return _fold_right([reader.subtree(level, index) for level, index in _range_nodes(begin, end)])


def _node_proof(level: int, index: int, size: int, reader: SubtreeReader) -> list[bytes]:
    """The inclusion proof of the complete node ``(level, index)`` in the tree of ``size``.

    Below the ``fork`` (where the path to the node leaves the tree's right edge) the proof
    is the node's siblings; then the ephemeral right sibling of the fork, hashed from the
    compact range ``[end, size)``; then the left border ``[0, begin)``, smallest first.
    """
    inner = (index ^ (size >> level)).bit_length() - 1
    fork_level = level + inner
    begin = (index >> inner) << fork_level
    end = begin + (1 << fork_level)
    proof: list[bytes] = []
    for lvl in range(level, fork_level):
        proof.append(reader.subtree(lvl, index ^ 1))
        index >>= 1
    if end < size:
        proof.append(_range_hash(end, size, reader))
    proof.extend(reader.subtree(lvl, idx) for lvl, idx in reversed(_range_nodes(0, begin)))
    return proof


# ---------------------------------------------------------------------------- provers


def root(size: int, reader: SubtreeReader) -> bytes:
    """The RFC 6962 root of the first ``size`` leaves, from popcount(size) reads."""
    _check_size(size, "tree size", InputError)
    if size == 0:
        return EMPTY_ROOT
    return _range_hash(0, size, reader)


def inclusion_proof(index: int, size: int, reader: SubtreeReader) -> list[bytes]:
    """The RFC 6962 audit path of leaf ``index`` in the tree of ``size`` (O(log n) reads)."""
    _check_size(size, "tree size", InputError)
    _check_size(index, "leaf index", InputError)
    if index >= size:
        raise InputError(f"inclusion proof: leaf index {index} is not below tree size {size}")
    return _node_proof(0, index, size, reader)


def consistency_proof(old_size: int, new_size: int, reader: SubtreeReader) -> list[bytes]:
    """The RFC 6962 consistency proof from ``old_size`` to ``new_size`` (O(log n) reads).

    Empty when the sizes are equal or ``old_size`` is 0 (tlog-witness sends an empty proof
    from an empty tree; the verifier never accepts ``old_size == 0``, see
    ``verify_consistency``).
    """
    _check_size(old_size, "old tree size", InputError)
    _check_size(new_size, "new tree size", InputError)
    if old_size > new_size:
        raise InputError(f"consistency proof: old size {old_size} exceeds new size {new_size}")
    if old_size in (0, new_size):
        return []
    # The biggest perfect subtree ending at old_size; the proof is its inclusion proof in
    # the new tree, preceded by the node itself unless old_size is a power of two (then
    # the node is the old root, which the verifier already has).
    level = _trailing_zeros(old_size)
    index = (old_size - 1) >> level
    proof = _node_proof(level, index, new_size, reader)
    if index == 0:
        return proof
    return [reader.subtree(level, index), *proof]


# ---------------------------------------------------------------------------- appenders


def new_subtrees_after_append(size: int, leaf: bytes, reader: SubtreeReader) -> list[Subtree]:
    """The perfect subtrees completed by appending leaf hash ``leaf`` at index ``size``.

    The first item is the leaf itself at level 0; each next one is its parent while the
    node is a right child. Reads one stored left sibling per completed parent.
    """
    _check_size(size, "tree size", InputError)
    if size == MAX_TREE_SIZE:
        raise InputError("tree is full: size is 2**64-1")
    _check_hash(leaf, "leaf hash", InputError)
    level, index, acc = 0, size, leaf
    out = [Subtree(level, index, acc)]
    while index & 1:
        acc = node_hash(reader.subtree(level, index - 1), acc)
        level, index = level + 1, index >> 1
        out.append(Subtree(level, index, acc))
    return out


def new_subtrees_after_append_batch(
    size: int, leaves: Iterable[bytes], reader: SubtreeReader
) -> AppendResult:
    """Append many leaf hashes after ``size``: every completed subtree and the new root.

    Reads the popcount(size) subtrees of the current right edge once, then works in memory,
    so a store can persist ``subtrees`` in one transaction and sign ``root`` without reading
    back what it has not committed yet.
    """
    _check_size(size, "tree size", InputError)
    edge = [Subtree(lvl, idx, reader.subtree(lvl, idx)) for lvl, idx in _range_nodes(0, size)]
    out: list[Subtree] = []
    new_size = size
    for leaf in leaves:
        if new_size == MAX_TREE_SIZE:
            raise InputError("tree is full: size is 2**64-1")
        node = Subtree(0, new_size, _check_hash(leaf, f"leaf hash {new_size}", InputError))
        out.append(node)
        while edge and edge[-1].level == node.level:
            left = edge.pop()
            node = Subtree(node.level + 1, node.index >> 1, node_hash(left.hash, node.hash))
            out.append(node)
        edge.append(node)
        new_size += 1
    new_root = _fold_right([s.hash for s in edge]) if edge else EMPTY_ROOT
    return AppendResult(size=new_size, root=new_root, subtrees=tuple(out))


class CompactRange:
    """The right edge of a tree being rebuilt leaf by leaf: O(log n) memory, the root at
    any size on the way. Auditors stream millions of leaves through one of these."""

    __slots__ = ("_edge", "size")

    def __init__(self) -> None:
        self._edge: list[tuple[int, bytes]] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        level, node = 0, leaf
        while self._edge and self._edge[-1][0] == level:
            node = node_hash(self._edge.pop()[1], node)
            level += 1
        self._edge.append((level, node))
        self.size += 1

    def extend(self, leaves: bytes, start: int = 0, stop: int | None = None) -> None:
        """``append`` each 32-byte leaf hash of ``leaves[start:stop]`` (a concatenation)."""
        edge = self._edge
        end = len(leaves) if stop is None else stop
        for at in range(start, end, 32):
            level, node = 0, leaves[at : at + 32]
            while edge and edge[-1][0] == level:
                node = node_hash(edge.pop()[1], node)
                level += 1
            edge.append((level, node))
        self.size += (end - start) // 32

    def root(self) -> bytes:
        return _fold_right([h for _level, h in self._edge]) if self._edge else EMPTY_ROOT


# ---------------------------------------------------------------------------- verifiers


def _proof_hashes(proof: Sequence[bytes], what: str) -> list[bytes]:
    if len(proof) > 2 * 64 + 1:
        raise PeerDataError(f"{what}: {len(proof)} hashes is more than any tree needs")
    return [_check_hash(h, f"{what}: hash {i}", PeerDataError) for i, h in enumerate(proof)]


def _decompose(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below the fork and on the left border."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> VerifiedInclusion:
    """Check that leaf hash ``leaf`` is at ``index`` in the tree of ``size`` and root."""
    what = "inclusion proof"
    _check_size(size, f"{what}: tree size", PeerDataError)
    _check_size(index, f"{what}: leaf index", PeerDataError)
    if index >= size:
        raise PeerDataError(f"{what}: leaf index {index} is not below tree size {size}")
    _check_hash(leaf, f"{what}: leaf hash", PeerDataError)
    hashes = _proof_hashes(proof, what)
    inner, border = _decompose(index, size)
    if len(hashes) != inner + border:
        raise PeerDataError(f"{what}: has {len(hashes)} hashes, tree needs {inner + border}")
    acc = _chain_inner(leaf, hashes[:inner], index)
    acc = _chain_border_right(acc, hashes[inner:])
    if acc != expected_root:
        raise PeerDataError(f"{what}: computed root does not match the expected root")
    return VerifiedInclusion(leaf_hash=leaf, index=index, size=size, root=expected_root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> VerifiedConsistency:
    """Check that the tree ``new_size``/``new_root`` extends ``old_size``/``old_root``.

    As in transparency-dev/merkle: ``old_size == 0`` is always rejected (a proof from the
    empty tree is meaningless; handle "nothing seen yet" before calling), equal sizes need
    an empty proof and equal roots, and a growing tree needs a non-empty proof.
    """
    what = "consistency proof"
    _check_size(old_size, f"{what}: old size", PeerDataError)
    _check_size(new_size, f"{what}: new size", PeerDataError)
    if new_size < old_size:
        raise PeerDataError(f"{what}: new size {new_size} is below old size {old_size}")
    if old_size == 0:
        raise PeerDataError(f"{what}: a proof from the empty tree is meaningless")
    verified = VerifiedConsistency(old_size, new_size, old_root, new_root)
    if old_size == new_size:
        if proof:
            raise PeerDataError(f"{what}: sizes are equal but the proof is not empty")
        if old_root != new_root:
            raise PeerDataError(f"{what}: sizes are equal but the roots differ")
        return verified
    if not proof:
        raise PeerDataError(f"{what}: empty proof for a tree that grew")
    hashes = _proof_hashes(proof, what)

    inner, border = _decompose(old_size - 1, new_size)
    shift = _trailing_zeros(old_size)
    inner -= shift
    # The proof starts with the old tree's biggest right-edge subtree, unless old_size is
    # a power of two: then that subtree is the old root itself.
    if old_size == 1 << shift:
        seed, start = old_root, 0
    else:
        seed, start = hashes[0], 1
    if len(hashes) != start + inner + border:
        raise PeerDataError(
            f"{what}: has {len(hashes)} hashes, trees need {start + inner + border}"
        )
    rest = hashes[start:]
    mask = (old_size - 1) >> shift
    acc1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if acc1 != old_root:
        raise PeerDataError(f"{what}: computed old root does not match the old root")
    acc2 = _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])
    if acc2 != new_root:
        raise PeerDataError(f"{what}: computed new root does not match the new root")
    return verified


# ---------------------------------------------------------------------------- in memory


class MemoryTree:
    """An in-memory log of perfect-subtree hashes: a ``SubtreeReader`` for tests and audits.

    ``reads`` counts ``subtree`` calls so tests can check proofs stay O(log n).
    """

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = []
        self.reads = 0

    @property
    def size(self) -> int:
        return len(self._levels[0]) if self._levels else 0

    def subtree(self, level: int, index: int) -> bytes:
        self.reads += 1
        if 0 <= level < len(self._levels) and 0 <= index < len(self._levels[level]):
            return self._levels[level][index]
        raise InputError(
            f"subtree ({level}, {index}) is not complete in a tree of size {self.size}"
        )

    def append(self, data: bytes) -> int:
        """Append one leaf (its data, hashed here); return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, leaf: bytes) -> int:
        index = self.size
        self._store(new_subtrees_after_append(index, leaf, self))
        return index

    def extend(self, data: Iterable[bytes]) -> AppendResult:
        """Append many leaves (their data) in one batch."""
        result = new_subtrees_after_append_batch(self.size, (leaf_hash(d) for d in data), self)
        self._store(result.subtrees)
        return result

    def root(self) -> bytes:
        return root(self.size, self)

    def _store(self, subtrees: Iterable[Subtree]) -> None:
        for s in subtrees:
            while len(self._levels) <= s.level:
                self._levels.append([])
            row = self._levels[s.level]
            if s.index != len(row):
                raise InputError(f"subtree ({s.level}, {s.index}) is out of order")
            row.append(s.hash)
