"""Two real serving nodes: a critical threat alert runs the receiving node's ``on_critical``
command once with the listed keys only, ``accord inbox watch`` started before the send
prints it, and the watcher survives a restart of the node (ADR 0021)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.services.alerts import ALERT_KEYS
from tests.builders import ALERT, MARKER
from tests.conftest import Result, agree
from tests.integration.conftest import ROOT, ServerProcess, until

pytestmark = pytest.mark.timeout(180)

HOOK = """
import sys
with open(sys.argv[1], "ab") as f:
    f.write(sys.stdin.buffer.read())
"""


def _alert(severity: str, title: str) -> dict[str, Any]:
    return {**ALERT, "fields": {**ALERT["fields"], "severity": severity, "title": title}}


def _submit(accord: Callable[..., Result], pk: Path, tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / f"{doc['fields']['title'].split()[0]}.json"
    path.write_text(json.dumps(doc), "utf-8")
    r = accord("--data", pk, "report", "submit", path)
    assert r.code == 0, r.err


class Watcher:
    def __init__(self, data: Path, tmp_path: Path, *args: str) -> None:
        self.out, self.err = tmp_path / "watch.out", tmp_path / "watch.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node", "--data", str(data), "inbox", "watch", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=ROOT,
            )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.out.read_text("utf-8").splitlines() if x.strip()]

    def said(self, text: str) -> bool:
        return text in self.err.read_text("utf-8")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.threat("W01")
def test_critical_alert_runs_on_critical_once_and_the_watch_survives_a_restart(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Callable[..., Result],
    tmp_path: Path,
) -> None:
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    hook, got = tmp_path / "hook.py", tmp_path / "on_critical.jsonl"
    hook.write_text(HOOK, "utf-8")
    config = cn / "config.toml"
    argv = json.dumps([sys.executable, str(hook), str(got)])
    config.write_text(config.read_text("utf-8") + f"\n[alerts]\non_critical = {argv}\n", "utf-8")
    pk_server, cn_server = servers(pk), servers(cn)
    procs = [pk_server, cn_server]
    for p in procs:
        p.wait_ready()
    watcher = Watcher(cn, tmp_path, "--json", "--count", "2")
    try:
        until("the watcher connected", lambda: watcher.said("watching the inbox"), procs)

        _submit(accord, pk, tmp_path, _alert("critical", "Convoy route IED threat"))
        [item] = until("the watched item", watcher.lines, procs)
        assert (item["peer"], item["kind"], item["severity"]) == ("pk-moi", "report", "critical")
        assert item["critical"] is True and item["tlp"] == "amber"
        assert item["title"] == "Convoy route IED threat"

        # (a) the command ran once, with the listed keys only and none of the withheld values.
        raw = until("the on_critical command ran", lambda: got.exists() and got.read_text(), procs)
        assert MARKER not in raw
        [sent] = [json.loads(x) for x in raw.splitlines()]
        assert sorted(sent) == sorted(ALERT_KEYS)
        received_at = sent.pop("received_at")
        assert received_at.endswith("Z")
        assert sent == {
            "event": "critical",
            "partner": "pk-moi",
            "envelope_id": item["envelope_id"],
            "report_id": item["report_id"],
            "version": 1,
            "sop": "threat-alert@1",
            "severity": "critical",
            "tlp": "amber",
            "due": None,
            "which": None,
        }

        # (c) the node restarts (killed, not stopped): the watcher reconnects and goes on.
        cn_server.kill()
        until("the watcher noticed", lambda: watcher.said("lost the node"), procs)
        cn_server.ready_file.unlink(missing_ok=True)
        cn_server.start().wait_ready()
        until("the watcher reconnected", lambda: watcher.said("reconnected"), procs)
        _submit(accord, pk, tmp_path, _alert("low", "Market rumour"))
        until("the second item", lambda: len(watcher.lines()) == 2, procs)
        assert watcher.proc.wait(30) == 0  # --count 2
        second = watcher.lines()[1]
        assert (second["severity"], second["critical"]) == ("low", False)
        time.sleep(1.0)  # a (wrong) second on_critical run would have happened by now
        assert len(got.read_text("utf-8").splitlines()) == 1
    finally:
        watcher.stop()


def test_watch_prints_lines_with_a_bell_and_exits_0_on_sigterm(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Callable[..., Result],
    tmp_path: Path,
) -> None:
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    procs = [servers(pk), servers(cn)]
    for p in procs:
        p.wait_ready()
    watcher = Watcher(cn, tmp_path)
    try:
        until("the watcher connected", lambda: watcher.said("watching the inbox"), procs)
        _submit(accord, pk, tmp_path, _alert("critical", "Port closed"))
        text = until("a line", lambda: watcher.out.read_text("utf-8"), procs)
        assert text.startswith("\a")
        assert text.count("\n") == 1 and text.endswith("\n")
        for cell in ("pk-moi", "report", "critical", "TLP:AMBER", "Port closed"):
            assert cell in text
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.proc.wait(15) == 0
    finally:
        watcher.stop()
