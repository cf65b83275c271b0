"""The stored exchange log: proofs in O(log n) reads, checkpoints that never contradict
an earlier one, audit of every single-row edit, and the witness (docs/THREATS.md I01-I04, H01)."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchange import merkle
from exchange.audit import Anchor
from exchange.checkpoint import open_checkpoint
from exchange.cosignature import verify_cosignatures
from exchange.errors import PeerDataError, StoreError
from exchange.note import parse_verifier_key
from keys.keyring import generate_keyring, witness_name
from node.home import Node, init_node
from node.services.audit import export_bundle, verify_bundle_file
from node.services.log import ExchangeLog
from node.services.witness import Witness, WitnessConflict
from node.store import Store
from tests.builders import anchors, insider_append_leaf, sqlite_store
from tests.conftest import PASSPHRASE

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _node(tmp_path: Path, name: str = "pk-moi") -> Node:
    return init_node(
        tmp_path / name, node=name, name=name, endpoint="127.0.0.1:7441", passphrase=None, now=NOW
    )


def _append(node: Node, count: int, start: datetime = NOW) -> None:
    with node.store.transaction() as db:
        node.log.append(
            db,
            [
                ("policy.changed", start, {"policy_digest": f"sha256:{i:064x}"})
                for i in range(count)
            ],
        )


def test_append_prove_and_checkpoint(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _append(node, 37)
    cp = node.checkpoint(NOW)
    assert cp.size == node.log.size() == 38  # node.created, then the 37 appended
    vkey = parse_verifier_key(node.own_chain().latest.log_vkey)
    verified = open_checkpoint(cp.note, [vkey], origin="pk-moi.accord/log")
    assert verified.checkpoint.root_hash == cp.root
    mem = merkle.MemoryTree()
    for _i, data in node.log.leaves(0, 1000):
        mem.append(data)
    assert mem.root() == cp.root
    for index in (0, 1, 17, 37):
        proof = node.log.inclusion_proof(index, cp.size)
        merkle.verify_inclusion(
            merkle.leaf_hash(node.log.leaf(index)), index, cp.size, proof, cp.root
        )
    first = node.log.checkpoints()[0]
    proof = node.log.consistency_proof(first.size, cp.size)
    merkle.verify_consistency(first.size, cp.size, first.root, cp.root, proof)
    # Nothing new: the same checkpoint, no new row.
    assert node.checkpoint(NOW) == cp
    assert len(node.log.checkpoints()) == 2


def test_proofs_at_a_million_entries_read_log_n_rows(tmp_path: Path) -> None:
    """Fill log_subtrees for 2**20 + 12345 leaves directly (synthetic hashes), then count
    the rows each proof reads: O(log n), asserted as a count, never as time."""
    store = Store.open(tmp_path, create=True)
    size = 2**20 + 12345
    rows = []
    for level in range(21):
        for index in range(size >> level):
            rows.append((level, index, hashlib.sha256(b"%d/%d" % (level, index)).digest()))
    leaf_rows = [(size - 1, b"{}", b"\x00" * 32)]
    with store.transaction():
        store.conn.executemany("INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)", rows)
        store.conn.executemany(
            "INSERT INTO log_leaves (idx, event, leaf_hash) VALUES (?, ?, ?)", leaf_rows
        )
    log = ExchangeLog(store, "x.accord/log")
    assert log.size() == size
    bound = 2 * size.bit_length() + 4
    for index in (0, 1, size // 2, size - 2, size - 1):
        reader = log.reader()
        merkle.inclusion_proof(index, size, reader)
        assert reader.reads <= bound, (index, reader.reads)
    for old in (1, 1000, 2**20, size - 1):
        reader = log.reader()
        merkle.consistency_proof(old, size, reader)
        assert reader.reads <= bound, (old, reader.reads)
    reader = log.reader()
    merkle.root(size, reader)
    assert reader.reads == bin(size).count("1")


@pytest.mark.threat("I04")
def test_i04_restored_backup_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _append(node, 3)
    node.checkpoint(NOW)
    backup = tmp_path / "backup.db"
    node.store.conn.execute(f"VACUUM INTO '{backup}'")
    _append(node, 5)
    published = node.checkpoint(NOW)
    node.close()
    for extra in ("node.db-wal", "node.db-shm"):
        (node.data_dir / extra).unlink(missing_ok=True)
    shutil.copy(backup, node.data_dir / "node.db")
    old = Node.open(node.data_dir, lambda: PASSPHRASE)
    with pytest.raises(StoreError, match="published a checkpoint of size") as err:
        old.checkpoint(NOW)
    assert err.value.code == "log.rolled_back"
    assert max(c.size for c in old.log.checkpoints()) < published.size


def test_refuses_to_sign_over_an_edited_subtree(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _append(node, 6)
    node.checkpoint(NOW)
    _append(node, 1)
    node.store.conn.execute(
        "UPDATE log_subtrees SET hash = zeroblob(32) WHERE level = 2 AND idx = 0"
    )
    before = [c.size for c in node.log.checkpoints()]
    with pytest.raises(StoreError) as err:
        node.checkpoint(NOW)
    assert err.value.code in ("log.inconsistent", "log.rolled_back")
    assert [c.size for c in node.log.checkpoints()] == before


# -- audit: every single-row edit is named -------------------------------------------------


def _busy_node(tmp_path: Path) -> Node:
    node = _node(tmp_path)
    for batch in range(4):
        _append(node, 5, NOW + timedelta(minutes=batch))
        node.checkpoint(NOW + timedelta(minutes=batch))
    return node


def _audit(node: Node, tmp_path: Path) -> list[tuple[int | None, str]]:
    out = tmp_path / f"bundle-{len(list(tmp_path.glob('bundle-*')))}.jsonl"
    export_bundle(node, out, NOW, unsigned_ok=True)  # forensic: the edited log as it is
    report = verify_bundle_file(out, anchors(node))
    return [(f.index, f.code) for f in report.findings]


Findings = list[tuple[int | None, str]]


def _at(index: int, code_prefix: str = "") -> Callable[[Findings], bool]:
    """A check that some finding names entry ``index`` (with a code starting so)."""
    return lambda found: any(i == index and code.startswith(code_prefix) for i, code in found)


MUTATIONS: list[tuple[str, str, Callable[[Findings], bool]]] = [
    (
        "i01_edit_event",
        "UPDATE log_leaves SET event = CAST(replace(CAST(event AS TEXT), 'policy', 'pol1cy') AS BLOB) WHERE idx = 7",
        _at(7, "entry.edited"),
    ),
    (
        "i01_edit_event_and_hash",
        "UPDATE log_leaves SET event = CAST(replace(CAST(event AS TEXT), '0000000000000007', '0000000000000008') AS BLOB), leaf_hash = zeroblob(32) WHERE idx = 9",
        _at(9, "entry.edited"),
    ),
    ("i02_delete_row", "DELETE FROM log_leaves WHERE idx = 12", _at(12, "entry.")),
    (
        "i02_insert_row",
        "UPDATE log_leaves SET idx = idx + 1000 WHERE idx >= 15; UPDATE log_leaves SET idx = idx - 999 WHERE idx >= 1015; INSERT INTO log_leaves (idx, event, leaf_hash) SELECT 15, event, leaf_hash FROM log_leaves WHERE idx = 3",
        _at(15, "entry.moved"),
    ),
    (
        "i01_edit_subtree",
        "UPDATE log_subtrees SET hash = zeroblob(32) WHERE level = 1 AND idx = 2",
        _at(5, "checkpoint.stored_root"),
    ),
    (
        "i01_edit_checkpoint",
        "UPDATE log_checkpoints SET note = CAST(replace(CAST(note AS TEXT), 'accord/log', 'accord/l0g') AS BLOB) WHERE size = (SELECT min(size) FROM log_checkpoints WHERE size > 2)",
        lambda found: (None, "checkpoint.signature") in found,
    ),
]


@pytest.mark.parametrize(
    ("name", "sql", "names_entry"),
    [pytest.param(*m, id=m[0], marks=pytest.mark.threat(m[0][:3].upper())) for m in MUTATIONS],
)
def test_single_row_edits_fail_the_audit(
    tmp_path: Path, name: str, sql: str, names_entry: Callable[[Findings], bool]
) -> None:
    node = _busy_node(tmp_path)
    assert _audit(node, tmp_path) == []
    for statement in sql.split("; "):
        node.store.conn.execute(statement)
    findings = _audit(node, tmp_path)
    assert findings, f"{name}: audit passed after the edit"
    assert names_entry(findings), findings


EXTRA_EDITS: list[tuple[str, Callable[[str], str]]] = [
    ("malformed_line", lambda text: text.replace('"event":"', '"event":"!', 1)),
    ("blank_lines", lambda text: text.replace("\n", "\n\n", 3)),
    ("swapped_lines", lambda text: _swap_entry_lines(text, 4, 5)),
    ("truncated", lambda text: text[: text.rindex('{"i":')]),
    ("event_not_a_string", lambda text: re.sub(r'"event":"[^"]*"', '"event":5', text, count=1)),
    ("hash_is_null", lambda text: re.sub(r'"h":"[^"]*"', '"h":null', text, count=1)),
    (
        "stored_root_not_a_string",
        lambda text: text.replace('"stored_root": "', '"stored_root": 7, "x": "', 1),
    ),
]


def _swap_entry_lines(text: str, a: int, b: int) -> str:
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith('{"i":'))
    lines[first + a], lines[first + b] = lines[first + b], lines[first + a]
    return "\n".join(lines)


def _reports_every_way(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, anchored: list[Anchor]
) -> list[dict[str, Any]]:
    """The same bundle verified in process (chunks of 4,096 and of 3 lines) and by worker
    processes (chunks of 5 lines): chunk boundaries fall inside checkpoint ranges."""
    from exchange import audit as exchange_audit
    from node.services import audit as node_audit

    out = []
    for scan_chunk, workers, parallel_chunk in ((4096, "1", 0), (3, "1", 0), (4096, "2", 5)):
        monkeypatch.setattr(exchange_audit, "SCAN_CHUNK", scan_chunk)
        monkeypatch.setattr(node_audit, "PARALLEL_CHUNK", parallel_chunk or 16384)
        monkeypatch.setenv("ACCORD_AUDIT_WORKERS", workers)
        assert node_audit.audit_workers(bundle) == int(workers)  # really in other processes
        out.append(verify_bundle_file(bundle, anchored).to_json())
    # Both ways to start workers, as the default picks them: fork only without threads.
    import threading

    for method in ("spawn", "fork") if threading.active_count() == 1 else ("spawn",):
        scanner = node_audit.ParallelScanner(2, method)
        report = exchange_audit.audit_bundle(
            node_audit.read_lines(bundle), anchors=anchored, scanner=scanner
        )
        out.append(report.to_json())
    return out


@pytest.mark.parametrize("edit", [m[0] for m in MUTATIONS] + [e[0] for e in EXTRA_EDITS])
def test_parallel_and_chunked_audits_find_exactly_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    node = _busy_node(tmp_path)
    sql = dict((m[0], m[1]) for m in MUTATIONS).get(edit)
    if sql is not None:
        for statement in sql.split("; "):
            node.store.conn.execute(statement)
    bundle = tmp_path / "b.jsonl"
    export_bundle(node, bundle, NOW, unsigned_ok=True)
    text_edit = dict(EXTRA_EDITS).get(edit)
    if text_edit is not None:
        bundle.write_text(text_edit(bundle.read_text()))
    first, *others = _reports_every_way(bundle, monkeypatch, anchors(node))
    assert first["findings"], f"{edit}: no finding"
    assert all(o == first for o in others), (first, others)


def test_parallel_audit_of_a_clean_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _busy_node(tmp_path)
    bundle = tmp_path / "b.jsonl"
    export_bundle(node, bundle, NOW)
    first, *others = _reports_every_way(bundle, monkeypatch, anchors(node))
    assert first["ok"] and first["entries"] == node.log.size()
    assert all(o == first for o in others)


# -- the witness ----------------------------------------------------------------------------


def _witness(tmp_path: Path) -> tuple[Witness, Node]:
    cn = _node(tmp_path, "cn-mps")
    ring = cn.keyring()
    return Witness(cn.store, ring.witness_signer(), witness_name("cn-mps")), cn


def _log_key(node: Node):  # type: ignore[no-untyped-def]
    return parse_verifier_key(node.own_chain().latest.log_vkey)


def test_witness_cosigns_consistent_checkpoints(tmp_path: Path) -> None:
    pk = _node(tmp_path)
    witness, cn = _witness(tmp_path)
    origin = pk.config.log_origin
    cp1 = pk.log.latest_checkpoint()
    assert cp1 is not None
    line = witness.add_checkpoint(
        partner="pk-moi",
        origin=origin,
        log_key=_log_key(pk),
        old_size=0,
        proof=[],
        note=cp1.note,
        now=NOW,
    )
    _append(pk, 10)
    cp2 = pk.checkpoint(NOW)
    proof = pk.log.consistency_proof(cp1.size, cp2.size)
    line2 = witness.add_checkpoint(
        partner="pk-moi",
        origin=origin,
        log_key=_log_key(pk),
        old_size=cp1.size,
        proof=proof,
        note=cp2.note,
        now=NOW,
    )
    assert witness.held_for("pk-moi").size == cp2.size  # type: ignore[union-attr]
    with pk.store.transaction():
        pk.log.add_cosignature(cp2.size, "cn-mps", line2, NOW)
    note = pk.log.cosigned_note(cp2)
    wkey = parse_verifier_key(cn.own_chain().latest.witness_vkey)
    assert len(verify_cosignatures(note, [wkey])) == 1
    assert line != line2
    # The export counts the cosignature once the partner's card is in the trust store.
    cn_card = cn.own_chain().to_bytes()
    pk.add_peer(cn_card, fingerprint=cn.own_chain().latest.fingerprint, tofu=False, now=NOW)
    out = tmp_path / "pk.bundle"
    export_bundle(pk, out, NOW)
    report = verify_bundle_file(out, anchors(pk, cn))
    assert report.ok, report.findings
    assert report.cosigned_checkpoints == 1


def test_witness_conflict_answers_with_the_held_size(tmp_path: Path) -> None:
    pk = _node(tmp_path)
    witness, _cn = _witness(tmp_path)
    cp1 = pk.log.latest_checkpoint()
    assert cp1 is not None
    witness.add_checkpoint(
        partner="pk-moi",
        origin=pk.config.log_origin,
        log_key=_log_key(pk),
        old_size=0,
        proof=[],
        note=cp1.note,
        now=NOW,
    )
    _append(pk, 3)
    cp2 = pk.checkpoint(NOW)
    with pytest.raises(WitnessConflict) as err:
        witness.add_checkpoint(
            partner="pk-moi",
            origin=pk.config.log_origin,
            log_key=_log_key(pk),
            old_size=0,
            proof=[],
            note=cp2.note,
            now=NOW,
        )
    assert err.value.held_size == cp1.size
    assert witness.held_for("pk-moi").size == cp1.size  # type: ignore[union-attr]


def _sqlite_dump(store: Store) -> str:
    return "\n".join(store.conn.iterdump())


@pytest.mark.parametrize("attack", ["h01_same_size_other_root", "h01_truncate_and_reappend"])
@pytest.mark.threat("H01")
def test_h01_witness_refuses_rewritten_history_and_keeps_evidence(
    tmp_path: Path, attack: str
) -> None:
    pk = _node(tmp_path)
    witness, _cn = _witness(tmp_path)
    origin = pk.config.log_origin
    _append(pk, 4)
    cp = pk.checkpoint(NOW)
    witness.add_checkpoint(
        partner="pk-moi",
        origin=origin,
        log_key=_log_key(pk),
        old_size=0,
        proof=[],
        note=cp.note,
        now=NOW,
    )
    # The log owner rewrites history: a fresh database with the same keys, other events.
    forged_dir = tmp_path / "forged"
    shutil.copytree(pk.data_dir, forged_dir)
    for f in ("node.db", "node.db-wal", "node.db-shm", "log.highwater"):
        (forged_dir / f).unlink(missing_ok=True)
    store = Store.open(forged_dir, create=True)
    log = ExchangeLog(store, origin, keys=pk.keyring)
    extra = 0 if attack == "h01_same_size_other_root" else 3
    with store.transaction() as db:
        log.append(
            db,
            [
                ("policy.changed", NOW, {"policy_digest": f"forged-{i}"})
                for i in range(cp.size + extra)
            ],
        )
    forged = log.sign_checkpoint(pk.keyring().log_signer(), NOW)
    proof = log.consistency_proof(cp.size, forged.size) if extra else []
    held_before = witness.held_for("pk-moi")
    with pytest.raises(PeerDataError) as err:
        witness.add_checkpoint(
            partner="pk-moi",
            origin=origin,
            log_key=_log_key(pk),
            old_size=cp.size,
            proof=proof,
            note=forged.note,
            now=NOW,
        )
    assert err.value.code == "witness.inconsistent"
    assert witness.held_for("pk-moi") == held_before
    evidence = witness.evidence(origin)
    assert evidence == [(cp.note, forged.note, evidence[0][2])]


@pytest.mark.threat("I04")
def test_i04_witness_refuses_a_rolled_back_log(tmp_path: Path) -> None:
    pk = _node(tmp_path)
    witness, _cn = _witness(tmp_path)
    origin = pk.config.log_origin
    _append(pk, 8)
    cp = pk.checkpoint(NOW)
    witness.add_checkpoint(
        partner="pk-moi",
        origin=origin,
        log_key=_log_key(pk),
        old_size=0,
        proof=[],
        note=cp.note,
        now=NOW,
    )
    earlier = pk.log.checkpoints()[0]
    with pytest.raises(WitnessConflict):
        witness.add_checkpoint(
            partner="pk-moi",
            origin=origin,
            log_key=_log_key(pk),
            old_size=cp.size,
            proof=[],
            note=earlier.note,
            now=NOW,
        )
    assert witness.held_for("pk-moi").size == cp.size  # type: ignore[union-attr]


@pytest.mark.threat("H06")
def test_h06_checkpoint_of_another_log_is_refused(tmp_path: Path) -> None:
    pk = _node(tmp_path)
    witness, cn = _witness(tmp_path)
    cp = cn.log.latest_checkpoint()
    assert cp is not None
    before = _sqlite_dump(sqlite_store(cn))
    with pytest.raises(PeerDataError):
        witness.add_checkpoint(
            partner="pk-moi",
            origin=pk.config.log_origin,
            log_key=_log_key(pk),
            old_size=0,
            proof=[],
            note=cp.note,
            now=NOW,
        )
    assert _sqlite_dump(sqlite_store(cn)) == before


def test_log_events_hold_no_secret_material(tmp_path: Path) -> None:
    node = _node(tmp_path)
    ring = node.keyring()
    conn = sqlite3.connect(node.data_dir / "node.db")
    blob = b"".join(bytes(r[0]) for r in conn.execute("SELECT event FROM log_leaves"))
    for secret in (ring.identity_seed, ring.log_seed, ring.storage_key):
        assert secret not in blob and secret.hex().encode() not in blob


def test_keyring_unused(tmp_path: Path) -> None:
    ring = generate_keyring("pk-moi", "pk-moi.accord/log", "127.0.0.1", NOW)
    assert witness_name(ring.node) == "pk-moi.accord/witness"


# -- leaf authentication (ADR 0012) ---------------------------------------------------------


def _insider_append(node: Node, data: bytes) -> int:
    """What someone with node.db but no keyring can do: a leaf and its correct subtrees."""
    return insider_append_leaf(sqlite_store(node).conn, data)


@pytest.mark.threat("I07")
def test_i07_a_checkpoint_row_inserted_by_an_insider_covers_nothing(tmp_path: Path) -> None:
    node = _node(tmp_path)
    _append(node, 3)
    node.checkpoint(NOW)
    index = _insider_append(node, node.log.leaf(1))
    size = node.log.size()
    # The insider also adds a checkpoint row "covering" the entry (it cannot sign it).
    with node.store.transaction():
        node.store.conn.execute(
            "INSERT INTO log_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
            (size, node.log.root(size), b"not a signed note\n", "2026-11-25T12:00:00Z"),
        )
    with pytest.raises(StoreError) as err:
        node.checkpoint(NOW)
    assert err.value.code == "log.inconsistent"
    assert node.log.authenticated_event(index) is None
    assert node.log.authenticated_event(0) is not None


@pytest.mark.threat("I07")
def test_i07_a_forged_subtree_over_new_entries_is_refused(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.checkpoint(NOW)
    _append(node, 6)  # authentic, tagged, not yet signed: entries 1..6
    with node.store.transaction():
        node.store.conn.execute(
            "UPDATE log_subtrees SET hash = zeroblob(32) WHERE level = 1 AND idx = 2"
        )
    before = [c.size for c in node.log.checkpoints()]
    with pytest.raises(StoreError) as err:
        node.checkpoint(NOW)
    assert err.value.code == "log.inconsistent" and "(1, 2)" in err.value.message
    assert [c.size for c in node.log.checkpoints()] == before


@pytest.mark.threat("I07")
def test_i07_legacy_leaves_covered_by_a_signed_checkpoint_need_no_tag(tmp_path: Path) -> None:
    """Leaves from before migration 14 have no tag: covered ones still sign and attest,
    an untagged one past the newest signed checkpoint is foreign."""
    node = _node(tmp_path)
    _append(node, 4)
    cp = node.checkpoint(NOW)
    with node.store.transaction():
        node.store.conn.execute("UPDATE log_leaves SET tag = NULL")
    assert node.log.authenticated_event(2) is not None
    _append(node, 2)
    signed = node.checkpoint(NOW)
    assert signed.size == cp.size + 2
    _append(node, 2)
    with node.store.transaction():
        node.store.conn.execute("UPDATE log_leaves SET tag = NULL WHERE idx = ?", (signed.size,))
    with pytest.raises(StoreError) as err:
        node.checkpoint(NOW)
    assert err.value.code == "log.foreign_entry"
    assert f"log entry {signed.size} " in err.value.message
