"""What ``report submit`` tells the officer, per partner, on two real serving nodes: on its
way (the partner follows our outbox), queued (the partner is down), or not sent and why,
with exit 4 when nobody receives anything. The report is stored and logged in every case."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.builders import ALERT
from tests.conftest import Result, agree
from tests.integration.conftest import ServerProcess, until

Accord = Callable[..., Result]


def _submit(accord: Accord, pk: Path, tmp_path: Path, name: str) -> Result:
    report = tmp_path / f"{name}.json"
    report.write_text(json.dumps(ALERT))
    return accord("--data", pk, "report", "submit", report, "--json")


def test_submit_says_per_partner_delivering_queued_or_not_sent_and_why(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, cn = partners
    pk_server = servers(pk)
    pk_server.wait_ready()
    # No agreement yet: nothing can go; exit 4, the reason named, the report kept.
    nobody = _submit(accord, pk, tmp_path, "first")
    assert nobody.code == 4, nobody.err
    [release] = nobody.json()["releases"]
    assert release["delivery"] == "not_sent" and release["why"] == "no-agreement"
    assert "nothing was sent to any partner" in nobody.err
    listed = accord("--data", pk, "report", "list", "--json").json()
    assert [r["report_id"] for r in listed] == [nobody.json()["report_id"]]
    human = accord("--data", pk, "report", "submit", tmp_path / "first.json")
    assert human.code == 4 and "nothing sent to cn-mps" in human.err
    assert pk_server.terminate() == 0

    agree(accord, pk, cn, tmp_path)
    pk_server = servers(pk)
    pk_server.wait_ready()
    # cn-mps is down: queued, exit 0.
    queued = _submit(accord, pk, tmp_path, "second")
    assert queued.code == 0, queued.err
    [release] = queued.json()["releases"]
    assert release["delivery"] == "queued" and release["seq"] == 1
    # cn-mps comes up, takes the backlog, and then follows our outbox: the next is on its way.
    cn_server = servers(cn)
    cn_server.wait_ready()

    def received() -> object:
        r = accord("--data", cn, "inbox", "list", "--json")
        return r.code == 0 and len(r.json()) == 1

    until("the queued report at cn-mps", received, [pk_server, cn_server])

    def acknowledged() -> object:  # cn-mps took the backlog; its stream now follows ours
        status = accord("--data", pk, "sync", "status", "--json").json()
        return status[0]["acknowledged_seq"] == 1

    until("the receipt at pk-moi", acknowledged, [pk_server, cn_server])
    on_its_way = _submit(accord, pk, tmp_path, "third")
    assert on_its_way.code == 0, on_its_way.err
    assert on_its_way.json()["releases"][0]["delivery"] == "delivering"
    # report list says, per partner, where each report stands.
    by_id = {r["report_id"]: r for r in accord("--data", pk, "report", "list", "--json").json()}
    assert by_id[nobody.json()["report_id"]]["partners"] == {"cn-mps": "not_sent"}
    assert by_id[queued.json()["report_id"]]["partners"] == {"cn-mps": "delivered"}
    assert by_id[on_its_way.json()["report_id"]]["partners"]["cn-mps"] in ("queued", "delivered")
    table = accord("--data", pk, "report", "list").out
    assert "cn-mps: delivered" in table and "cn-mps: not sent" in table
    _ids_are_taken_by_unique_prefix(accord, pk, cn)
    for p in (pk_server, cn_server):
        assert p.terminate() == 0


def _ids_are_taken_by_unique_prefix(accord: Accord, pk: Path, cn: Path) -> None:
    """As git does: the first characters of an id are enough when only one id starts so."""
    [item, *_] = accord("--data", cn, "inbox", "list", "--json").json()
    full = item["envelope_id"]
    shown = accord("--data", cn, "inbox", "show", full[:13], "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["envelope_id"] == full
    reports = [r["report_id"] for r in accord("--data", pk, "report", "list", "--json").json()]
    one = reports[0]
    unique = next(one[:n] for n in range(4, 37) if sum(r.startswith(one[:n]) for r in reports) == 1)
    got = accord("--data", pk, "report", "show", unique, "--json")
    assert got.code == 0, got.err
    assert got.json()["report_id"] == one
    shared = one[: len(unique) - 1]  # a prefix of more than one of our reports
    if len(shared) >= 4 and sum(r.startswith(shared) for r in reports) > 1:
        ambiguous = accord("--data", pk, "report", "show", shared)
        assert ambiguous.code == 2 and "code: input.ambiguous_id" in ambiguous.err
    short = accord("--data", cn, "inbox", "show", full[:3])
    assert short.code == 2 and "code: input.bad_id" in short.err
    missing = accord("--data", cn, "inbox", "show", "ffffffff")
    assert missing.code == 2 and "code: inbox.unknown" in missing.err


def test_inbox_list_shows_title_and_severity_and_filters(
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
    for n, (severity, title) in enumerate(
        [("critical", "Convoy route IED threat"), ("low", "Market rumour"), ("critical", "Port")]
    ):
        report = {**ALERT, "fields": {**ALERT["fields"], "severity": severity, "title": title}}
        file = tmp_path / f"r{n}.json"
        file.write_text(json.dumps(report))
        assert accord("--data", pk, "report", "submit", file).code == 0

    def three() -> object:
        r = accord("--data", cn, "inbox", "list", "--json")
        return r.code == 0 and len(r.json()) == 3 and r.json()

    listed = until("three reports at cn-mps", three, procs)
    assert [i["title"] for i in listed] == ["Port", "Market rumour", "Convoy route IED threat"]
    assert [i["severity"] for i in listed] == ["critical", "low", "critical"]

    def titles(*args: str) -> list[str]:
        r = accord("--data", cn, "inbox", "list", *args, "--json")
        assert r.code == 0, r.err
        return [i["title"] for i in r.json()]

    assert titles("--severity", "critical") == ["Port", "Convoy route IED threat"]
    assert titles("--text", "CONVOY") == ["Convoy route IED threat"]
    assert titles("--severity", "critical", "--limit", "1", "--offset", "1") == [
        "Convoy route IED threat"
    ]
    assert titles("--sop", "travel-advisory@1") == []
    assert titles("--state", "current") == [i["title"] for i in listed]
    table = accord("--data", cn, "inbox", "list", "--severity", "low")
    assert "Market rumour" in table.out and "Port" not in table.out
    for p in procs:
        assert p.terminate() == 0
