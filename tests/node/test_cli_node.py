"""The node set-up commands, end to end through the CLI, checking stored state."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from exchange.canonical import b64_decode
from exchange.card import fingerprint
from tests.conftest import Result, snapshot

Accord = Callable[..., Result]


def _fp(accord: Accord, data: Path) -> str:
    r = accord("--data", data, "card", "show", "--json")
    assert r.code == 0, r.err
    return str(r.json()["fingerprint"])


@pytest.fixture
def pair(make_node: Callable[..., Path], accord: Accord, tmp_path: Path) -> tuple[Path, Path, Path]:
    pk = make_node("pk-moi", 7441)
    cn = make_node("cn-mps", 7442)
    card = tmp_path / "pk-moi.card"
    assert accord("--data", pk, "card", "export", "--out", card).code == 0
    return pk, cn, card


def test_init_creates_a_complete_node(make_node: Callable[..., Path], accord: Accord) -> None:
    data = make_node("pk-moi")
    assert (data / "keys" / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
    shown = accord("--data", data, "card", "show", "--json").json()
    assert shown["node"] == "pk-moi"
    assert len(shown["fingerprint"]) == 29
    human = accord("--data", data, "card", "show")
    assert "pk-moi" in human.out and shown["fingerprint"] in human.out


def test_card_show_json_gives_the_identity_key_a_verifier_needs(
    make_node: Callable[..., Path], accord: Accord
) -> None:
    """An independent SD-JWT verifier needs the author's public key, not only its fingerprint."""
    data = make_node("pk-moi")
    shown = accord("--data", data, "card", "show", "--json").json()
    key = b64_decode(shown["identity_key"], what="identity_key")
    assert len(key) == 32
    assert fingerprint(key) == shown["fingerprint"]


def test_peer_add_list_show_remove(pair: tuple[Path, Path, Path], accord: Accord) -> None:
    pk, cn, card = pair
    r = accord("--data", cn, "peer", "add", card, "--fingerprint", _fp(accord, pk), "--json")
    assert r.code == 0, r.err
    assert r.json()["outcome"] == "added"
    listed = accord("--data", cn, "peer", "list", "--json").json()
    assert [p["node"] for p in listed] == ["pk-moi"]
    assert listed[0]["fingerprint"] == _fp(accord, pk)
    shown = accord("--data", cn, "peer", "show", "pk-moi", "--json").json()
    assert shown["endpoint"] == "127.0.0.1:7441"
    # B05: adding the same card again is consistent and adds nothing.
    before = snapshot(cn)
    again = accord("--data", cn, "peer", "add", card, "--fingerprint", _fp(accord, pk), "--json")
    assert again.json()["outcome"] == "unchanged"
    assert snapshot(cn) == before
    assert accord("--data", cn, "peer", "remove", "pk-moi", "--yes").code == 0
    assert accord("--data", cn, "peer", "list", "--json").json() == []


