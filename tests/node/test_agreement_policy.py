"""Agreements and release policies at the node, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from exchange.events import parse_event_unverified
from node.home import Node
from tests.builders import ALERT, MARKER
from tests.conftest import PASSPHRASE, POLICY, Result, exchange_cards, propose, snapshot

ROOT = Path(__file__).resolve().parents[2]
Accord = Callable[..., Result]


@pytest.fixture
def partners(make_node: Callable[..., Path], accord: Accord, tmp_path: Path) -> tuple[Path, Path]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    return pk, cn


def _kinds(data: Path) -> list[str]:
    node = Node.open(data, lambda: PASSPHRASE)
    try:
        return [parse_event_unverified(e).kind for _i, e in node.log.leaves(0, 10_000)]
    finally:
        node.close()


def _agree(accord: Accord, pk: Path, cn: Path, tmp_path: Path) -> Path:
    file = propose(accord, pk, tmp_path)
    r = accord("--data", cn, "agreement", "sign", file, "--yes", "--json")
    assert r.code == 0, r.err
    assert r.json()["stored"] is True
    r = accord("--data", pk, "agreement", "sign", file, "--yes", "--json")
    assert r.json()["stored"] is True
    return file


def test_nothing_flows_without_an_agreement(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, _cn = partners
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    r = accord("--data", pk, "policy", "explain", "--peer", "cn-mps", report, "--json")
    assert r.code == 0, r.err
    outcomes = {f["field"]: (f["outcome"], f["detail"]) for f in r.json()["fields"]}
    assert all(o == ("withheld", "no-agreement") for o in outcomes.values()), outcomes
    assert r.json()["releases_anything"] is False


def test_agreement_signed_by_both_and_logged_on_both_sides(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    _agree(accord, pk, cn, tmp_path)
    for side, peer in ((pk, "cn-mps"), (cn, "pk-moi")):
        shown = accord("--data", side, "agreement", "show", "--peer", peer, "--json").json()
        assert sorted(shown["signed_by"]) == ["cn-mps", "pk-moi"]
        assert _kinds(side).count("agreement.signed") == 1
    digests = {
        accord("--data", d, "agreement", "list", "--json").json()[0]["digest"] for d in (pk, cn)
    }
    assert len(digests) == 1
    # Signing again (or importing twice) adds nothing.
    before = snapshot(cn)
    assert accord("--data", cn, "agreement", "sign", tmp_path / "agreement.json", "--yes").code == 0
    assert snapshot(cn) == before


def test_tampered_agreement_is_refused_and_nothing_is_stored(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    file = propose(accord, pk, tmp_path)
    doc = json.loads(file.read_bytes())
    import base64

    inner = json.loads(base64.b64decode(doc["agreement"]))
    inner["ceiling"][0]["tlp_max"] = "red"  # widen the ceiling after pk-moi signed
    from exchange.canonical import canonical_json

    doc["agreement"] = base64.b64encode(canonical_json(inner)).decode()
    file.write_text(json.dumps(doc))
    before = snapshot(cn)
    r = accord("--data", cn, "agreement", "sign", file, "--yes")
    assert r.code == 3 and "signature" in r.err
    assert snapshot(cn) == before


def test_policy_check_names_the_offending_key_and_line(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    _agree(accord, pk, cn, tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        POLICY.read_text().replace(
            'release = ["recommended_actions"]', 'release = ["recomended_actions"]'
        )
    )
    before = snapshot(pk)
    r = accord("--data", pk, "policy", "check", bad, "--json")
    assert r.code == 4
    problem = r.json()["problems"][0]
    assert "recomended_actions" in problem["key"] + problem["rule"] and problem["line"]
    human = accord("--data", pk, "policy", "apply", bad)
    assert human.code == 4 and "recomended_actions" in human.out + human.err
    assert snapshot(pk) == before


def test_policy_above_the_ceiling_is_refused(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    _agree(accord, pk, cn, tmp_path)
    wide = tmp_path / "wide.toml"
    wide.write_text(
        POLICY.read_text()
        .replace(
            'withhold_labels = ["sensitive-source"]', 'release_labels = ["sensitive-source"]', 1
        )
        .replace('release_labels = ["public", "operational"]', "", 1)
    )
    r = accord("--data", pk, "policy", "check", wide, "--json")
    assert r.code == 4
    assert any(p["code"] == "policy.above_ceiling" for p in r.json()["problems"])


def test_explain_shows_every_field_and_never_leaks_into_the_log(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    pk, cn = partners
    _agree(accord, pk, cn, tmp_path)
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    assert "policy.changed" in _kinds(pk)
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    r = accord("--data", pk, "policy", "explain", "--peer", "cn-mps", report, "--json")
    outcomes = {f["field"]: (f["outcome"], f["detail"]) for f in r.json()["fields"]}
    assert outcomes["source"] == ("withheld", "withheld-label")
    assert outcomes["location"] == ("transformed", "round:1")
    assert outcomes["site"] == ("transformed", "pseudonym")
    assert outcomes["indicators"] == ("withheld", "not-in-policy")
    assert outcomes["recommended_actions"] == ("withheld", "reciprocity")
    assert outcomes["title"] == ("released", "")
    human = accord("--data", pk, "policy", "explain", "--peer", "cn-mps", report)
    assert "WITHHELD" in human.out and "withhold wins" in human.out and "round:1" in human.out
    # Explaining stores nothing and logs nothing.
    db = b"".join(p.read_bytes() for p in pk.glob("node.db*"))
    assert MARKER.encode() not in db


def test_a_policy_edited_by_hand_is_refused_until_applied(
    partners: tuple[Path, Path], accord: Accord, tmp_path: Path
) -> None:
    """A release policy changes only through 'policy apply', which logs it: an edited
    policy.toml releases nothing and changes nothing until it is applied."""
    pk, cn = partners
    _agree(accord, pk, cn, tmp_path)
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    # Comments and layout are not rules: re-applying them logs nothing new.
    commented = tmp_path / "commented.toml"
    commented.write_text("# reviewed 2026-11-25\n" + POLICY.read_text())
    kinds = _kinds(pk)
    assert accord("--data", pk, "policy", "apply", commented).code == 0
    assert _kinds(pk) == kinds
    # An insider widens the policy in the file, bypassing the CLI.
    active = pk / "policy.toml"
    active.write_text(
        active.read_text().replace('withhold_labels = ["sensitive-source"]', "withhold_labels = []")
    )
    before = snapshot(pk)
    r = accord("--data", pk, "policy", "explain", "--peer", "cn-mps", report)
    assert r.code == 4 and "policy.unlogged" in r.err and "policy apply" in r.err
    assert snapshot(pk) == before
    # Applying it logs the change (previous digest = the one in force), and it works again.
    assert accord("--data", pk, "policy", "apply", active).code == 0
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        changes = [
            e
            for e in (parse_event_unverified(d) for _i, d in node.log.leaves(0, 10_000))
            if e.kind == "policy.changed"
        ]
    finally:
        node.close()
    assert len(changes) == 2
    assert changes[1].attrs["previous_digest"] == changes[0].attrs["policy_digest"]
    assert accord("--data", pk, "policy", "explain", "--peer", "cn-mps", report).code == 0


def test_migration_recovers_the_logged_policy_digest(
    partners: tuple[Path, Path], accord: Accord
) -> None:
    """Nodes made before the digest was kept learn it from their log (migration 12)."""
    import sqlite3

    pk, _cn = partners
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    conn = sqlite3.connect(pk / "node.db")
    [(digest,)] = conn.execute("SELECT value FROM meta WHERE key = 'policy.digest'").fetchall()
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'policy.digest'")
        # As a node made before migration 12: later migrations undone too.
        conn.execute("DELETE FROM _migrations WHERE version >= 12")
        conn.execute("DROP INDEX outbox_by_state")
        conn.execute("DROP INDEX log_leaves_by_kind")  # migration 16
        conn.execute("DROP INDEX evidence_by_seq")  # migration 17
        conn.execute("DROP INDEX evidence_by_time")
        conn.execute("DROP TABLE evidence_suppressed")
        conn.execute("ALTER TABLE evidence DROP COLUMN repeats")
        conn.execute("ALTER TABLE log_leaves DROP COLUMN tag")  # migration 14
        conn.execute("DROP TABLE witness_state")  # migration 15: back to keyed by origin
        conn.execute(
            "CREATE TABLE witness_state (origin TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " root BLOB NOT NULL, note BLOB NOT NULL, updated_at TEXT NOT NULL, grown_at TEXT)"
        )
        conn.execute("ALTER TABLE witness_evidence DROP COLUMN partner")
    conn.close()
    assert accord("--data", pk, "status", "--json").code in (0, 8)  # opens, migrates
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        assert node.store.get_meta("policy.digest") == digest
    finally:
        node.close()
