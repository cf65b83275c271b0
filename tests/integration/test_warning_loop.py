"""The warning loop between two real serving nodes, driven only through the CLI as the
two liaison officers would (ADR 0022): a critical alert with a short acknowledge rule,
DUE, an officer's acknowledgement seen by the originator with officer and time, a second
alert left alone that goes OVERDUE on both sides with one ``ack.overdue``, a reply with
the measures taken, and the procedure in ``audit reconcile`` (one breach, deadlines met)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.builders import CRITICAL_ALERT, REPLY_POLICY, loop_terms
from tests.conftest import POLICY, TERMS, Result, audit_anchors
from tests.integration.conftest import ServerProcess, until

Accord = Callable[..., Result]


def _loop_agreement(accord: Accord, pk: Path, cn: Path, tmp_path: Path) -> None:
    terms = tmp_path / "terms.toml"
    terms.write_text(loop_terms(TERMS.read_text(), acknowledge="PT4S", respond="PT1H"))
    file = tmp_path / "agreement.json"
    r = accord(
        "--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", terms, "--out", file
    )
    assert r.code == 0, r.err
    for side in (cn, pk):
        assert accord("--data", side, "agreement", "sign", file, "--yes").code == 0
    shown = accord("--data", pk, "agreement", "show", "--file", file, "--json")
    assert shown.code == 0, shown.err
    assert "PT4S" in shown.out  # the rule is part of what both signed
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    policy = tmp_path / "reply-policy.toml"
    policy.write_text(REPLY_POLICY)
    assert accord("--data", cn, "policy", "apply", policy).code == 0


def _events(accord: Accord, data: Path, kind: str) -> list[dict[str, Any]]:
    entries = accord("--data", data, "log", "show", "--json", "--limit", "10000").json()
    assert isinstance(entries, dict)
    return [e for e in entries["entries"] if e["kind"] == kind]


@pytest.mark.threat("W01")
def test_acknowledge_reply_and_overdue_between_two_serving_nodes(
    accord: Accord,
    servers: Callable[..., ServerProcess],
    partners: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    pk, cn = partners
    _loop_agreement(accord, pk, cn, tmp_path)
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + '\\n')"
    for data in (pk, cn):  # the operator's escalation command: one JSON object on stdin
        record = tmp_path / f"{data.name}-overdue.jsonl"
        with (data / "config.toml").open("a") as config:
            config.write(
                f"\n[alerts]\non_overdue = {json.dumps([sys.executable, '-c', script, str(record)])}\n"
            )
    procs = [servers(pk), servers(cn)]
    for p in procs:
        p.wait_ready()
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(CRITICAL_ALERT))

    first = accord("--data", pk, "report", "submit", alert, "--json")
    assert first.code == 0, first.err
    report_id = first.json()["report_id"]

    def listed() -> list[dict[str, Any]]:
        r = accord("--data", cn, "inbox", "list", "--json")
        return r.json() if r.code == 0 else []

    [item] = until("the alert at cn-mps", listed, procs)
    assert item["due"] == "DUE" and item["unread"] is True
    acked = accord(
        "--data", cn, "inbox", "ack", item["envelope_id"][:13], "--status", "accepted",
        "--officer", "amina", "--json",
    )  # fmt: skip
    assert acked.code == 0, acked.err
    assert acked.json()["status"] == "accepted"

    def ack_at_origin() -> list[dict[str, Any]]:
        shown = accord("--data", pk, "report", "show", report_id, "--json").json()
        return shown["acknowledgements"]  # type: ignore[no-any-return]

    [ack] = until("the acknowledgement at pk-moi", ack_at_origin, procs)
    assert (ack["status"], ack["officer"], ack["direction"]) == ("accepted", "amina", "received")
    assert ack["acked_at"]

    # The second alert nobody acknowledges: OVERDUE on both sides, logged once.
    second = accord("--data", pk, "report", "submit", alert, "--json")
    assert second.code == 0, second.err
    second_id = second.json()["report_id"]

    def overdue_at_cn() -> object:
        return [i for i in listed() if i["report_id"] == second_id and i["due"] == "OVERDUE"]

    until("OVERDUE at cn-mps", overdue_at_cn, procs)

    def overdue_at_pk() -> object:
        rows = accord("--data", pk, "report", "list", "--json").json()
        assert isinstance(rows, list)
        return [r for r in rows if r["report_id"] == second_id and
                r["loop"]["cn-mps"]["due"] == "OVERDUE"]  # fmt: skip

    until("OVERDUE at pk-moi", overdue_at_pk, procs)
    until("ack.overdue at cn-mps", lambda: _events(accord, cn, "ack.overdue"), procs)
    status = accord("--data", cn, "status", "--json").json()
    assert isinstance(status, dict)
    assert [p["our_overdue"] for p in status["peers"]] == [1]

    # A reply with the measures taken reaches the originator's thread.
    measures = tmp_path / "measures.toml"
    measures.write_text(
        'status = "measures-taken"\ntitle = "Convoy moves suspended"\n'
        'measures_taken = ["Road moves suspended", "Escort requested"]\n'
    )
    replied = accord("--data", cn, "report", "reply", item["envelope_id"], measures, "--json")
    assert replied.code == 0, replied.err

    def reply_at_origin() -> list[dict[str, Any]]:
        shown = accord("--data", pk, "report", "show", report_id, "--json").json()
        return shown["replies"]  # type: ignore[no-any-return]

    [answer] = until("the reply at pk-moi", reply_at_origin, procs)
    assert answer["report_id"] == replied.json()["report_id"]

    def recorded(record: Path) -> Callable[[], object]:
        return lambda: record.exists() and record.read_text()

    for data in (pk, cn):
        until(
            f"on_overdue at {data.name}", recorded(tmp_path / f"{data.name}-overdue.jsonl"), procs
        )
    assert len(_events(accord, cn, "ack.overdue")) == 1  # still once
    assert len(_events(accord, pk, "ack.overdue")) == 1
    for p in procs:
        assert p.terminate() == 0
    for data in (pk, cn):  # the on_overdue command ran once on each side, ids and times only
        lines = (tmp_path / f"{data.name}-overdue.jsonl").read_text().splitlines()
        [ran] = [json.loads(line) for line in lines]
        assert (ran["event"], ran["report_id"], ran["which"]) == (
            "overdue",
            second_id,
            "acknowledge",
        )
        assert ran["severity"] == "critical" and ran["tlp"] == "amber" and ran["due"]
        assert "Critical convoy" not in lines[0] and "Convoy yard" not in lines[0]

    anchors = audit_anchors(accord, pk, cn)
    bundles = []
    for data in (pk, cn):
        out = tmp_path / f"{data.name}.bundle"
        assert accord("--data", data, "audit", "export", "--out", out).code == 0
        bundles.append(out)
    reconciled = accord("audit", "reconcile", *bundles, *anchors, "--json")
    assert reconciled.code == 0, reconciled.out
    steps = reconciled.json()["procedure"]
    assert steps["breaches"] == 1  # the second alert's acknowledgement
    assert steps["met"] == 2  # the first alert: acknowledged and answered in time
