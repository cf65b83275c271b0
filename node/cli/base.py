"""The root ``accord`` group and the options every command shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from node.config import resolve_data_dir
from node.logsetup import configure_logging


@dataclass
class CliContext:
    data_dir: Path


pass_ctx = click.make_pass_decorator(CliContext)


def examples(*lines: str) -> str:
    """A help epilog with one example command per line.

    Click rewraps help paragraphs to the terminal width, which runs examples together or
    breaks them mid-token; a paragraph that starts with ``\\b`` is printed as written.
    """
    return "Examples:\n\n\b\n" + "\n".join("  " + line for line in lines)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=examples(
        "accord --data ./pk-moi status",
        "accord --data ./pk-moi report new --schema threat-alert@1",
        "accord audit verify pk-moi.bundle",
    ),
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The node's data directory (default: $ACCORD_HOME, else ~/.local/share/accord).",
)
@click.version_option(package_name="accord-exchange", prog_name="accord")
@click.pass_context
def cli(ctx: click.Context, data: Path | None) -> None:
    """Accord: secure bilateral intelligence sharing.

    Liaison officers write and read reports, operators run nodes, auditors verify logs.
    """
    configure_logging("console", "warning", stream=sys.stderr)
    ctx.obj = CliContext(data_dir=resolve_data_dir(data))


F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """``--json``: print machine-readable JSON instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
