"""``accord agreement terminate``: one party signs an end, the other verifies and records it.

Both nodes then hold no agreement in force with each other from the given time on, so
nothing is released or accepted under it. Forged, misaddressed and back-dated statements
are refused with nothing stored."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from exchange.canonical import b64, b64_decode
from exchange.termination import Termination, sign_termination
from exchange.times import format_time
from node import clock
from node.home import Node
from node.services.agreements import current_agreement
from tests.conftest import PASSPHRASE, Result, agree, exchange_cards, snapshot

Accord = Callable[..., Result]


@pytest.fixture
def agreed(make_node: Callable[..., Path], accord: Accord, tmp_path: Path) -> tuple[Path, Path]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    agree(accord, pk, cn, tmp_path)
    return pk, cn


def _in_force(data: Path, peer: str, at_offset: timedelta = timedelta(0)) -> bool:
    node = Node.open(data, lambda: PASSPHRASE)
    try:
        return current_agreement(node, peer, clock.now() + at_offset) is not None
    finally:
        node.close()


def _terminate(accord: Accord, pk: Path, out: Path, *extra: str) -> Result:
    return accord(
        "--data", pk, "agreement", "terminate", "--peer", "cn-mps", "--reason", "replaced",
        "--out", out, "--yes", "--json", *extra,
    )  # fmt: skip


def test_either_party_ends_the_agreement_and_the_other_records_it(
    agreed: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = agreed
    assert _in_force(pk, "cn-mps") and _in_force(cn, "pk-moi")
    end = tmp_path / "end.json"
    r = _terminate(accord, pk, end)
    assert r.code == 0, r.err
    assert end.stat().st_mode & 0o777 == 0o600 and r.json()["reason"] == "replaced"
    assert not _in_force(pk, "cn-mps")  # our side stops at once
    assert _in_force(cn, "pk-moi")  # the partner has not recorded it yet
    got = accord("--data", cn, "agreement", "terminate", "--file", end, "--json")
    assert got.code == 0, got.err
    assert got.json()["recorded"] is True and got.json()["by"] == "pk-moi"
    assert not _in_force(cn, "pk-moi")
    # Recording the same file again adds nothing (docs/THREATS.md B05).
    before = snapshot(cn)
    again = accord("--data", cn, "agreement", "terminate", "--file", end, "--json")
    assert again.code == 0 and again.json()["recorded"] is False
    assert snapshot(cn) == before
    kinds = [e["kind"] for e in accord("--data", cn, "log", "show", "--json").json()["entries"]]
    assert kinds.count("agreement.terminated") == 1


def test_a_termination_takes_effect_at_its_time(
    agreed: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, _cn = agreed
    later = format_time(clock.now() + timedelta(hours=1))
    r = _terminate(accord, pk, tmp_path / "end.json", "--at", later)
    assert r.code == 0, r.err
    assert _in_force(pk, "cn-mps")
    assert not _in_force(pk, "cn-mps", timedelta(hours=1, minutes=1))


def test_an_end_cannot_be_back_dated(
    agreed: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, _cn = agreed
    before = snapshot(pk)
    earlier = format_time(clock.now() - timedelta(days=1))
    r = _terminate(accord, pk, tmp_path / "end.json", "--at", earlier)
    assert r.code != 0 and "back-dated" in r.err
    assert snapshot(pk) == before and not (tmp_path / "end.json").exists()


def _forged(end: Path, edit: Callable[[dict[str, object]], None]) -> bytes:
    doc = json.loads(end.read_bytes())
    statement = json.loads(b64_decode(doc["statement"], what="statement"))
    edit(statement)
    from exchange.canonical import canonical_json

    doc["statement"] = b64(canonical_json(statement))
    return canonical_json(doc)


@pytest.mark.parametrize(
    ("name", "edit", "code"),
    [
        ("later-end", lambda s: s.update(effective_at="2099-01-01T00:00:00Z"), "peer.bad_signature"),
        ("other-agreement", lambda s: s.update(agreement="sha256:" + "ab" * 32), "peer.bad_signature"),
        ("addressed-elsewhere", lambda s: s.update(peer="de-bka"), "agreement.bad_termination"),
        ("unknown-reason", lambda s: s.update(reason="whim"), "agreement.bad_termination"),
    ],
)  # fmt: skip
def test_a_forged_or_misaddressed_termination_changes_nothing(
    agreed: tuple[Path, Path],
    accord: Accord,
    tmp_path: Path,
    name: str,
    edit: Callable[[dict[str, object]], None],
    code: str,
) -> None:
    pk, cn = agreed
    end = tmp_path / "end.json"
    assert _terminate(accord, pk, end).code == 0
    forged = tmp_path / f"{name}.json"
    forged.write_bytes(_forged(end, edit))
    before = snapshot(cn)
    r = accord("--data", cn, "agreement", "terminate", "--file", forged)
    assert (r.code == 3 and "agreement.bad_termination" in r.err) or "peer." in r.err, r.err
    assert snapshot(cn) == before and _in_force(cn, "pk-moi")


def test_a_signed_termination_of_an_agreement_we_do_not_hold_changes_nothing(
    agreed: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    """Signed by the partner's real key, but for an agreement between us that never was."""
    pk, cn = agreed
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        statement = Termination(
            agreement="sha256:" + "cd" * 32, by="pk-moi", peer="cn-mps",
            effective_at=format_time(clock.now()), reason="ended",
            issued_at=format_time(clock.now()),
        )  # fmt: skip
        data = sign_termination(statement, node.keyring().identity_signer()).to_bytes()
    finally:
        node.close()
    file = tmp_path / "unknown.json"
    file.write_bytes(data)
    before = snapshot(cn)
    r = accord("--data", cn, "agreement", "terminate", "--file", file)
    assert r.code == 3 and "code: agreement.bad_termination" in r.err, r.err
    assert snapshot(cn) == before and _in_force(cn, "pk-moi")
