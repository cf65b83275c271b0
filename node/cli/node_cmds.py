"""Node set-up commands: init, card, peer (keys: node/cli/keys_cmds.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from exchange.canonical import b64
from exchange.card import SUITE_HYBRID, SUITE_X25519, Card, fingerprint
from exchange.errors import InputError
from exchange.times import format_time, parse_time
from keys.keyfile import PASSPHRASE_ENV
from keys.truststore import PeerRecord
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.output import ok, print_fields, print_json, print_table, say, warn
from node.files import write_export
from node.home import Node, init_node, passphrase_from_env_or

SUITES = {"hybrid": SUITE_HYBRID, "x25519": SUITE_X25519}
MAX_CARD_FILE = 4 * 1024 * 1024


def _prompt_passphrase() -> str:
    return str(click.prompt("Passphrase for this node's keys", hide_input=True, err=True))


@contextmanager
def opened(ctx: CliContext) -> Iterator[Node]:
    node = Node.open(ctx.data_dir, passphrase_from_env_or(_prompt_passphrase))
    try:
        yield node
    finally:
        node.close()


def card_json(card: Card) -> dict[str, object]:
    return {
        "node": card.node,
        "name": card.name,
        "endpoint": card.endpoint,
        "fingerprint": card.fingerprint,
        # The Ed25519 key an SD-JWT or envelope verifier checks the author's signatures
        # with, base64 as in the card itself (docs/DESIGN.md §3); its fingerprint is above.
        "identity_key": b64(card.identity_key),
        "version": card.version,
        "issued_at": card.issued_at,
        "log_vkey": card.log_vkey,
        "witness_vkey": card.witness_vkey,
        "encryption_keys": [
            {"kid": k.kid, "suite": k.suite, "not_after": k.not_after} for k in card.encryption_keys
        ],
    }


def _card_fields(card: Card) -> list[tuple[str, object]]:
    return [
        ("node", card.node),
        ("name", card.name),
        ("endpoint", card.endpoint),
        ("fingerprint", card.fingerprint),
        ("card version", card.version),
        ("issued", card.issued_at),
        (
            "encryption",
            ", ".join(
                f"{k.kid} ({k.suite.split('/')[0]}, until {k.not_after})"
                for k in card.encryption_keys
            ),
        ),
    ]


# -- init -------------------------------------------------------------------------------


@cli.command(
    epilog=examples(
        "ACCORD_PASSPHRASE=... accord --data ./pk-moi init --node pk-moi "
        "--name 'Pakistan MoI' --endpoint 127.0.0.1:7441"
    )
)
@click.option("--node", "node_id", required=True, help="Node id, e.g. pk-moi (a-z, 0-9, '-').")
@click.option("--name", required=True, help="Human name of the agency running the node.")
@click.option("--endpoint", required=True, help="HOST:PORT partners dial to reach this node.")
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default="hybrid",
    show_default=True,
    help="HPKE suite for the first encryption key (hybrid = ML-KEM-768 + X25519).",
)
@click.option(
    "--unencrypted-keys",
    is_flag=True,
    help="DANGEROUS: store private keys without a passphrase (tests and demos only).",
)
@click.option(
    "--database",
    metavar="DSN",
    default=None,
    help="Keep the node's state in PostgreSQL at this URL or libpq keyword string "
    "(written to config.toml); without it, SQLite in the data directory.",
)
@json_option
@pass_ctx
def init(
    ctx: CliContext,
    node_id: str,
    name: str,
    endpoint: str,
    suite: str,
    unencrypted_keys: bool,
    database: str | None,
    as_json: bool,
) -> None:
    """Create a new node: keys, TLS certificates, database and signed card.

    The passphrase comes from $ACCORD_PASSPHRASE or a prompt. An existing node is never
    overwritten.
    """
    passphrase: str | None = None
    if unencrypted_keys:
        warn("private keys will be stored WITHOUT encryption (--unencrypted-keys)")
    else:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase is None:
            passphrase = str(
                click.prompt(
                    "New passphrase for this node's keys",
                    hide_input=True,
                    confirmation_prompt=True,
                    err=True,
                )
            )
    node = init_node(
        ctx.data_dir,
        node=node_id,
        name=name,
        endpoint=endpoint,
        passphrase=passphrase,
        now=clock.now(),
        suite=SUITES[suite],
        database=database,
    )
    try:
        card = node.own_chain().latest
        if as_json:
            print_json(
                {
                    **card_json(card),
                    "data_dir": str(ctx.data_dir),
                    "encrypted_keys": not unencrypted_keys,
                }
            )
            return
        ok(f"node {card.node} created in {ctx.data_dir}")
        print_fields(_card_fields(card))
        say(
            "Next: send your card to the partner ('accord card export --out FILE') "
            "and read them the fingerprint."
        )
    finally:
        node.close()


# -- card -------------------------------------------------------------------------------


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi card show",
        "accord --data ./pk-moi card export --out pk-moi.card",
    )
)
def card() -> None:
    """This node's signed card: identity, keys and endpoint for partners."""


