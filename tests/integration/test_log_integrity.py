"""An insider with ``node.db`` but not the passphrase, replayed against real nodes (ADR 0012).

Each attack edits a stopped node's database the way the findings did (well-formed rows,
correct RFC 6962 hashes), then drives the real CLI and a real ``accord serve`` process,
and checks the stored state afterwards: no new checkpoint, no cosignature, nothing else
written."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import KeyringError, StoreError
from node.home import Node, init_node
from tests.builders import insider_append_event
from tests.conftest import PASSPHRASE, TERMS, Result, snapshot
from tests.integration.conftest import ServerProcess, free_port

pytestmark = pytest.mark.timeout(180)
Accord = Callable[..., Result]
COSIGN_TIMEOUT = 30.0


# -- the insider: sqlite3 and the public hash functions, nothing else -------------------------


def insider_append(data: Path, kind: str, **attrs: Any) -> int:
    """Append one well-formed event and its subtree rows with correct hashes to a stopped
    node's database; returns its index. This is what finding 1 did: the next checkpoint
    used to cover it."""
    conn = sqlite3.connect(data / "node.db")
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        return insider_append_event(conn, kind, now, **attrs)
    finally:
        conn.close()


def _rows(data: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{data / 'node.db'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def _checkpoint_sizes(data: Path) -> list[int]:
    return [int(r[0]) for r in _rows(data, "SELECT size FROM log_checkpoints ORDER BY size")]


def _log_size(data: Path) -> int:
    return int(_rows(data, "SELECT count(*) FROM log_leaves")[0][0])


def _serve_refused(servers: Callable[..., ServerProcess], data: Path) -> ServerProcess:
    proc = servers(data)
    assert proc.proc is not None
    code = proc.proc.wait(timeout=60)
    assert code == StoreError.exit_code, proc.logs()
    assert not proc.ready_file.exists()
    assert not (data / "officer.sock").exists()
    return proc


def _wait_cosigned(accord: Accord, data: Path, partner: str) -> int:
    deadline = time.monotonic() + COSIGN_TIMEOUT
    while True:
        r = accord("--data", data, "log", "checkpoint", "--json")
        assert r.code == 0, r.err
        doc = r.json()
        assert isinstance(doc, dict)
        if partner in doc["cosigned_by"]:
            return int(doc["size"])
        if time.monotonic() > deadline:
            pytest.fail(f"{data.name}'s checkpoint not cosigned by {partner}: {doc}")
        time.sleep(0.1)


def _grow(data: Path, count: int) -> None:
    """``count`` genuine entries, written and signed by the node itself."""
    node = Node.open(data, lambda: PASSPHRASE)
    try:
        now = datetime.now(UTC)
        with node.store.transaction() as db:
            for i in range(count):
                node.record(db, "policy.changed", now, policy_digest=f"sha256:{i:064x}")
        node.checkpoint(now)
    finally:
        node.close()


def _witness_state(data: Path) -> list[tuple[Any, ...]]:
    return _rows(data, "SELECT partner, origin, log_key, size, root FROM witness_state")


# -- I07 / I02: an appended entry is never signed ---------------------------------------------


@pytest.mark.threat("I07", "I02")
def test_i07_appended_entry_stops_signing_export_and_serve(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, cn = partners
    pk_proc, cn_proc = servers(pk), servers(cn)
    pk_proc.wait_ready()
    cn_proc.wait_ready()
    cosigned = _wait_cosigned(accord, pk, "cn-mps")
    assert pk_proc.terminate() == 0, pk_proc.logs()
    held = _witness_state(cn)
    assert [(p, s) for p, _o, _k, s, _r in held] == [("pk-moi", cosigned)]

    # The insider appends a well-formed entry with correct hashes to the stopped node.
    before_sizes = _checkpoint_sizes(pk)
    index = insider_append(pk, "policy.changed", policy_digest="sha256:" + "ab" * 32)
    before = snapshot(pk)

    r = accord("--data", pk, "log", "checkpoint", "--sign", "--json")
    assert r.code == StoreError.exit_code
    assert "code: log.foreign_entry" in r.err and f"log entry {index} " in r.err, r.err
    assert "restore the data directory from the latest backup" in " ".join(r.err.split())
    shown = accord("--data", pk, "log", "checkpoint")  # showing, not signing, says it too
    assert shown.code == StoreError.exit_code and f"log entry {index} " in shown.err, shown.err

    bundle = tmp_path / "pk.bundle"
    r = accord("--data", pk, "audit", "export", "--out", bundle)
    assert r.code == StoreError.exit_code and "log.foreign_entry" in r.err, r.err
    assert not bundle.exists() and not bundle.with_name(bundle.name + ".partial").exists()

    refused = _serve_refused(servers, pk)
    assert "log.foreign_entry" in refused.logs() and f"log entry {index} " in refused.logs()

    # Nothing was signed, nothing cosigned, nothing at all written.
    assert snapshot(pk) == before
    assert _checkpoint_sizes(pk) == before_sizes
    assert max(int(r[0]) for r in _rows(pk, "SELECT size FROM log_cosignatures")) == cosigned
    assert _witness_state(cn) == held
    assert cn_proc.terminate() == 0, cn_proc.logs()


@pytest.mark.threat("I07")
def test_i07_a_forged_tag_or_an_edited_tail_entry_is_foreign(
    make_node: Callable[..., Path], accord: Accord
) -> None:
    """A tag copied from another entry, or an authentic tail entry whose event is edited
    (hash recomputed), does not verify either: the index is named, nothing is signed."""
    pk = make_node("pk-moi", free_port())
    index = insider_append(pk, "policy.changed", policy_digest="sha256:" + "cd" * 32)
    conn = sqlite3.connect(pk / "node.db")
    with conn:  # the insider copies the tag of entry 0
        conn.execute(
            "UPDATE log_leaves SET tag = (SELECT tag FROM log_leaves WHERE idx = 0) WHERE idx = ?",
            (index,),
        )
    conn.close()
    before = snapshot(pk)
    r = accord("--data", pk, "log", "checkpoint", "--sign")
    assert r.code == StoreError.exit_code
    assert f"log entry {index} " in r.err and "tag does not verify" in r.err, r.err
    assert snapshot(pk) == before


# -- I03: a forged peer.updated entry and a swapped card chain ---------------------------------


@pytest.mark.threat("I03", "I07")
def test_i03_forged_peer_updated_and_swapped_chain_are_not_accepted(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, _cn = partners
    # A rogue "cn-mps" whose keys the insider holds.
    rogue = init_node(
        tmp_path / "rogue",
        node="cn-mps",
        name="Rogue",
        endpoint=f"127.0.0.1:{free_port()}",
        passphrase=None,
        now=datetime.now(UTC),
    )
    chain = rogue.own_chain()
    rogue.close()
    index = insider_append(
        pk,
        "peer.updated",
        peer="cn-mps",
        fingerprint=chain.latest.fingerprint,
        card_version=chain.latest.version,
        trust_on_first_use=False,
    )
    conn = sqlite3.connect(pk / "node.db")
    with conn:
        conn.execute(
            "UPDATE peers SET chain = ?, fingerprint = ?, log_index = ? WHERE node = 'cn-mps'",
            (chain.to_bytes(), chain.latest.fingerprint, index),
        )
    conn.close()
    before = snapshot(pk)

    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        with pytest.raises(KeyringError) as err:
            node.trust_store().trusted_chain("cn-mps", datetime.now(UTC))
        assert err.value.code == "keyring.tampered"
    finally:
        node.close()
    offer = tmp_path / "offer.json"
    r = accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", TERMS, "--out", offer
    )
    assert r.code == KeyringError.exit_code and "code: keyring.tampered" in r.err, r.err
    assert not offer.exists()
    r = accord("--data", pk, "log", "checkpoint", "--sign")
    assert r.code == StoreError.exit_code and f"log entry {index} " in r.err, r.err
    refused = _serve_refused(servers, pk)
    assert "log.foreign_entry" in refused.logs()
    assert snapshot(pk) == before


# -- I04 / I09 / I02: a truncated tail; a wrong passphrase --------------------------------------


@pytest.mark.threat("I04", "I09", "I02")
def test_i09_deleted_newest_entries_fail_export_and_serve_names_both_sizes(
    make_node: Callable[..., Path], servers: Callable[..., ServerProcess], accord: Accord
) -> None:
    pk = make_node("pk-moi", free_port())
    _grow(pk, 5)
    published = _checkpoint_sizes(pk)[-1]
    size = _log_size(pk)
    assert size == published >= 2
    conn = sqlite3.connect(pk / "node.db")
    with conn:  # the insider deletes the two newest entries (their subtrees stay or go)
        conn.execute("DELETE FROM log_leaves WHERE idx >= ?", (size - 2,))
        conn.execute("DELETE FROM log_subtrees WHERE level = 0 AND idx >= ?", (size - 2,))
    conn.close()
    before = snapshot(pk)

    r = accord("--data", pk, "audit", "export", "--out", pk.parent / "pk.bundle")
    assert r.code == StoreError.exit_code, r.err
    assert "code: log.rolled_back" in r.err
    assert not (pk.parent / "pk.bundle").exists()

    refused = _serve_refused(servers, pk)
    logs = refused.logs()
    assert "log.rolled_back" in logs
    logs = " ".join(logs.split())
    assert f"size {published}" in logs and f"holds {size - 2} entries" in logs, logs

    r = accord("--data", pk, "log", "checkpoint", "--sign")
    assert r.code == StoreError.exit_code and "log.rolled_back" in r.err
    assert snapshot(pk) == before


@pytest.mark.threat("I04", "I09")
def test_i04_log_shorter_than_its_checkpoint_without_highwater(
    make_node: Callable[..., Path], servers: Callable[..., ServerProcess], accord: Accord
) -> None:
    """The high-water file removed too: the newest checkpoint row still names the size."""
    pk = make_node("pk-moi", free_port())
    _grow(pk, 3)
    published = _checkpoint_sizes(pk)[-1]
    (pk / "log.highwater").unlink()
    conn = sqlite3.connect(pk / "node.db")
    with conn:
        conn.execute("DELETE FROM log_leaves WHERE idx = ?", (published - 1,))
    conn.close()
    before = snapshot(pk)
    logs = " ".join(_serve_refused(servers, pk).logs().split())
    assert "log.rolled_back" in logs
    assert f"the log has {published - 1} entries" in logs and f"size {published}" in logs, logs
    r = accord("--data", pk, "audit", "export", "--out", pk.parent / "pk.bundle")
    assert r.code == StoreError.exit_code and "log.rolled_back" in r.err
    assert snapshot(pk) == before


@pytest.mark.threat("I09")
def test_i09_export_with_a_wrong_passphrase_fails(
    make_node: Callable[..., Path], accord: Accord, monkeypatch: pytest.MonkeyPatch
) -> None:
    pk = make_node("pk-moi", free_port())
    before = snapshot(pk)
    monkeypatch.setenv("ACCORD_PASSPHRASE", "not the passphrase")
    bundle = pk.parent / "pk.bundle"
    r = accord("--data", pk, "audit", "export", "--out", bundle)
    assert r.code == KeyringError.exit_code, r.err
    assert "code: keyring." in r.err
    assert not bundle.exists()
    assert snapshot(pk) == before


@pytest.mark.threat("I07")
def test_i07_entry_appended_while_serving_is_shown_by_status_and_never_signed(
    make_node: Callable[..., Path], servers: Callable[..., ServerProcess], accord: Accord
) -> None:
    pk = make_node("pk-moi", free_port())
    proc = servers(pk, "serve", "--no-cosign")
    proc.wait_ready()
    r = accord("--data", pk, "status", "--json")
    assert r.code == 0, r.err
    assert r.json()["log_problem_code"] is None
    sizes = _checkpoint_sizes(pk)
    index = insider_append(pk, "policy.changed", policy_digest="sha256:" + "ef" * 32)
    r = accord("--data", pk, "status", "--json")
    assert r.code == StoreError.exit_code
    doc = r.json()
    assert isinstance(doc, dict)
    assert doc["log_problem_code"] == "log.foreign_entry"
    assert f"log entry {index} " in str(doc["log_problem"])
    human = accord("--data", pk, "status")
    assert human.code == StoreError.exit_code and "log.foreign_entry" in human.err
    assert _checkpoint_sizes(pk) == sizes
    assert proc.terminate() == 0, proc.logs()
    assert _checkpoint_sizes(pk) == sizes
