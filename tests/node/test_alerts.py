"""Escalation commands (node/services/alerts.py, ADR 0021) with real subprocesses: a small Python
script is the command; what it read on stdin is written to a file and checked key by key."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import ConfigError, InputError
from node.cli.watch_cmds import _exec_argv, _handle, _line, _Watch
from node.config import AlertsConfig, NodeConfig
from node.home import Node
from node.logsetup import configure_logging
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_service import ExchangeOfficerService
from node.services import outbox
from node.services.alerts import ALERT_KEYS, AlertRunner, alert_payload, run_command
from node.services.inbox import BatchOutcome, apply_batch, cursor, inbox_last_row
from tests.builders import ALERT, MARKER, valid_report
from tests.conftest import snapshot

SCRIPT = """
import sys, time
data = sys.stdin.buffer.read()
out, mode = sys.argv[1], sys.argv[2]
if mode == "sleep":
    time.sleep(60)
with open(out, "ab") as f:
    f.write(data)
sys.exit(3 if mode == "fail" else 0)
"""

PAYLOAD: dict[str, Any] = {
    "partner": "pk-moi",
    "envelope_id": "0193f2c5-0000-7000-8000-000000000001",
    "report_id": "0193f2c4-0000-7000-8000-000000000002",
    "version": 2,
    "sop": "threat-alert@1",
    "severity": "critical",
    "tlp": "amber",
    "received_at": "2026-11-26T10:00:00Z",
    "due": "2026-11-26T10:15:00Z",
}


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "hook.py"
    path.write_text(SCRIPT, "utf-8")
    return path


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    yield out
    configure_logging("json", "warning", stream=io.StringIO())


def _events(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _runner(script: Path, out: Path, mode: str, timeout: float = 10.0) -> AlertRunner:
    argv = (sys.executable, str(script), str(out), mode)
    return AlertRunner(AlertsConfig(on_critical=argv, on_overdue=argv, timeout=timeout))


def test_success_gets_exactly_the_listed_keys_and_is_logged_as_ran(
    script: Path, tmp_path: Path, logs: io.StringIO
) -> None:
    out = tmp_path / "stdin.json"
    result = asyncio.run(_runner(script, out, "ok").fire("critical", PAYLOAD))
    assert result is not None and result.ok and result.exit_code == 0
    got = json.loads(out.read_text("utf-8"))
    assert got == {**PAYLOAD, "event": "critical", "which": None}
    assert sorted(got) == sorted(ALERT_KEYS)
    [ran] = [e for e in _events(logs) if e["event"].startswith("alert.")]
    assert ran["event"] == "alert.command_ran" and ran["kind"] == "critical"


@pytest.mark.threat("W01")
def test_no_field_beyond_the_listed_keys_reaches_the_command_or_the_log(
    script: Path, tmp_path: Path, logs: io.StringIO
) -> None:
    out = tmp_path / "stdin.json"
    leaky = {
        **PAYLOAD,
        "title": f"IED threat {MARKER}",
        "site": f"Convoy yard {MARKER}",
        "fields": {"site": MARKER},
        "severity": ["critical", MARKER],  # not a scalar: dropped, not stringified
        "tlp": MARKER * 40,  # longer than any id or name: dropped
        "which": "acknowledge",  # only for overdue
    }
    asyncio.run(_runner(script, out, "ok").fire("critical", leaky))
    raw = out.read_text("utf-8")
    assert MARKER not in raw
    got = json.loads(raw)
    assert sorted(got) == sorted(ALERT_KEYS)
    assert got["severity"] is None and got["tlp"] is None and got["which"] is None
    assert MARKER not in logs.getvalue()
    dropped = [e for e in _events(logs) if e["event"] == "alert.payload_keys_dropped"]
    assert dropped and dropped[0]["fields"] == ["fields", "site", "title"]


def test_overdue_keeps_which(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "stdin.json"
    payload = {**PAYLOAD, "which": "respond"}
    asyncio.run(_runner(script, out, "ok").fire("overdue", payload))
    assert json.loads(out.read_text("utf-8")) == {**payload, "event": "overdue"}


def test_non_zero_exit_is_logged_with_the_code_never_raised(
    script: Path, tmp_path: Path, logs: io.StringIO
) -> None:
    out = tmp_path / "stdin.json"
    result = asyncio.run(_runner(script, out, "fail").fire("critical", PAYLOAD))
    assert result is not None and not result.ok
    assert (result.reason, result.exit_code) == ("exit", 3)
    [failed] = [e for e in _events(logs) if e["event"].startswith("alert.")]
    assert failed["event"] == "alert.command_failed"
    assert (failed["kind"], failed["reason"], failed["exit_code"]) == ("critical", "exit", 3)
    assert "pk-moi" not in json.dumps(failed)  # nothing of the stdin


def test_timeout_kills_the_process_group_and_the_loop_keeps_running(
    script: Path, tmp_path: Path, logs: io.StringIO
) -> None:
    out = tmp_path / "stdin.json"
    ticks = 0

    async def main() -> Any:
        nonlocal ticks
        runner = _runner(script, out, "sleep", timeout=1.0)
        task = asyncio.create_task(runner.fire("critical", PAYLOAD))
        while not task.done():  # the event loop is not blocked while the command runs
            ticks += 1
            await asyncio.sleep(0.05)
        return task.result()

    started = time.monotonic()
    result = asyncio.run(main())
    assert time.monotonic() - started < 10
    assert result is not None and result.reason == "timeout" and result.exit_code is None
    assert ticks > 5
    assert not out.exists()  # killed before it wrote anything
    [failed] = [e for e in _events(logs) if e["event"].startswith("alert.")]
    assert (failed["event"], failed["reason"]) == ("alert.command_failed", "timeout")


def test_missing_executable_is_logged(tmp_path: Path, logs: io.StringIO) -> None:
    config = AlertsConfig(on_critical=(str(tmp_path / "no-such-program"),))
    result = asyncio.run(AlertRunner(config).fire("critical", PAYLOAD))
    assert result is not None and result.reason == "not_found"
    [failed] = [e for e in _events(logs) if e["event"].startswith("alert.")]
    assert (failed["event"], failed["reason"]) == ("alert.command_failed", "not_found")


def test_fire_soon_and_drain(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "stdin.json"

    async def main() -> None:
        runner = _runner(script, out, "ok")
        runner.fire_soon("critical", PAYLOAD)
        runner.fire_soon("critical", {**PAYLOAD, "version": 3})
        assert runner.pending == 2
        await runner.drain()
        assert runner.pending == 0

    asyncio.run(main())
    lines = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    assert sorted(x["version"] for x in lines) == [2, 3]


def test_no_command_configured_runs_nothing() -> None:
    assert asyncio.run(AlertRunner(AlertsConfig()).fire("critical", PAYLOAD)) is None


def test_unknown_event_is_refused_by_the_payload_builder() -> None:
    with pytest.raises(ValueError, match="unknown alert event"):
        alert_payload("title", PAYLOAD)


def test_run_command_is_usable_without_a_loop(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "stdin.json"
    result = run_command((sys.executable, str(script), str(out), "ok"), b'{"a": 1}\n', 5.0)
    assert result.ok and out.read_bytes() == b'{"a": 1}\n'


# -- config.toml [alerts] ----------------------------------------------------------------------

BASE = '[node]\nid = "cn-mps"\nname = "CN MPS"\nendpoint = "127.0.0.1:7442"\n'


def _load(tmp_path: Path, extra: str) -> NodeConfig:
    (tmp_path / "config.toml").write_text(BASE + extra, "utf-8")
    return NodeConfig.load(tmp_path)


def test_config_without_alerts_keeps_working(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.alerts == AlertsConfig()
    assert "alerts" not in config.to_toml()


def test_config_argv_and_shlex_string(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        '[alerts]\non_critical = ["/usr/bin/page", "--to", "duty officer"]\n'
        "on_overdue = \"/usr/bin/page --to 'desk 2'\"\ntimeout = 30\n",
    )
    assert config.alerts.on_critical == ("/usr/bin/page", "--to", "duty officer")
    assert config.alerts.on_overdue == ("/usr/bin/page", "--to", "desk 2")
    assert config.alerts.timeout == 30.0
    (tmp_path / "config.toml").write_text(config.to_toml(), "utf-8")
    assert NodeConfig.load(tmp_path) == config  # written back as it was read


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[alerts]\ntimeout = 0\n", "alerts.timeout"),
        ("[alerts]\ntimeout = 301\n", "alerts.timeout"),
        ('[alerts]\ntimeout = "10"\n', "alerts.timeout"),
        ("[alerts]\non_critical = 5\n", "alerts.on_critical"),
        ("[alerts]\non_critical = []\n", "alerts.on_critical"),
        ('[alerts]\non_overdue = ["ok", 1]\n', "alerts.on_overdue"),
        ('[alerts]\non_overdue = "unclosed \'quote"\n', "alerts.on_overdue"),
        ('[alerts]\non_criticl = ["x"]\n', "alerts.on_criticl"),
    ],
)
def test_invalid_alerts_settings_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as e:
        _load(tmp_path, extra)
    assert e.value.code == "config.alerts"


def test_alerts_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('alerts = "x"\n' + BASE, "utf-8")
    with pytest.raises(ConfigError, match="config alerts: must be a table"):
        NodeConfig.load(tmp_path)


# -- in a node: the batch outcome, a command changes nothing, the watch stream ---------------


def _alert(severity: str, title: str = "Convoy threat") -> dict[str, Any]:
    return {**ALERT, "fields": {**ALERT["fields"], "severity": severity, "title": title}}


def _send(pk: Node, cn: Node, *severities: str) -> BatchOutcome:
    now = datetime.now(UTC).replace(microsecond=0)
    outbox.submit(pk, [valid_report(_alert(s, f"t-{i}")) for i, s in enumerate(severities)], now)
    after = cursor(cn, "pk-moi")
    return apply_batch(cn, "pk-moi", outbox.pending(pk, "cn-mps", after, 256), now)


def test_batch_outcome_lists_applied_items_with_the_disclosed_severity(
    pair: tuple[Node, Node],
) -> None:
    pk, cn = pair
    outcome = _send(pk, cn, "low", "critical")
    assert [(i.kind, i.severity, i.peer, i.sop, i.tlp) for i in outcome.items] == [
        ("report", "low", "pk-moi", "threat-alert@1", "amber"),
        ("report", "critical", "pk-moi", "threat-alert@1", "amber"),
    ]
    envelopes = outbox.pending(pk, "cn-mps", 0, 256)
    now = datetime.now(UTC).replace(microsecond=0)
    again = apply_batch(cn, "pk-moi", envelopes, now)  # replays: nothing to fire for
    assert again.duplicates == 2 and again.items == []


@pytest.mark.threat("W01")
def test_a_failing_or_succeeding_command_changes_nothing_stored_or_logged(
    pair: tuple[Node, Node], script: Path, tmp_path: Path
) -> None:
    pk, cn = pair
    outcome = _send(pk, cn, "critical")
    before = snapshot(cn.data_dir)
    log_size = cn.log.size()
    for mode in ("fail", "sleep", "ok"):
        out = tmp_path / f"{mode}.json"

        async def run(mode: str = mode, out: Path = out) -> None:
            runner = _runner(script, out, mode, timeout=1.0)
            runner.on_applied(outcome.items)
            assert runner.pending == 1
            await runner.drain()

        asyncio.run(run())
        assert snapshot(cn.data_dir) == before, mode
        assert cn.log.size() == log_size
    got = json.loads((tmp_path / "ok.json").read_text("utf-8"))
    assert got["severity"] == "critical" and got["envelope_id"] == outcome.items[0].envelope_id
    assert MARKER not in (tmp_path / "ok.json").read_text("utf-8")


def test_watch_stream_sends_new_rows_critical_first_and_ends_on_close(
    pair: tuple[Node, Node],
) -> None:
    pk, cn = pair
    _send(pk, cn, "high")  # stored before the watch: not sent (since_now)
    service = ExchangeOfficerService(cn, None)

    async def main() -> list[officer_pb2.InboxEvent]:
        stream = service.WatchInbox(officer_pb2.WatchInboxRequest(), None)
        first = await anext(stream)
        assert not first.HasField("item") and first.resume_after == inbox_last_row(cn)
        _send(pk, cn, "low", "critical")
        service.inbox_changed()
        events = [await anext(stream), await anext(stream)]
        service.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 5)
        return events

    critical, low = asyncio.run(main())
    assert (critical.critical, critical.item.severity, critical.item.title) == (
        True,
        "critical",
        "t-1",
    )
    assert (low.critical, low.item.severity) == (False, "low")
    assert critical.cursor > low.cursor  # reordered within the poll
    assert low.resume_after == critical.cursor  # the last event of the poll covers both
    assert critical.resume_after < low.cursor


def test_watch_resumes_after_a_cursor_and_from_start(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    _send(pk, cn, "high")
    _send(pk, cn, "low")
    service = ExchangeOfficerService(cn, None)

    async def take(request: officer_pb2.WatchInboxRequest, n: int) -> list[officer_pb2.InboxEvent]:
        stream = service.WatchInbox(request, None)
        out = [await anext(stream) for _ in range(n)]
        await stream.aclose()
        return out

    _start, a, b = asyncio.run(take(officer_pb2.WatchInboxRequest(since_now=False), 3))
    assert [a.item.severity, b.item.severity] == ["high", "low"]
    _start, again = asyncio.run(take(officer_pb2.WatchInboxRequest(after=a.cursor), 2))
    assert again.cursor == b.cursor


# -- the watch CLI's pieces: lines, --exec, resume bookkeeping ----------------------------------


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "received_at": "2026-11-26 10:00:00Z",
        "peer": "pk-moi",
        "kind": "report",
        "status": None,
        "severity": "critical",
        "tlp": "amber",
        "title": "Port \x1b[31mred",
        "envelope_id": "e-1",
        "critical": True,
    }
    return doc | over


def test_watch_line_escapes_partner_text_and_rings_only_on_critical() -> None:
    line = _line(_doc(), bell=True)
    assert line.startswith("\a") and "\x1b" not in line and "\\u001b[31mred" in line
    assert "TLP:AMBER" in line and line.endswith("e-1")
    assert not _line(_doc(), bell=False).startswith("\a")
    assert not _line(_doc(critical=False, severity="low"), bell=True).startswith("\a")
    assert "ack received" in _line(_doc(kind="ack", status="received"), bell=True)


def test_watch_exec_gets_the_json_and_a_failure_is_printed_not_raised(
    script: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exec.json"
    ok = (sys.executable, str(script), str(out), "ok")
    _handle(_doc(), True, False, ok, 5.0)
    assert json.loads(out.read_text("utf-8")) == _doc()
    assert json.loads(capsys.readouterr().out) == _doc()
    _handle(_doc(), True, False, (sys.executable, str(script), str(out), "fail"), 5.0)
    assert "--exec failed for e-1: exit 3" in capsys.readouterr().err
    _handle(_doc(), True, False, (str(tmp_path / "missing"),), 5.0)
    assert "--exec failed for e-1: not_found" in capsys.readouterr().err


def test_watch_resume_never_repeats_an_item() -> None:
    watch = _Watch(from_start=False)
    assert watch.request() == officer_pb2.WatchInboxRequest(since_now=True)
    assert not watch.fresh(officer_pb2.InboxEvent(resume_after=4))
    item = officer_pb2.InboxItem(envelope_id="e")
    # one poll of rows 5..7, reordered (7 critical first), then the stream breaks
    assert watch.fresh(officer_pb2.InboxEvent(item=item, cursor=7, resume_after=4))
    assert watch.request() == officer_pb2.WatchInboxRequest(after=4)
    # the resumed stream sends the poll again: 7 is not repeated, 5 and 6 are new
    assert not watch.fresh(officer_pb2.InboxEvent(item=item, cursor=7, resume_after=4))
    assert watch.fresh(officer_pb2.InboxEvent(item=item, cursor=5, resume_after=4))
    assert watch.fresh(officer_pb2.InboxEvent(item=item, cursor=6, resume_after=7))
    assert watch.request() == officer_pb2.WatchInboxRequest(after=7)
    assert not watch.fresh(officer_pb2.InboxEvent(item=item, cursor=6, resume_after=4))


def test_watch_exec_that_cannot_be_split_is_refused() -> None:
    with pytest.raises(InputError, match="--exec"):
        _exec_argv("notify 'unclosed")
    with pytest.raises(InputError, match="no program"):
        _exec_argv("  ")
