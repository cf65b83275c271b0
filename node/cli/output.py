"""Everything the CLI prints goes through here: tables, JSON and errors.

Text that came from a partner (names, endpoints, report fields) is escaped before it
reaches the terminal (docs/THREATS.md B03).
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from exchange.errors import AccordError

# Piped output (scripts, CI logs) gets a wide fixed width so tables never fold ids.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def safe(text: object) -> str:
    """Render untrusted text harmless for a terminal: control, format (bidi) and
    escape characters become visible ``\\u`` escapes."""
    s = str(text)
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") and ch not in ("\t",):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True) + "\n")


def print_table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    # The title is text, not rich markup, and may carry partner data: escape it too.
    shown = Text(safe(title)) if title is not None else None
    table = Table(title=shown, title_justify="left", header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(Text(safe(cell)) for cell in row))
    stdout.print(table)


def print_fields(pairs: Sequence[tuple[str, object]]) -> None:
    """A two-column key/value view of one object."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs:
        table.add_row(key, Text(safe(value)))
    stdout.print(table)


def _lines(message: str) -> str:
    """Our own multi-line messages keep their newlines; everything else is escaped."""
    return "\n".join(safe(line) for line in message.split("\n"))


def say(message: str) -> None:
    stdout.print(Text(_lines(message)))


def ok(message: str) -> None:
    stdout.print(Text("✓ ", style="green") + Text(_lines(message)))


def warn(message: str) -> None:
    stderr.print(Text("warning: ", style="yellow bold") + Text(safe(message)))


def print_error(error: AccordError) -> None:
    stderr.print(Text("error: ", style="red bold") + Text(_lines(error.message)))
    stderr.print(Text("next step: ", style="bold") + Text(_lines(error.next_step)))
    stderr.print(Text(f"code: {error.code}", style="dim"))