@card.command("show", epilog=examples("accord --data ./pk-moi card show --json"))
@json_option
@pass_ctx
def card_show(ctx: CliContext, as_json: bool) -> None:
    """Show this node's current card and its fingerprint."""
    with opened(ctx) as node:
        latest = node.own_chain().latest
    if as_json:
        print_json(card_json(latest))
    else:
        print_fields(_card_fields(latest))


@card.command("export", epilog=examples("accord --data ./pk-moi card export --out pk-moi.card"))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write.",
)
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@json_option
@pass_ctx
def card_export(ctx: CliContext, out: Path, force: bool, as_json: bool) -> None:
    """Write this node's card chain (every version, signed) for a partner."""
    with opened(ctx) as node:
        chain = node.own_chain()
    write_export(out, chain.to_bytes(), force=force)
    latest = chain.latest
    if as_json:
        print_json(
            {
                "node": latest.node,
                "fingerprint": latest.fingerprint,
                "version": latest.version,
                "file": str(out),
            }
        )
        return
    ok(f"card of {latest.node} (version {latest.version}) written to {out}")
    say(f"Read this fingerprint to the partner by a trusted channel: {latest.fingerprint}")


# -- peer -------------------------------------------------------------------------------


def peer_json(record: PeerRecord, card: Card | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "node": record.node,
        "fingerprint": record.fingerprint,
        "card_version": record.card_version,
        "status": record.status,
        "revoked_from": record.revoked_from,
        "trust_on_first_use": record.tofu,
        "added_at": record.added_at,
        "updated_at": record.updated_at,
    }
    if card is not None:
        out.update({"name": card.name, "endpoint": card.endpoint})
    return out


@cli.group(
    epilog=examples(
        "accord --data ./cn-mps peer add pk-moi.card --fingerprint ABCD-EFGH-IJKL-MNOP-QRST-UVWX",
        "accord --data ./cn-mps peer list",
    )
)
def peer() -> None:
    """Partner nodes this node trusts (the trust store)."""


