"""docs/THREATS.md B03: partner-supplied text printed in a terminal (escape sequences, ``\\r``,
bidi controls) is shown escaped. One row per kind of hostile character; every path the CLI
prints through (tables, key/value views, messages, warnings, errors) is checked. The live
path (a partner's report in ``accord inbox show``) is in
tests/integration/test_report_new.py."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from exchange.errors import PeerDataError
from node.cli import output

HOSTILE = [
    # (attack, text, what must appear instead)
    ("B03-csi-colour", "ok\x1b[31mred", "\\u001b"),
    ("B03-osc-title", "x\x1b]0;pwned\x07y", "\\u001b"),
    ("B03-c1-csi", "a\x9b2Jb", "\\u009b"),
    ("B03-carriage-return", "fine\rEVIL", "\\u000d"),
    ("B03-backspace", "ab\x08\x08XY", "\\u0008"),
    ("B03-bidi-override", "invoice\u202egpj.exe", "\\u202e"),
    ("B03-bidi-isolate", "\u2066admin\u2069", "\\u2066"),
    ("B03-zero-width", "pk\u200b-moi", "\\u200b"),
    ("B03-line-separator", "one\u2028two", "\\u2028"),
    ("B03-nul", "a\x00b", "\\u0000"),
]
RAW = ["\x1b", "\x9b", "\r", "\x08", "\u202e", "\u2066", "\u200b", "\u2028", "\x00", "\x07"]


@pytest.mark.parametrize(("attack", "text", "shown"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_safe_escapes(attack: str, text: str, shown: str) -> None:
    out = output.safe(text)
    assert shown in out
    assert not any(ch in out for ch in RAW), attack


def test_safe_keeps_ordinary_text() -> None:
    for text in ("Gwadar port", "俾路支省", "بلوچستان", "tab\tseparated", "Ünïcödé 25.1°"):
        assert output.safe(text) == text


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Capture what the CLI's consoles print, as a colour terminal would receive it."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, highlight=False)
    monkeypatch.setattr(output, "stdout", console)
    monkeypatch.setattr(output, "stderr", console)
    return buf


def _no_raw(text: str) -> None:
    # Rich's own styling uses ESC sequences; strip those, then nothing hostile may remain.
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert not any(ch in plain for ch in RAW), repr(plain)


@pytest.mark.parametrize(("attack", "text", "shown"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_every_printer_escapes(screen: io.StringIO, attack: str, text: str, shown: str) -> None:
    output.print_table("from " + text, ["partner", "name"], [(text, text)])
    output.print_fields([("title", text), ("region", text)])
    output.say(f"Received from {text}")
    output.ok(text)
    output.warn(text)
    output.print_error(PeerDataError(f"refused {text}", next_step=f"ask {text}"))
    printed = screen.getvalue()
    assert shown in printed
    _no_raw(printed)


def test_json_output_is_ascii(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_json({"title": "x\u202ey\r\x1b"})
    out = capsys.readouterr().out
    assert json.loads(out) == {"title": "x\u202ey\r\x1b"}
    assert not any(ch in out for ch in RAW)


def test_partner_text_is_not_rich_markup(screen: io.StringIO) -> None:
    """B03: square brackets from a partner are shown, never interpreted as styles or links."""
    text = "[link=https://evil.example]click[/link] [blink]x[/blink]"
    output.print_table(text, ["a"], [(text,)])
    output.print_fields([("title", text)])
    output.say(text)
    printed = screen.getvalue()
    assert printed.count("[link=https://evil.example]") == 4
    assert "\x1b]8;" not in printed  # no terminal hyperlink was emitted
