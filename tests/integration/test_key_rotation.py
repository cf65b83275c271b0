"""Two real `accord serve` processes: expiry warnings in status and the serve log, and a
whole-identity rotation (`keys rotate --all`) of a serving node with no restart
(docs/adr/0017-unattended-keys-and-whole-identity-rotation.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from exchange.card import Card, verify_chain_bytes
from tests.builders import ALERT
from tests.conftest import Result, agree, audit_anchors
from tests.integration.conftest import ServerProcess, inbox_count, until

Accord = Callable[..., Result]


def _card(accord: Accord, data: Path, out: Path) -> Card:
    assert accord("--data", data, "card", "export", "--out", out, "--force").code == 0
    return verify_chain_bytes(out.read_bytes()).latest


def test_rotate_all_while_serving_keeps_the_exchange_and_both_audits(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    # The auditor's anchors, checked out of band before anything rotated.
    anchors = audit_anchors(accord, pk, cn)
    old = _card(accord, pk, tmp_path / "pk-old.card")
    procs = [servers(pk, "serve", "--warn-days", "400"), servers(cn)]
    for p in procs:
        p.wait_ready()

    # Status warns, per partner, about what ends within the window; nothing by default.
    shown = accord("--data", cn, "status", "--warn-days", "400", "--json")
    assert shown.code == 0, shown.err
    [peer] = shown.json()["peers"]
    subjects = {w["subject"] for w in peer["expiry_warnings"]}
    assert subjects == {"our_encryption_key", "their_encryption_key", "agreement"}
    text = accord("--data", cn, "status", "--warn-days", "400")
    assert "pk-moi: their encryption key expires in" in text.err
    assert "pk-moi: the agreement expires in" in text.err
    [peer] = accord("--data", cn, "status", "--json").json()["peers"]
    assert peer["expiry_warnings"] == []
    line = until(
        "the expiry warning in pk-moi's serve log",
        lambda: next(
            (
                json.loads(x)
                for x in procs[0].logs().splitlines()
                if '"key.expiry_warning"' in x and '"agreement"' in x
            ),
            None,
        ),
        procs,
    )
    assert line["peer"] == "cn-mps" and line["days_left"] >= 364

    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    assert accord("--data", pk, "report", "submit", report).code == 0
    until("the first report", lambda: inbox_count(accord, cn) == 1, procs)

    # A stolen host: every key of pk-moi replaced while it serves.
    rotated = accord("--data", pk, "keys", "rotate", "--all", "--json")
    assert rotated.code == 0, rotated.err
    assert rotated.json()["rotated"] == ["identity", "encryption", "tls", "log", "witness"]
    new = _card(accord, pk, tmp_path / "pk-new.card")
    assert new.version == old.version + 1
    assert new.tls_ca_pem != old.tls_ca_pem
    assert new.log_vkey != old.log_vkey
    assert new.witness_vkey != old.witness_vkey
    assert new.identity_key != old.identity_key
    assert new.log_vkey.split("+")[0] == old.log_vkey.split("+")[0] == "pk-moi.accord/log"

    # Partners keep syncing: cn-mps takes the new card over GetCard (TLS under the old CA
    # until then), reports sealed under the new keys arrive, receipts come back.
    assert accord("--data", pk, "report", "submit", report).code == 0
    until("the report after the rotation", lambda: inbox_count(accord, cn) == 2, procs)
    until(
        "cn-mps holds the new card",
        lambda: (
            accord("--data", cn, "peer", "show", "pk-moi", "--json").json()["fingerprint"]
            == new.fingerprint
        ),
        procs,
    )
    until(
        "the receipt at pk-moi",
        lambda: accord("--data", pk, "sync", "status", "--json").json()[0]["backlog"] == 0,
        procs,
    )
    rotated_at = accord("--data", pk, "log", "checkpoint", "--json").json()["size"]

    def cosigned_after_rotation() -> bool:
        a = accord("--data", pk, "log", "checkpoint", "--json").json()
        b = accord("--data", cn, "log", "checkpoint", "--json").json()
        return (
            a["size"] >= rotated_at
            and "cn-mps" in a["cosigned_by"]
            and "pk-moi" in b["cosigned_by"]
        )

    until("both logs cosigned after the rotation", cosigned_after_rotation, procs)
    for p in procs:
        assert p.terminate() == 0

    for data in (pk, cn):
        out = tmp_path / f"{data.name}.bundle"
        assert accord("--data", data, "audit", "export", "--out", out).code == 0
        verified = accord("audit", "verify", out, *anchors, "--json")
        assert verified.code == 0, verified.out
    entries = accord("--data", pk, "log", "show", "--json").json()["entries"]
    kinds = [e["key"] for e in entries if e["kind"] == "key.rotated"]
    assert kinds == ["identity", "encryption", "tls", "log", "witness"]