@peer.command(
    "add",
    epilog=examples(
        "accord --data ./cn-mps peer add pk-moi.card --fingerprint ABCD-EFGH-IJKL-MNOP-QRST-UVWX"
    ),
)
@click.argument(
    "card_file", metavar="CARD", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--fingerprint", help="The partner's fingerprint, read out by the partner.")
@click.option(
    "--trust-on-first-use",
    "tofu",
    is_flag=True,
    help="DANGEROUS: trust the card without checking a fingerprint.",
)
@json_option
@pass_ctx
def peer_add(
    ctx: CliContext, card_file: Path, fingerprint: str | None, tofu: bool, as_json: bool
) -> None:
    """Trust a partner's card after checking its signatures and fingerprint.

    Adding the same card again changes nothing; a newer card that the trusted key signed
    updates the partner.
    """
    if fingerprint is not None and tofu:
        raise InputError("give either --fingerprint or --trust-on-first-use, not both")
    if card_file.stat().st_size > MAX_CARD_FILE:
        raise InputError(f"{card_file} is larger than {MAX_CARD_FILE} bytes; it is not a card")
    data = card_file.read_bytes()
    with opened(ctx) as node:
        if tofu:
            warn("trusting a card WITHOUT a fingerprint check (--trust-on-first-use)")
        result = node.add_peer(data, fingerprint=fingerprint, tofu=tofu, now=clock.now())
        record = node.trust_store().get(result.chain.latest.node)
    latest = result.chain.latest
    if as_json:
        print_json({**peer_json(record, latest), "outcome": result.outcome})
        return
    messages = {
        "added": f"partner {latest.node} ({latest.name}) is now trusted",
        "updated": f"partner {latest.node} updated to card version {latest.version}",
        "unchanged": f"partner {latest.node} was already trusted with this card; nothing changed",
    }
    ok(messages[result.outcome])
    print_fields(_card_fields(latest))


@peer.command("list", epilog=examples("accord --data ./cn-mps peer list --json"))
@json_option
@pass_ctx
def peer_list(ctx: CliContext, as_json: bool) -> None:
    """List trusted partners."""
    with opened(ctx) as node:
        store = node.trust_store()
        rows = [
            (r, store.trusted_chain(r.node, clock.now()).latest if r.revoked_from is None else None)
            for r in node.attested_peers()
        ]
    if as_json:
        print_json([peer_json(r, c) for r, c in rows])
        return
    if not rows:
        say("No partners yet. Add one with 'accord peer add CARD --fingerprint FP'.")
        return
    print_table(
        "Trusted partners",
        ["node", "name", "endpoint", "fingerprint", "card", "status"],
        [
            (
                r.node,
                c.name if c else "-",
                c.endpoint if c else "-",
                r.fingerprint,
                f"v{r.card_version}",
                r.status
                + (f" from {r.revoked_from}" if r.revoked_from else "")
                + (" (TOFU)" if r.tofu else ""),
            )
            for r, c in rows
        ],
    )


@peer.command("show", epilog=examples("accord --data ./cn-mps peer show pk-moi"))
@click.argument("peer_id", metavar="ID")
@json_option
@pass_ctx
def peer_show(ctx: CliContext, peer_id: str, as_json: bool) -> None:
    """Show one partner: card, fingerprint, status."""
    from exchange.card import verify_chain_bytes

    with opened(ctx) as node:
        record = node.trust_store().get(peer_id)
        revoked = node.trust_store().revoked_keys(peer_id)
        others = [
            {"kind": r.kind, "key": r.key, "revoked_from": r.revoked_from, "reason": r.reason}
            for r in node.peer_key_revocations(record.node)
        ]
    chain = verify_chain_bytes(record.chain)
    latest = chain.latest
    revoked_keys = {fingerprint(k): format_time(t) for k, t in revoked.items()}
    if as_json:
        print_json(
            {
                **peer_json(record, latest),
                "card": card_json(latest),
                "revoked_keys": revoked_keys,
                "revoked_other_keys": others,
            }
        )
        return
    print_fields(
        [
            *_card_fields(latest),
            ("status", record.status),
            ("revoked from", record.revoked_from or "-"),
            (
                "revoked keys",
                "\n".join(f"{fp} from {t}" for fp, t in revoked_keys.items()) or "-",
            ),
            (
                "revoked log/witness/TLS keys",
                "\n".join(
                    f"{o['kind']} {o['key']} from {o['revoked_from']} ({o['reason']})"
                    for o in others
                )
                or "-",
            ),
            ("trusted since", record.added_at),
            ("trust on first use", "yes" if record.tofu else "no"),
        ]
    )


@peer.command("remove", epilog=examples("accord --data ./cn-mps peer remove pk-moi --yes"))
@click.argument("peer_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_ctx
def peer_remove(ctx: CliContext, peer_id: str, yes: bool, as_json: bool) -> None:
    """Stop trusting a partner and forget its card."""
    with opened(ctx) as node:
        node.trust_store().get(peer_id)
        if not yes:
            click.confirm(f"Remove partner {peer_id} from the trust store?", abort=True, err=True)
        record = node.remove_peer(peer_id, clock.now())
    if as_json:
        print_json({"node": record.node, "removed": True})
    else:
        ok(f"partner {record.node} removed")


@peer.command(
    "revoke",
    epilog=examples("accord --data ./cn-mps peer revoke pk-moi --from 2026-11-20T00:00:00Z --yes"),
)
@click.argument("peer_id", metavar="ID")
@click.option(
    "--from", "revoked_from", help="RFC 3339 UTC time from which the key is invalid (default: now)."
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_ctx
def peer_revoke(
    ctx: CliContext, peer_id: str, revoked_from: str | None, yes: bool, as_json: bool
) -> None:
    """Revoke a partner's current key: everything it signed from that time on is refused."""
    now = clock.now()
    when = parse_time(revoked_from, field="--from") if revoked_from else now
    with opened(ctx) as node:
        node.trust_store().get(peer_id)
        if not yes:
            click.confirm(
                f"Revoke partner {peer_id}'s key from {when.isoformat()}?", abort=True, err=True
            )
        record = node.revoke_peer(peer_id, when, now)
    if as_json:
        print_json(peer_json(record))
    else:
        ok(f"partner {record.node}'s key is revoked from {record.revoked_from}")
