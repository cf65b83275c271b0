"""Acceptance: two real `accord serve` processes on loopback with real
certificates. A report submitted at pk-moi is stored at cn-mps with exactly the fields
its policy released, verifiable with the issuer key; both logs hold matching events and
each other's cosignatures; the audit bundles verify and reconcile."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exchange.sdjwt import PresentationLimits, verify_presentation
from tests.builders import ALERT, MARKER
from tests.conftest import Result, agree, audit_anchors
from tests.integration.conftest import ServerProcess, inbox_count, serving_with_one_report, until

Accord = Callable[..., Result]


def test_report_flows_from_pk_moi_to_cn_mps(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    procs = [servers(pk), servers(cn)]
    for p in procs:
        p.wait_ready()
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    sent = accord("--data", pk, "report", "submit", report, "--json")
    assert sent.code == 0, sent.err
    [release] = sent.json()["releases"]
    assert release["peer"] == "cn-mps" and release["seq"] == 1
    released = set(release["released"])
    assert released == {"title", "threat_type", "severity", "region", "time_window"}

    def received() -> object:
        r = accord("--data", cn, "inbox", "list", "--json")
        return r.json() if r.code == 0 else None

    [item] = until("the report at cn-mps", received, procs)
    assert set(item["fields"]) == released
    shown = accord("--data", cn, "inbox", "show", item["envelope_id"], "--json").json()
    assert set(shown["fields"]) == released
    assert set(shown["derived"]) == {"location", "site"}
    assert shown["derived"]["location"] == {"lat": 25.1, "lon": 62.3}
    # The SD-JWT verifies under pk-moi's identity key alone and shows exactly those fields.
    presentation = accord(
        "--data", cn, "inbox", "export", item["envelope_id"], "--format", "sd-jwt"
    ).out.strip()
    card = accord("--data", pk, "card", "show", "--json").json()
    from exchange.card import verify_chain_bytes

    key = verify_chain_bytes((tmp_path / "pk-moi.card").read_bytes()).latest.identity_key
    assert card["fingerprint"]
    assert (
        set(verify_presentation(presentation, key, limits=PresentationLimits()).fields) == released
    )
    assert MARKER not in presentation

    # The receipt came back; both logs cosigned by the other side.
    def acknowledged() -> object:
        s = accord("--data", pk, "sync", "status", "--json").json()
        return s[0]["acknowledged_seq"] == 1 and s[0]["backlog"] == 0

    until("the receipt at pk-moi", acknowledged, procs)

    def cosigned_both() -> object:
        a = accord("--data", pk, "log", "checkpoint", "--json").json()
        b = accord("--data", cn, "log", "checkpoint", "--json").json()
        return "cn-mps" in a["cosigned_by"] and "pk-moi" in b["cosigned_by"]

    until("cosignatures on both logs", cosigned_both, procs)
    for p in procs:
        assert p.terminate() == 0
    bundles = []
    anchors = audit_anchors(accord, pk, cn)
    for data in (pk, cn):
        out = tmp_path / f"{data.name}.bundle"
        assert accord("--data", data, "audit", "export", "--out", out).code == 0
        verified = accord("audit", "verify", out, *anchors, "--json")
        assert verified.code == 0, verified.out
        assert verified.json()["cosigned_checkpoints"] >= 1
        bundles.append(out)
    reconciled = accord("audit", "reconcile", *bundles, *anchors, "--json")
    assert reconciled.code == 0, reconciled.out
    assert reconciled.json()["matched"] == 1
    pk_kinds = accord("--data", pk, "log", "show", "--json").json()["entries"]
    cn_kinds = accord("--data", cn, "log", "show", "--json").json()["entries"]
    [decided] = [e for e in pk_kinds if e["kind"] == "release.decided"]
    [arrived] = [e for e in cn_kinds if e["kind"] == "envelope.received"]
    assert decided["envelope_id"] == arrived["envelope_id"]
    assert decided["envelope_digest"] == arrived["envelope_digest"]
    assert sorted(decided["released"]) == arrived["fields"]
    for entry in pk_kinds + cn_kinds:
        assert MARKER not in json.dumps(entry)


def test_identity_rotation_reaches_the_partner_over_grpc(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    """pk-moi rotates its identity key between two reports. cn-mps learns the new card
    with GetCard (accepted only because the old key signed it) and keeps receiving."""
    pk, cn = partners
    pk_server, cn_server, report = serving_with_one_report(accord, servers, pk, cn, tmp_path)

    old_fp = accord("--data", cn, "peer", "show", "pk-moi", "--json").json()["fingerprint"]
    # While it serves (ADR 0017): through the Officer socket, no restart.
    assert accord("--data", pk, "keys", "rotate").code == 0
    assert accord("--data", pk, "report", "submit", report).code == 0
    until(
        "the report signed by the new key",
        lambda: inbox_count(accord, cn) == 2,
        [pk_server, cn_server],
    )
    new_fp = accord("--data", cn, "peer", "show", "pk-moi", "--json").json()["fingerprint"]
    assert new_fp != old_fp
    assert new_fp == accord("--data", pk, "card", "show", "--json").json()["fingerprint"]
    entries = accord("--data", cn, "log", "show", "--json").json()["entries"]
    assert [e["card_version"] for e in entries if e["kind"] == "peer.updated"] == [2]


def test_signed_revocation_reaches_the_partner_over_grpc(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    """While both nodes serve, pk-moi revokes its current identity key (a theft). cn-mps
    learns the signed statement with GetCard (pk-moi ends the followed Pull so the partner
    re-opens within a heartbeat), marks pk-moi revoked and stops pulling from it."""
    pk, cn = partners
    pk_server, cn_server, report = serving_with_one_report(accord, servers, pk, cn, tmp_path)

    def peer() -> Any:
        r = accord("--data", cn, "peer", "show", "pk-moi", "--json")
        # Once in a loaded full run this printed nothing; say why if it happens again.
        assert r.code == 0 and r.out, f"peer show -> {r.code}: {r.err[-800:]}"
        return r.json()

    fp = accord("--data", pk, "card", "show", "--json").json()["fingerprint"]
    r = accord("--data", pk, "keys", "revoke", fp, "--yes", "--json")
    assert r.code == 0, r.err
    until("the revocation at cn-mps", lambda: peer()["status"] == "revoked", [pk_server, cn_server])
    shown = peer()
    assert list(shown["revoked_keys"]) == [fp]
    entries = accord("--data", cn, "log", "show", "--json").json()["entries"]
    [event] = [e for e in entries if e["kind"] == "peer.revoked"]
    assert event["revoked_key"] == fp and event["source"] == "statement"
    # Nothing sealed after the revocation reaches cn-mps.
    assert accord("--data", pk, "report", "submit", report).code == 0
    time.sleep(2)
    assert inbox_count(accord, cn) == 1
    assert accord("--data", cn, "audit", "export", "--out", tmp_path / "cn.audit").code == 0
    anchors = audit_anchors(accord, cn, pk)
    assert accord("audit", "verify", tmp_path / "cn.audit", *anchors).code == 0
