"""The ``accord`` command line. Each command group lives in its own module and is
registered on the root group; errors are caught in exactly one place (``run``).

Exit codes: 0 success; 1 unexpected Accord error; 2 bad input or usage; 3 partner data
refused; 4 policy; 5 keys or trust store; 6 database; 7 configuration; 8 transport;
130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from exchange.errors import AccordError
from node.cli import commands as _commands  # noqa: F401  (importing registers the commands)
from node.cli.base import cli
from node.cli.output import print_error


def run(argv: Sequence[str]) -> int:
    """Run one CLI invocation and return its exit code."""
    try:
        # Without standalone mode click returns the code of a ctx.exit() / Exit(n).
        result = cli.main(args=list(argv), prog_name="accord", standalone_mode=False)
    except AccordError as e:
        print_error(e)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except Exception as e:  # the one place an unexpected error becomes a clean message
        if os.environ.get("ACCORD_DEBUG"):
            raise
        print_error(
            AccordError(
                f"internal error ({type(e).__name__}); nothing further was changed",
                code="internal",
                next_step="Run again with ACCORD_DEBUG=1 for a traceback and report it.",
            )
        )
        return 1
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
