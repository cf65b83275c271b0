"""RFC 6962 Merkle trees: third-party vectors, a naive reference, and O(log n) reads."""

from __future__ import annotations

import hashlib
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.errors import InputError, PeerDataError
from exchange.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    Subtree,
    VerifiedConsistency,
    VerifiedInclusion,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    new_subtrees_after_append,
    new_subtrees_after_append_batch,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def hexes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


HASHES = load("merkle_hashes.json")["vectors"]
ROOTS = load("merkle_roots.json")
INCLUSION = load("merkle_inclusion.json")
CONSISTENCY = load("merkle_consistency.json")


# ---------------------------------------------------------------------------- naive RFC 6962


def naive_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 writes it."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(naive_root(leaves[:k]), naive_root(leaves[k:]))


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 §2.1.1."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_root(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_root(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) from RFC 6962 §2.1.2."""
    n = len(leaves)
    if m == n:
        return [] if whole else [naive_root(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*naive_subproof(m, leaves[:k], whole), naive_root(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_root(leaves[:k])]


def naive_consistency(m: int, leaves: list[bytes]) -> list[bytes]:
    return naive_subproof(m, leaves, True)


# ---------------------------------------------------------------------------- readers


class SyntheticReader:
    """Deterministic subtree hashes for a huge tree, counting reads and refusing any
    subtree that is not complete within ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads = 0

    def subtree(self, level: int, index: int) -> bytes:
        self.reads += 1
        assert level >= 0 and index >= 0
        assert (index + 1) << level <= self.size, f"({level}, {index}) incomplete"
        return hashlib.sha256(f"{level},{index}".encode()).digest()


REFERENCE_LEAVES = hexes(ROOTS["leaf_inputs_hex"])


@pytest.fixture
def reference_tree() -> MemoryTree:
    tree = MemoryTree()
    for data in REFERENCE_LEAVES:
        tree.append(data)
    return tree


BIG_LEAVES = [b"leaf %d" % i for i in range(300)]


@cache
def big_tree() -> MemoryTree:
    tree = MemoryTree()
    tree.extend(BIG_LEAVES)
    return tree


# ---------------------------------------------------------------------------- hashing vectors


@pytest.mark.parametrize("vector", HASHES, ids=[v["name"] for v in HASHES])
def test_hashing_known_answers(vector: dict[str, Any]) -> None:
    if vector["op"] == "empty_root":
        got = EMPTY_ROOT
    elif vector["op"] == "leaf_hash":
        got = leaf_hash(bytes.fromhex(vector["data_hex"]))
    else:
        got = node_hash(bytes.fromhex(vector["left_hex"]), bytes.fromhex(vector["right_hex"]))
    assert got.hex() == vector["expected_hex"]


@pytest.mark.parametrize(
    "entry", ROOTS["roots_by_size"], ids=[f"size{e['size']}" for e in ROOTS["roots_by_size"]]
)
def test_root_at_each_size(reference_tree: MemoryTree, entry: dict[str, Any]) -> None:
    assert root(entry["size"], reference_tree).hex() == entry["root_hex"]
    assert naive_root(REFERENCE_LEAVES[: entry["size"]]).hex() == entry["root_hex"]


def test_every_stored_subtree_matches_the_reference(reference_tree: MemoryTree) -> None:
    for level, row in enumerate(ROOTS["node_hashes_by_level"]):
        for index, expected in enumerate(row):
            assert reference_tree.subtree(level, index).hex() == expected


def test_batch_append_stores_the_same_subtrees_and_returns_the_root() -> None:
    tree = MemoryTree()
    first = tree.extend(REFERENCE_LEAVES[:3])
    assert (first.size, first.root.hex()) == (3, ROOTS["roots_by_size"][3]["root_hex"])
    second = tree.extend(REFERENCE_LEAVES[3:])
    assert (second.size, second.root.hex()) == (8, ROOTS["roots_by_size"][8]["root_hex"])
    for level, row in enumerate(ROOTS["node_hashes_by_level"]):
        assert [tree.subtree(level, i).hex() for i in range(len(row))] == row


def test_append_returns_the_leaf_then_each_completed_parent(reference_tree: MemoryTree) -> None:
    tree = MemoryTree()
    for data in REFERENCE_LEAVES[:7]:
        tree.append(data)
    new = new_subtrees_after_append(7, leaf_hash(REFERENCE_LEAVES[7]), tree)
    assert [(s.level, s.index) for s in new] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    level, index, digest = new[-1].as_row()
    assert (level, index) == (3, 0)
    assert digest.hex() == ROOTS["roots_by_size"][8]["root_hex"]
    assert new[0] == Subtree(0, 7, leaf_hash(REFERENCE_LEAVES[7]))


def test_empty_batch_of_empty_tree_is_the_empty_root() -> None:
    result = new_subtrees_after_append_batch(0, [], MemoryTree())
    assert (result.size, result.root, result.subtrees) == (0, EMPTY_ROOT, ())


# ---------------------------------------------------------------------------- inclusion vectors


def _inclusion_id(case: dict[str, Any]) -> str:
    return f"{case['leaf_index']}of{case['tree_size']}"


@pytest.mark.parametrize("case", INCLUSION["known_answer"], ids=_inclusion_id)
def test_inclusion_known_answers(reference_tree: MemoryTree, case: dict[str, Any]) -> None:
    index, size = case["leaf_index"], case["tree_size"]
    proof = inclusion_proof(index, size, reference_tree)
    assert [h.hex() for h in proof] == case["proof_hex"]
    leaf = leaf_hash(bytes.fromhex(case["leaf_input_hex"]))
    assert leaf.hex() == case["leaf_hash_hex"]
    verified = verify_inclusion(leaf, index, size, proof, bytes.fromhex(case["root_hex"]))
    assert verified == VerifiedInclusion(leaf, index, size, bytes.fromhex(case["root_hex"]))


def _probe_id(case: dict[str, Any]) -> str:
    return str(case["file"]).removeprefix("testdata/").removesuffix(".json")


@pytest.mark.threat("H05")
@pytest.mark.parametrize("probe", INCLUSION["probes"], ids=_probe_id)
def test_inclusion_probes(probe: dict[str, Any]) -> None:
    def run() -> VerifiedInclusion:
        return verify_inclusion(
            bytes.fromhex(probe["leafHash_hex"]),
            probe["leafIdx"],
            probe["treeSize"],
            hexes(probe["proof_hex"]),
            bytes.fromhex(probe["root_hex"]),
        )

    if probe["wantErr"]:
        with pytest.raises(PeerDataError, match="inclusion proof"):
            run()
    else:
        assert run().root.hex() == probe["root_hex"]


def test_inclusion_probe_counts() -> None:
    accepted = [p for p in INCLUSION["probes"] if not p["wantErr"]]
    assert (len(INCLUSION["probes"]), len(accepted)) == (98, 6)


# ---------------------------------------------------------------------------- consistency vectors


def _consistency_id(case: dict[str, Any]) -> str:
    return f"{case['size1']}to{case['size2']}"


@pytest.mark.parametrize("case", CONSISTENCY["known_answer"], ids=_consistency_id)
def test_consistency_known_answers(reference_tree: MemoryTree, case: dict[str, Any]) -> None:
    proof = consistency_proof(case["size1"], case["size2"], reference_tree)
    assert [h.hex() for h in proof] == case["proof_hex"]
    root1, root2 = bytes.fromhex(case["root1_hex"]), bytes.fromhex(case["root2_hex"])
    verified = verify_consistency(case["size1"], case["size2"], root1, root2, proof)
    assert verified == VerifiedConsistency(case["size1"], case["size2"], root1, root2)


@pytest.mark.threat("H05")
@pytest.mark.parametrize("probe", CONSISTENCY["probes"], ids=_probe_id)
def test_consistency_probes(probe: dict[str, Any]) -> None:
    def run() -> VerifiedConsistency:
        return verify_consistency(
            probe["size1"],
            probe["size2"],
            bytes.fromhex(probe["root1_hex"]),
            bytes.fromhex(probe["root2_hex"]),
            hexes(probe["proof_hex"]),
        )

    if probe["wantErr"]:
        with pytest.raises(PeerDataError, match="consistency proof"):
            run()
    else:
        assert run().new_size == probe["size2"]


def test_consistency_probe_counts() -> None:
    accepted = [p for p in CONSISTENCY["probes"] if not p["wantErr"]]
    assert (len(CONSISTENCY["probes"]), len(accepted)) == (98, 6)


# ---------------------------------------------------------------------------- edges and errors


def test_consistency_from_empty_tree_is_an_empty_proof_the_verifier_refuses() -> None:
    tree = big_tree()
    assert consistency_proof(0, 5, tree) == []
    assert consistency_proof(5, 5, tree) == []
    with pytest.raises(PeerDataError, match="empty tree is meaningless"):
        verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: inclusion_proof(5, 5, t), "not below tree size"),
        (lambda t: inclusion_proof(-1, 5, t), "leaf index"),
        (lambda t: consistency_proof(6, 5, t), "exceeds new size"),
        (lambda t: root(2**64, t), "tree size"),
        (lambda t: new_subtrees_after_append(300, b"short", t), "32-byte"),
        (lambda t: t.subtree(0, 300), "not complete"),
        (lambda t: root(301, t), "not complete"),
    ],
    ids=[
        "index-at-size",
        "negative-index",
        "old-above-new",
        "size-too-big",
        "short-leaf",
        "missing-leaf",
        "root-beyond-size",
    ],
)
def test_provers_refuse_bad_input(call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(big_tree())


def test_verifiers_reject_proof_hashes_that_are_not_32_bytes() -> None:
    tree = big_tree()
    proof = inclusion_proof(3, 10, tree)
    proof[1] = proof[1] + b"\x00"
    with pytest.raises(PeerDataError, match="32-byte"):
        verify_inclusion(tree.subtree(0, 3), 3, 10, proof, root(10, tree))
    cproof = consistency_proof(3, 10, tree)
    cproof[0] = cproof[0][:31]
    with pytest.raises(PeerDataError, match="32-byte"):
        verify_consistency(3, 10, root(3, tree), root(10, tree), cproof)


def test_verifiers_reject_non_integer_sizes() -> None:
    with pytest.raises(PeerDataError, match="tree size"):
        verify_inclusion(EMPTY_ROOT, 0, True, [], EMPTY_ROOT)
    with pytest.raises(PeerDataError, match="new size"):
        verify_consistency(1, 2**64, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])


# ---------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_proofs_match_rfc6962_and_verify(data: st.DataObject) -> None:
    tree = big_tree()
    size = data.draw(st.integers(1, len(BIG_LEAVES)), label="size")
    leaves = BIG_LEAVES[:size]
    expected_root = naive_root(leaves)
    assert root(size, tree) == expected_root

    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(index, size, tree)
    assert proof == naive_path(index, leaves)
    verify_inclusion(leaf_hash(leaves[index]), index, size, proof, expected_root)
    if size > 1:
        with pytest.raises(PeerDataError):
            verify_inclusion(leaf_hash(leaves[index]), index ^ 1, size, proof, expected_root)

    old = data.draw(st.integers(1, size), label="old")
    cproof = consistency_proof(old, size, tree)
    assert cproof == (naive_consistency(old, leaves) if old < size else [])
    old_root = naive_root(leaves[:old])
    verify_consistency(old, size, old_root, expected_root, cproof)
    if old < size:
        with pytest.raises(PeerDataError):
            verify_consistency(old, size, expected_root, old_root, cproof)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=7))
def test_batches_and_single_appends_build_the_same_tree(chunks: list[int]) -> None:
    batched, single = MemoryTree(), MemoryTree()
    leaves = BIG_LEAVES[: sum(chunks)]
    start = 0
    for n in chunks:
        result = batched.extend(leaves[start : start + n])
        start += n
        assert result.size == start
        assert result.root == naive_root(leaves[:start])
    for data in leaves:
        single.append(data)
    assert batched.size == single.size == len(leaves)
    for level in range(max(len(leaves), 1).bit_length()):
        for index in range(len(leaves) >> level):
            assert batched.subtree(level, index) == single.subtree(level, index)


# ---------------------------------------------------------------------------- O(log n) reads

MILLION = 1_000_000
READ_BOUND = 4 * math.log2(MILLION) + 4


@pytest.mark.parametrize(
    "index", [0, 1, 2**19 - 1, 2**19, MILLION // 2 + 7, MILLION - 2, MILLION - 1]
)
def test_inclusion_proof_at_a_million_leaves_reads_log_n_subtrees(index: int) -> None:
    reader = SyntheticReader(MILLION)
    proof = inclusion_proof(index, MILLION, reader)
    assert reader.reads <= READ_BOUND
    assert len(proof) <= math.ceil(math.log2(MILLION))


@pytest.mark.parametrize("old", [1, 2, 3, 2**19, 2**19 + 1, 777_777, MILLION - 1])
def test_consistency_proof_at_a_million_leaves_reads_log_n_subtrees(old: int) -> None:
    reader = SyntheticReader(MILLION)
    proof = consistency_proof(old, MILLION, reader)
    assert reader.reads <= READ_BOUND
    assert 0 < len(proof) <= 2 * math.ceil(math.log2(MILLION))


def test_root_and_batch_append_at_a_million_leaves_read_popcount_subtrees() -> None:
    reader = SyntheticReader(MILLION)
    root(MILLION, reader)
    assert reader.reads == MILLION.bit_count()
    reader.reads = 0
    result = new_subtrees_after_append_batch(MILLION, [EMPTY_ROOT] * 64, reader)
    assert reader.reads == MILLION.bit_count()
    assert result.size == MILLION + 64


def test_memory_tree_counts_reads_for_a_real_proof() -> None:
    tree = big_tree()
    tree.reads = 0
    inclusion_proof(150, 300, tree)
    assert 0 < tree.reads <= 4 * math.log2(300) + 4
