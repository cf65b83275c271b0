"""Acceptance: ``accord report new`` driven through a real pseudo-terminal, the way
an officer types it, against two running nodes. Wrong answers (an unknown severity, a
latitude of 100) are refused, naming the rule, and asked again; the explanation per
partner comes from the node; the confirmed report is sealed and reaches the partner."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import stix2
from lxml import etree

from node.services.stix import TLP2_IDS
from tests.conftest import PASSPHRASE, Result, agree
from tests.integration.conftest import ROOT, ServerProcess, until

Accord = Callable[..., Result]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
EXPECT_TIMEOUT = 30.0


class Terminal:
    """A child process on a pseudo-terminal, with a tiny expect/send."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "120"}
        env["ACCORD_PASSPHRASE"] = PASSPHRASE
        env.pop("ACCORD_HOME", None)
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, close_fds=True
        )
        os.close(slave)
        self.master = master
        self.seen = ""  # everything shown so far, ANSI removed
        self.pos = 0  # how far expect() has consumed

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.seen += ANSI.sub("", chunk.decode("utf-8", errors="replace")).replace("\r", "")
        return True

    def expect(self, pattern: str) -> str:
        """Wait until ``pattern`` (a regex) appears after the last match; return the text
        shown in between."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + EXPECT_TIMEOUT
        while True:
            match = regex.search(self.seen, self.pos)
            if match:
                between = self.seen[self.pos : match.end()]
                self.pos = match.end()
                return between
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {pattern!r}; screen:\n{self.seen[-3000:]}")
            if not self._read(0.2) and self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode} before {pattern!r}:\n{self.seen[-3000:]}"
                )

    def answer(self, prompt: str, text: str) -> str:
        shown = self.expect(prompt)
        os.write(self.master, text.encode() + b"\n")
        return shown

    def wait(self) -> int:
        deadline = time.monotonic() + EXPECT_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05):
            pass
        code = self.proc.wait(timeout=5)
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.mark.threat("B03", "B07")
def test_report_new_through_a_terminal(
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
    args = ["--data", str(pk), "report", "new", "--schema", "threat-alert@1"]
    term = Terminal(
        [sys.executable, "-m", "node", *args],
        cwd=tmp_path,
    )
    try:
        term.answer(r"tlp \[amber\]: ", "amber")
        intro = term.answer(r"\ntitle: ", "Convoy route IED threat")
        assert "One line naming the threat" in intro and "e.g. Planned attack" in intro
        assert "operational" in intro  # the label: what sharing this field means
        term.answer(r"\nthreat_type: ", "ied")
        shown = term.answer(r"\nseverity: ", "extreme")
        assert "one of: low, moderate, high, critical" in shown
        refused = term.answer(r"\nseverity: ", "high")
        assert "rule 'enum'" in refused and "Please answer again" in refused
        assert "extreme" not in refused.split("severity: ", 1)[-1]  # the value is not echoed
        term.answer(r"\nregion: ", "Balochistan")
        term.answer(r"\nsite: ", "East Bay convoy yard")
        term.answer(r"Add location\? \[y/N\]: ", "y")
        term.answer(r"\nlocation\.lat: ", "100")
        refused = term.answer(r"\nlocation\.lat: ", "25.1264")
        assert "must be <= 90 (rule 'maximum')" in refused
        term.answer(r"\nlocation\.lon: ", "62.3225")
        term.answer(r"\ntime_window\.start: ", "2026-11-26T00:00:00Z")
        term.answer(r"\ntime_window\.end: ", "2026-11-30T00:00:00Z")
        term.answer(r"\nsummary: ", "")  # optional: skipped
        term.answer(r"\nindicators\[0\]: ", "white pickup near the east gate")
        term.answer(r"\nindicators\[1\]: ", "")
        term.answer(r"\nrecommended_actions\[0\]: ", "Use the west gate")
        term.answer(r"\nrecommended_actions\[1\]: ", "")
        term.answer(r"\nsource\.kind: ", "humint")
        term.answer(r"\nsource\.reliability: ", "b")
        term.answer(r"\nsource\.credibility: ", "2")
        # The review lists every answer; the officer changes the severity (answer 4) once more.
        review = term.answer(r"Change which answer\? \(number, Enter: none\): ", "4")
        assert "Review your answers" in review and "East Bay convoy yard" in review
        term.answer(r"\nseverity: ", "critical")
        term.answer(r"Change which answer\? \(number, Enter: none\): ", "")
        explained = term.answer(r"Seal and send this report to cn-mps\? \[y/N\]: ", "y")
        # The node's explanation per partner: sent, transformed, withheld with the reason.
        assert "cn-mps would receive" in explained
        assert re.search(r"source\s.*WITHHELD", explained)
        assert re.search(r"location\s.*sent transformed\s.*round:1", explained)
        sealed = term.expect(r"sealed \(version 1\)")
        assert "report " in sealed
        assert term.wait() == 0, term.seen[-3000:]
    finally:
        term.close()
    [mine] = accord("--data", pk, "report", "list", "--json").json()
    assert mine["sop"] == "threat-alert@1" and mine["tlp"] == "amber"
    stored = accord("--data", pk, "report", "show", mine["report_id"], "--json").json()
    assert stored["fields"]["severity"] == "critical"  # as changed at the review
    assert stored["fields"]["source"]["reliability"] == "B"

    def received() -> object:
        r = accord("--data", cn, "inbox", "list", "--json")
        return r.json() if r.code == 0 else None

    [item] = until("the report at cn-mps", received, procs)
    assert item["report_id"] == mine["report_id"]
    assert "source" not in item["fields"] and "severity" in item["fields"]
    # What arrived exports as a STIX 2.1 bundle that stix2 parses strictly.
    stix = tmp_path / "alert.stix.json"
    exported = accord("--data", cn, "inbox", "export", item["envelope_id"], "--format", "stix")
    assert exported.code == 0, exported.err
    stix.write_text(exported.out)
    bundle = stix2.parse(stix.read_text(), allow_custom=False)
    [report] = [o for o in bundle.objects if o.type == "report"]
    assert report.name == "Convoy route IED threat"
    assert report.object_marking_refs == [TLP2_IDS["amber"]]
    # ... and as an OASIS CAP 1.2 Alert that the OASIS schema accepts (docs/adr/0019).
    cap = tmp_path / "alert.cap.xml"
    exported = accord(
        "--data", cn, "inbox", "export", item["envelope_id"], "--format", "cap", "--out", cap
    )
    assert exported.code == 0, exported.err
    xsd = etree.XMLSchema(etree.parse(str(ROOT / "tests" / "vectors" / "cap" / "CAP-v1.2.xsd")))
    doc = etree.parse(str(cap))
    assert xsd.validate(doc), xsd.error_log
    ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert doc.findtext("cap:info/cap:severity", namespaces=ns) == "Extreme"  # critical
    assert doc.findtext("cap:scope", namespaces=ns) == "Restricted"
    _exports_are_private_files(accord, cn, item["envelope_id"], tmp_path)
    _partner_text_is_shown_escaped(accord, pk, cn, tmp_path, procs)
    for p in procs:
        assert p.terminate() == 0


def _exports_are_private_files(accord: Accord, cn: Path, envelope_id: str, tmp_path: Path) -> None:
    """docs/THREATS.md B07 on the live path: decrypted partner data goes to a 0600 file, never
    over an existing file without --force, never through a link planted where it goes."""
    out = tmp_path / "exports" / "item.json"
    out.parent.mkdir()
    old = os.umask(0o022)
    try:
        assert accord("--data", cn, "inbox", "export", envelope_id, "--out", out).code == 0
        assert out.stat().st_mode & 0o777 == 0o600
        first = out.read_bytes()
        again = accord(
            "--data", cn, "inbox", "export", envelope_id, "--format", "stix", "--out", out
        )
        assert again.code != 0 and "exists" in again.err and out.read_bytes() == first
        elsewhere = tmp_path / "exports" / "planted-target"
        link = tmp_path / "exports" / "link.json"
        link.symlink_to(elsewhere)  # dangling: the export must not create its target
        refused = accord("--data", cn, "inbox", "export", envelope_id, "--out", link)
        assert refused.code != 0 and not elsewhere.exists() and link.is_symlink()
        forced = accord("--data", cn, "inbox", "export", envelope_id, "--out", link, "--force")
        assert forced.code == 0, forced.err
        assert not elsewhere.exists() and not link.is_symlink()  # the link was replaced
        assert link.stat().st_mode & 0o777 == 0o600 and link.read_bytes() == first
    finally:
        os.umask(old)


def _partner_text_is_shown_escaped(
    accord: Accord, pk: Path, cn: Path, tmp_path: Path, procs: list[ServerProcess]
) -> None:
    """docs/THREATS.md B03 on the live path: what pk-moi wrote reaches cn-mps's officer escaped.
    (Escape sequences are already refused by both nodes' validation; carriage returns, bidi
    controls, zero-width and line-separator characters are valid text that must not act.)"""
    hostile = {
        "sop": "threat-alert@1",
        "tlp": "green",
        "fields": {
            "title": "Alert \u202etxt.exe\u202c for the camp",
            "threat_type": "cyber",
            "severity": "low",
            "region": "Gwadar\rFAKE REGION\u2028pk\u200b-moi",
            "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
            "source": {"kind": "osint", "reliability": "C", "credibility": 3},
        },
    }
    file = tmp_path / "hostile.json"
    file.write_text(json.dumps(hostile))
    sent = accord("--data", pk, "report", "submit", file, "--json")
    assert sent.code == 0, sent.err
    report_id = sent.json()["report_id"]

    def arrived() -> object:
        items = accord("--data", cn, "inbox", "list", "--json").json()
        return [i for i in items if i["report_id"] == report_id]

    [item] = until("the hostile report at cn-mps", arrived, procs)
    raw = ("\u202e", "\u202c", "\r", "\u2028", "\u200b")
    for args in (
        ("inbox", "show", item["envelope_id"]),
        ("inbox", "show", item["envelope_id"], "--json"),
        ("inbox", "list"),
        ("inbox", "export", item["envelope_id"], "--format", "json"),
        ("inbox", "export", item["envelope_id"], "--format", "stix"),
        ("inbox", "export", item["envelope_id"], "--format", "cap"),
    ):
        shown = accord("--data", cn, *args)
        assert shown.code == 0, shown.err
        assert not any(ch in shown.out for ch in raw), (args, shown.out)
    table = accord("--data", cn, "inbox", "show", item["envelope_id"]).out
    assert "\\u202etxt.exe" in table and "Gwadar\\u000dFAKE" in table


def test_report_new_declined_sends_nothing_and_exits_130(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    """The officer sees the explanation and answers no: nothing is sealed, stored or
    logged, and the exit status says the confirmation was refused (130), as everywhere."""
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    procs = [servers(pk), servers(cn)]
    for p in procs:
        p.wait_ready()
    entries = len(accord("--data", pk, "log", "show", "--json").json()["entries"])
    args = ["--data", str(pk), "report", "new", "--schema", "threat-alert@1"]
    term = Terminal([sys.executable, "-m", "node", *args], cwd=tmp_path)
    try:
        for prompt, text in [
            (r"tlp \[amber\]: ", "green"),
            (r"\ntitle: ", "Checkpoint closure"),
            (r"\nthreat_type: ", "other"),
            (r"\nseverity: ", "low"),
            (r"\nregion: ", "Sindh"),
            (r"\nsite: ", ""),
            (r"Add location\? \[y/N\]: ", "n"),
            (r"\ntime_window\.start: ", "2026-11-26T00:00:00Z"),
            (r"\ntime_window\.end: ", "2026-11-27T00:00:00Z"),
            (r"\nsummary: ", ""),
            (r"\nindicators\[0\]: ", ""),
            (r"\nrecommended_actions\[0\]: ", ""),
            (r"\nsource\.kind: ", "osint"),
            (r"\nsource\.reliability: ", "c"),
            (r"\nsource\.credibility: ", "3"),
            (r"Change which answer\? \(number, Enter: none\): ", ""),
            (r"Seal and send this report to cn-mps\? \[y/N\]: ", "n"),
            (r"Save the report to a file, to submit it later\? \[Y/n\]: ", "n"),
        ]:
            term.answer(prompt, text)
        assert term.wait() == 130, term.seen[-3000:]
    finally:
        term.close()
    assert "Not sent; nothing was stored." in term.seen
    assert accord("--data", pk, "report", "list", "--json").json() == []
    after = accord("--data", pk, "log", "show", "--json").json()["entries"]
    # Only the partner's cosignatures of our checkpoints arrive meanwhile.
    assert {e["kind"] for e in after[entries:]} <= {"checkpoint.cosigned"}
    for p in procs:
        assert p.terminate() == 0
