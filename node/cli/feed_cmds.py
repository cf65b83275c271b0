"""The TAXII 2.1 feed for domestic agencies: ``accord feed serve`` and its consumers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from exchange.names import check_endpoint
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.node_cmds import opened
from node.cli.output import ok, print_json, print_table, say, warn
from node.cli.serve_cmds import _server_passphrase
from node.home import Node
from node.logsetup import configure_logging
from node.services.feed import (
    CONSUMER_CLASSES,
    add_consumer,
    list_consumers,
    revoke_consumer,
    serve_feed,
)
from node.store.feed import Consumer


@cli.group(
    epilog=examples(
        "ACCORD_PASSPHRASE=... accord --data ./cn-mps feed serve --listen 0.0.0.0:9443",
        "accord --data ./cn-mps feed consumer add ctd-misp --class counter-terrorism "
        "--out ./ctd-misp --basic",
    )
)
def feed() -> None:
    """A read-only TAXII 2.1 feed of what partners sent, for MISP and OpenCTI."""


@feed.command(
    "serve",
    epilog=examples(
        "ACCORD_PASSPHRASE=... accord --data ./cn-mps feed serve --listen 0.0.0.0:9443",
        "accord --data ./cn-mps feed serve --listen 127.0.0.1:0 --ready-file feed.json",
    ),
)
@click.option("--listen", required=True, help="HOST:PORT to serve HTTPS on (port 0: any).")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write this file (JSON: feed_port) once serving, for scripts to wait on.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe JSON log lines written to stderr.",
)
@pass_ctx
def feed_serve(ctx: CliContext, listen: str, ready_file: Path | None, log_level: str) -> None:
    """Serve TAXII 2.1 over HTTPS (the node's CA) until SIGTERM or SIGINT.

    Discovery is at https://HOST:PORT/taxii2/, one collection per partner. Consumers
    authenticate with their client certificate or HTTP Basic secret; each sees what the
    agreements' onward rules allow its class, never TLP:RED.
    """
    configure_logging("json", log_level)
    check_endpoint(listen[:-2] + ":1" if listen.endswith(":0") else listen, field="--listen")
    node = Node.open(ctx.data_dir, _server_passphrase)
    try:
        serve_feed(node, listen, clock.now, ready_file)
    finally:
        node.close()


@feed.group(
    epilog=examples(
        "accord --data ./cn-mps feed consumer add ctd-opencti --class counter-terrorism "
        "--out ./ctd-opencti",
        "accord --data ./cn-mps feed consumer list",
    )
)
def consumer() -> None:
    """Domestic agencies that read the feed, each with its own credentials."""


def _consumer_json(c: Consumer) -> dict[str, Any]:
    return {
        "name": c.name,
        "class": c.recipient_class,
        "collections": list(c.collections) or "all partners",
        "own_organisation": c.own_organisation,
        "cert_fingerprint": c.cert_fingerprint,
        "basic": c.basic_hash is not None,
        "created_at": c.created_at,
        "revoked_at": c.revoked_at,
    }


@consumer.command(
    "add",
    epilog=examples(
        "accord --data ./cn-mps feed consumer add ctd-misp --class counter-terrorism "
        "--out ./ctd-misp --basic",
        "accord --data ./cn-mps feed consumer add soc --class cert --collections pk-moi "
        "--own-organisation --out ./soc",
    ),
)
@click.argument("name")
@click.option(
    "--class",
    "recipient_class",
    required=True,
    type=click.Choice(CONSUMER_CLASSES),
    help="The consumer's class of domestic recipient, as the onward rules name it.",
)
@click.option(
    "--collections",
    default="",
    help="Comma-separated partner ids it may read (default: every partner).",
)
@click.option(
    "--own-organisation",
    is_flag=True,
    help="Part of this node's own organisation: may read TLP:AMBER+STRICT.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for client.pem, client.key (0600), ca.pem (and basic.txt).",
)
@click.option("--basic", is_flag=True, help="Also issue an HTTP Basic secret (shown once).")
@json_option
@pass_ctx
def consumer_add(
    ctx: CliContext,
    name: str,
    recipient_class: str,
    collections: str,
    own_organisation: bool,
    out: Path,
    basic: bool,
    as_json: bool,
) -> None:
    """Issue a consumer's client certificate from the node's CA (and a Basic secret)."""
    with opened(ctx) as node:
        issued = add_consumer(
            node,
            name,
            recipient_class=recipient_class,
            collections=[c.strip() for c in collections.split(",") if c.strip()],
            own_organisation=own_organisation,
            out=out,
            basic=basic,
            now=clock.now(),
        )
    if as_json:
        print_json(
            {
                **_consumer_json(issued.consumer),
                "out": str(out),
                "basic_secret": issued.basic_secret,
            }
        )
        return
    ok(f"consumer {name} ({recipient_class}) added; credentials in {out}")
    say(f"client certificate {out / 'client.pem'}, key {out / 'client.key'}, CA {out / 'ca.pem'}")
    if issued.basic_secret is not None:
        say(f"HTTP Basic user: {name}  password: {issued.basic_secret}")
        warn("the password is shown once (also in basic.txt, 0600); only its hash is kept")


@consumer.command("list", epilog=examples("accord --data ./cn-mps feed consumer list --json"))
@json_option
@pass_ctx
def consumer_list(ctx: CliContext, as_json: bool) -> None:
    """List the feed's consumers, their class, collections and state."""
    with opened(ctx) as node:
        consumers = list_consumers(node)
    if as_json:
        print_json([_consumer_json(c) for c in consumers])
        return
    print_table(
        f"{len(consumers)} feed consumer(s)",
        ["name", "class", "collections", "own org", "basic", "state"],
        [
            (
                c.name,
                c.recipient_class,
                ", ".join(c.collections) or "all",
                "yes" if c.own_organisation else "no",
                "yes" if c.basic_hash else "no",
                f"revoked {c.revoked_at}" if c.revoked_at else "active",
            )
            for c in consumers
        ],
    )


@consumer.command("revoke", epilog=examples("accord --data ./cn-mps feed consumer revoke ctd-misp"))
@click.argument("name")
@json_option
@pass_ctx
def consumer_revoke(ctx: CliContext, name: str, as_json: bool) -> None:
    """Revoke a consumer: refused from its next request on."""
    with opened(ctx) as node:
        revoked = revoke_consumer(node, name, clock.now())
    if as_json:
        print_json(_consumer_json(revoked))
        return
    ok(f"consumer {name} revoked at {revoked.revoked_at}")