def test_fingerprint_mismatch_changes_nothing(
    pair: tuple[Path, Path, Path], accord: Accord
) -> None:
    _pk, cn, card = pair
    before = snapshot(cn)
    r = accord("--data", cn, "peer", "add", card, "--fingerprint", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF")
    assert r.code == 5
    assert "fingerprint mismatch" in r.err and "next step" in r.err
    assert snapshot(cn) == before


def test_tampered_card_file_changes_nothing(pair: tuple[Path, Path, Path], accord: Accord) -> None:
    pk, cn, card = pair
    data = bytearray(card.read_bytes())
    data[len(data) // 2] ^= 0x01
    card.write_bytes(bytes(data))
    before = snapshot(cn)
    r = accord("--data", cn, "peer", "add", card, "--fingerprint", _fp(accord, pk))
    assert r.code in (2, 3)
    assert "error:" in r.err
    assert snapshot(cn) == before


def test_rotation_reaches_the_partner(
    pair: tuple[Path, Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn, card = pair
    assert accord("--data", cn, "peer", "add", card, "--fingerprint", _fp(accord, pk)).code == 0
    old_fp = _fp(accord, pk)
    r = accord("--data", pk, "keys", "rotate", "--json")
    assert r.code == 0, r.err
    assert r.json()["previous_fingerprint"] == old_fp
    new_fp = _fp(accord, pk)
    assert new_fp != old_fp
    card2 = tmp_path / "pk-moi-v2.card"
    assert accord("--data", pk, "card", "export", "--out", card2).code == 0
    upd = accord("--data", cn, "peer", "add", card2, "--json")
    assert upd.code == 0, upd.err
    assert upd.json()["outcome"] == "updated"
    assert accord("--data", cn, "peer", "show", "pk-moi", "--json").json()["fingerprint"] == new_fp
    # The rotated node still opens (the key file matches its latest card) and can rotate again.
    assert accord("--data", pk, "keys", "rotate", "--encryption", "--json").code == 0


def test_existing_node_is_never_overwritten(make_node: Callable[..., Path], accord: Accord) -> None:
    data = make_node("pk-moi")
    before = snapshot(data)
    r = accord(
        "--data", data, "init", "--node", "pk-moi", "--name", "Again", "--endpoint", "127.0.0.1:1"
    )
    assert r.code == 7
    assert "already holds an Accord node" in r.err
    assert snapshot(data) == before


def test_wrong_passphrase_changes_nothing(
    make_node: Callable[..., Path], accord: Accord, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_node("pk-moi")
    before = snapshot(data)
    monkeypatch.setenv("ACCORD_PASSPHRASE", "definitely wrong")
    r = accord("--data", data, "keys", "rotate")
    assert r.code == 5
    assert "wrong passphrase" in r.err
    assert snapshot(data) == before


def test_missing_key_file(make_node: Callable[..., Path], accord: Accord) -> None:
    data = make_node("pk-moi")
    (data / "keys" / "secrets.key").unlink()
    before = snapshot(data)
    r = accord("--data", data, "keys", "rotate")
    assert r.code == 5 and "missing" in r.err
    assert snapshot(data) == before


def test_loose_key_file_permissions(make_node: Callable[..., Path], accord: Accord) -> None:
    data = make_node("pk-moi")
    os.chmod(data / "keys" / "secrets.key", 0o644)
    before = snapshot(data)
    r = accord("--data", data, "keys", "rotate")
    assert r.code == 5 and "loose permissions" in r.err and "chmod 600" in r.err
    assert snapshot(data) == before


def test_no_node_in_data_dir(tmp_path: Path, accord: Accord) -> None:
    r = accord("--data", tmp_path / "nothing", "card", "show")
    assert r.code == 7 and "no Accord node" in r.err
    assert not (tmp_path / "nothing").exists()


HOSTILE_IDS = [
    "../x",
    "/abs",
    "pk\x00moi",
    "a" * 10_000,
    "pk-m\u043ei",  # Cyrillic small o (U+043E): a confusable
    "PK-MOI",
    "-pk",
    "pk-",
    "p",
    "pk moi",
    "pk/moi",
    "pk-moi\n",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=[repr(b)[:20] for b in HOSTILE_IDS])
@pytest.mark.threat("B02")
def test_b02_hostile_node_ids_are_rejected(tmp_path: Path, accord: Accord, bad: str) -> None:
    data = tmp_path / "node"
    r = accord("--data", data, "init", "--node", bad, "--name", "X", "--endpoint", "127.0.0.1:7441")
    assert r.code == 2
    assert "not a valid node id" in r.err
    assert not data.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--name", "Bad\u202eName", "bidirectional"),
        ("--name", "x" * 10_000, "limit"),
        ("--endpoint", "127.0.0.1", "HOST:PORT"),
        ("--endpoint", "host/../x:80", "HOST:PORT"),
        ("--endpoint", "127.0.0.1:99999", "HOST:PORT"),
    ],
)
@pytest.mark.threat("B02")
def test_b02_hostile_names_and_endpoints(
    tmp_path: Path, accord: Accord, flag: str, value: str, message: str
) -> None:
    args = {"--node": "pk-moi", "--name": "Pakistan MoI", "--endpoint": "127.0.0.1:7441"}
    args[flag] = value
    data = tmp_path / "node"
    r = accord("--data", data, "init", *[x for kv in args.items() for x in kv])
    assert r.code == 2 and message in r.err
    assert not data.exists()


def test_revoke(pair: tuple[Path, Path, Path], accord: Accord) -> None:
    pk, cn, card = pair
    assert accord("--data", cn, "peer", "add", card, "--fingerprint", _fp(accord, pk)).code == 0
    r = accord(
        "--data",
        cn,
        "peer",
        "revoke",
        "pk-moi",
        "--from",
        "2026-01-01T00:00:00Z",
        "--yes",
        "--json",
    )
    assert r.code == 0, r.err
    shown = accord("--data", cn, "peer", "show", "pk-moi", "--json").json()
    assert shown["status"] == "revoked" and shown["revoked_from"] == "2026-01-01T00:00:00Z"


@pytest.mark.threat("I05")
def test_corrupt_database_refuses_to_start(make_node: Callable[..., Path], accord: Accord) -> None:
    data = make_node("pk-moi")
    db = data / "node.db"
    for extra in ("node.db-wal", "node.db-shm"):
        (data / extra).unlink(missing_ok=True)
    blob = bytearray(db.read_bytes())
    blob[100:4096] = b"\xff" * (4096 - 100)
    db.write_bytes(bytes(blob))
    r = accord("--data", data, "card", "show")
    assert r.code == 6
    assert "corrupt" in r.err or "integrity" in r.err


def test_init_that_fails_half_way_leaves_nothing(
    tmp_path: Path, accord: Accord, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exchange.errors import StoreError
    from node.store import Store

    def broken_open(*_a: object, **_k: object) -> None:
        raise StoreError("disk full while writing node.db", code="store.disk_full")

    monkeypatch.setattr(Store, "open", broken_open)
    data = tmp_path / "pk-moi"
    r = accord(
        "--data", data, "init", "--node", "pk-moi", "--name", "PK", "--endpoint", "127.0.0.1:7441"
    )
    assert r.code == 6 and "disk full" in r.err
    assert not data.exists()
    monkeypatch.undo()
    monkeypatch.setenv("ACCORD_PASSPHRASE", "test passphrase for accord")
    again = accord(
        "--data", data, "init", "--node", "pk-moi", "--name", "PK", "--endpoint", "127.0.0.1:7441"
    )
    assert again.code == 0, again.err


def test_keys_list_and_revoke_an_old_key(make_node: Callable[..., Path], accord: Accord) -> None:
    pk = make_node("pk-moi")
    first = _fp(accord, pk)
    assert accord("--data", pk, "keys", "rotate", "--encryption").code == 0
    assert accord("--data", pk, "keys", "rotate").code == 0
    keys = accord("--data", pk, "keys", "list", "--json").json()
    assert [
        (k["fingerprint"], k["first_version"], k["last_version"], k["current"]) for k in keys
    ] == [
        (first, 1, 2, False),
        (_fp(accord, pk), 3, 3, True),
    ]
    r = accord(
        "--data",
        pk,
        "keys",
        "revoke",
        first,
        "--from",
        "2026-11-20T00:00:00Z",
        "--reason",
        "retired",
        "--yes",
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json() == {
        "fingerprint": first,
        "revoked_from": "2026-11-20T00:00:00Z",
        "reason": "retired",
        "issued_at": r.json()["issued_at"],
        "new": True,
        "blocked_envelopes": 0,
    }
    table = accord("--data", pk, "keys", "list")
    assert "revoked from 2026-11-20T00:00:00Z (retired)" in table.out and "current" in table.out
    # A key is revoked once: the first statement stands, nothing new is logged.
    before = snapshot(pk)
    again = accord("--data", pk, "keys", "revoke", first, "--yes")
    assert again.code == 0 and "already revoked" in again.out
    assert snapshot(pk) == before
    events = accord("--data", pk, "log", "show", "--json").json()["entries"]
    kinds = [e["kind"] for e in events]
    assert kinds.count("key.rotated") == 2 and kinds.count("key.revoked") == 1
    revoked = next(e for e in events if e["kind"] == "key.revoked")
    assert revoked["fingerprint"] == first and revoked["current"] is False
    assert accord("--data", pk, "audit", "export", "--out", pk.parent / "b.audit").code == 0
    anchor = f"pk-moi={_fp(accord, pk)}"
    assert accord("audit", "verify", pk.parent / "b.audit", "--fingerprint", anchor).code == 0


def test_keys_revoke_refusals_change_nothing(
    make_node: Callable[..., Path], accord: Accord
) -> None:
    pk = make_node("pk-moi")
    before = snapshot(pk)
    r = accord("--data", pk, "keys", "revoke", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF", "--yes")
    assert r.code != 0 and "no identity key of this node has that fingerprint" in r.err
    assert "accord keys list" in r.err
    r = accord("--data", pk, "keys", "revoke", _fp(accord, pk), "--from", "soon", "--yes")
    assert r.code != 0 and "--from" in r.err
    r = accord("--data", pk, "keys", "revoke", _fp(accord, pk), "--reason", "bored", "--yes")
    assert r.code == 2
    assert snapshot(pk) == before
