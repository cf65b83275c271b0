"""Running a node: ``accord serve`` and ``accord witness serve``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from exchange.errors import ConfigError
from exchange.names import check_endpoint, check_node_id
from keys.keyfile import PASSPHRASE_ENV
from node.cli.base import CliContext, cli, examples, pass_ctx
from node.home import Node
from node.logsetup import configure_logging
from node.rpc.server import ServeOptions, run
from node.services.keywatch import WARN_DAYS


def _server_passphrase() -> str:
    """A server reads $ACCORD_PASSPHRASE; it prompts only when a person is at a terminal."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value
    if sys.stdin.isatty():
        return str(click.prompt("Passphrase for this node's keys", hide_input=True, err=True))
    raise ConfigError(
        f"no passphrase: set {PASSPHRASE_ENV} for a server without a terminal",
        next_step=f"Start the server with {PASSPHRASE_ENV} in its environment "
        "(e.g. from a systemd credential).",
    )


def _remembered(source: Callable[[], str]) -> Callable[[], str]:
    """Asked once: a server re-seals its key file on unattended rotations (ADR 0017) and
    must not prompt, or fail on a missing variable, hours after it started."""
    known: list[str] = []

    def passphrase() -> str:
        if not known:
            known.append(source())
        return known[0]

    return passphrase


def _serve(ctx: CliContext, options: ServeOptions, log_level: str) -> None:
    configure_logging("json", log_level)
    if options.listen is not None:
        check_endpoint(options.listen, field="--listen")
    node = Node.open(ctx.data_dir, _remembered(_server_passphrase))
    try:
        run(node, options)
    finally:
        node.close()


_listen = click.option(
    "--listen", default=None, help="HOST:PORT for the peer port (default: from config.toml)."
)
_ready = click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write this file (JSON: ports, socket, pid) once serving, for scripts to wait on.",
)
_log_level = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe JSON log lines written to stderr.",
)


@cli.command(
    "serve",
    epilog=examples(
        "ACCORD_PASSPHRASE=... accord --data ./pk-moi serve --ready-file /run/accord/ready"
    ),
)
@_listen
@_ready
@_log_level
@click.option("--no-cosign", is_flag=True, help="Do not ask partners to cosign our checkpoints.")
@click.option(
    "--allow-classical-tls",
    "allow_classical",
    multiple=True,
    metavar="PEER",
    help="Let this partner call over a classical TLS group (logged, shown in status).",
)
@click.option(
    "--warn-days",
    type=click.IntRange(1, 3650),
    default=WARN_DAYS,
    show_default=True,
    help="Log a key.expiry_warning when a key or agreement ends within this many days.",
)
@pass_ctx
def serve(
    ctx: CliContext,
    listen: str | None,
    ready_file: Path | None,
    log_level: str,
    no_cosign: bool,
    allow_classical: tuple[str, ...],
    warn_days: int,
) -> None:
    """Run the node: PeerExchange over mutual TLS, Officer on DATA/officer.sock.

    Runs in the foreground until SIGTERM or SIGINT, then stops gracefully. Logs are JSON
    lines on stderr. Partners are asked to cosign each new checkpoint. The peer port takes
    TLS 1.3 only, and calls only over the post-quantum hybrid group X25519MLKEM768, except
    from partners named with --allow-classical-tls. Encryption keys are renewed on their
    own (a new epoch when half of the newest one's life is left), and whatever a partner's
    exchange depends on that ends within --warn-days is logged (key.expiry_warning).
    """
    options = ServeOptions(
        listen=listen,
        ready_file=ready_file,
        cosign=not no_cosign,
        warn_days=warn_days,
        allow_classical_tls=tuple(
            check_node_id(p, field="--allow-classical-tls") for p in allow_classical
        ),
    )
    _serve(ctx, options, log_level)


@cli.group(
    epilog=examples(
        "accord --data ./witness witness serve --listen 127.0.0.1:7443 --follow pk-moi",
    )
)
def witness() -> None:
    """Run an independent witness that cosigns partners' log checkpoints."""


@witness.command(
    "serve",
    epilog=examples(
        "accord --data ./witness witness serve --listen 127.0.0.1:7443 "
        "--follow pk-moi --follow cn-mps"
    ),
)
@_listen
@click.option(
    "--follow",
    "follow",
    multiple=True,
    required=True,
    help="A trusted partner whose log this witness cosigns (repeat for several).",
)
@_ready
@_log_level
@pass_ctx
def witness_serve(
    ctx: CliContext,
    listen: str | None,
    follow: tuple[str, ...],
    ready_file: Path | None,
    log_level: str,
) -> None:
    """Serve only AddCheckpoint and GetCheckpoint, over mutual TLS, for followed logs.

    The data directory is an ordinary node ('accord init') whose trust store holds the
    cards of the logs to follow ('accord peer add').
    """
    followed = tuple(check_node_id(f, field="--follow") for f in follow)
    options = ServeOptions(
        listen=listen, ready_file=ready_file, witness_only=True, follow=followed, cosign=False
    )
    _serve(ctx, options, log_level)
