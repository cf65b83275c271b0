"""Node set-up commands: init, card, peer, keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from exchange.card import SUITE_HYBRID, SUITE_X25519, Card, fingerprint
from exchange.errors import ConfigError, InputError
from exchange.times import format_time, parse_time
from keys.keyfile import PASSPHRASE_ENV
from keys.truststore import PeerRecord
from node import clock
from node.cli.base import CliContext, cli, json_option, pass_ctx
from node.cli.output import ok, print_fields, print_json, print_table, say, warn
from node.home import Node, init_node, is_serving, passphrase_from_env_or

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
    epilog="Example:\n\n    ACCORD_PASSPHRASE=... accord --data ./pk-moi init --node pk-moi "
    "--name 'Pakistan MoI' --endpoint 127.0.0.1:7441"
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
@json_option
@pass_ctx
def init(
    ctx: CliContext,
    node_id: str,
    name: str,
    endpoint: str,
    suite: str,
    unencrypted_keys: bool,
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


@cli.group()
def card() -> None:
    """This node's signed card: identity, keys and endpoint for partners."""


@card.command("show", epilog="Example:\n\n    accord --data ./pk-moi card show --json")
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


@card.command(
    "export", epilog="Example:\n\n    accord --data ./pk-moi card export --out pk-moi.card"
)
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
    if out.exists() and not force:
        raise InputError(f"{out} exists", next_step="Choose another --out or pass --force.")
    out.write_bytes(chain.to_bytes())
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


@cli.group()
def peer() -> None:
    """Partner nodes this node trusts (the trust store)."""


@peer.command(
    "add",
    epilog="Example:\n\n    accord --data ./cn-mps peer add pk-moi.card "
    "--fingerprint ABCD-EFGH-IJKL-MNOP-QRST-UVWX",
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


@peer.command("list", epilog="Example:\n\n    accord --data ./cn-mps peer list --json")
@json_option
@pass_ctx
def peer_list(ctx: CliContext, as_json: bool) -> None:
    """List trusted partners."""
    with opened(ctx) as node:
        store = node.trust_store()
        rows = [
            (r, store.trusted_chain(r.node, clock.now()).latest if r.revoked_from is None else None)
            for r in store.list()
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


@peer.command("show", epilog="Example:\n\n    accord --data ./cn-mps peer show pk-moi")
@click.argument("peer_id", metavar="ID")
@json_option
@pass_ctx
def peer_show(ctx: CliContext, peer_id: str, as_json: bool) -> None:
    """Show one partner: card, fingerprint, status."""
    from exchange.card import verify_chain_bytes

    with opened(ctx) as node:
        record = node.trust_store().get(peer_id)
        revoked = node.trust_store().revoked_keys(peer_id)
    chain = verify_chain_bytes(record.chain)
    latest = chain.latest
    revoked_keys = {fingerprint(k): format_time(t) for k, t in revoked.items()}
    if as_json:
        print_json(
            {**peer_json(record, latest), "card": card_json(latest), "revoked_keys": revoked_keys}
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
            ("trusted since", record.added_at),
            ("trust on first use", "yes" if record.tofu else "no"),
        ]
    )


@peer.command("remove", epilog="Example:\n\n    accord --data ./cn-mps peer remove pk-moi --yes")
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
    epilog="Example:\n\n    accord --data ./cn-mps peer revoke pk-moi "
    "--from 2026-11-20T00:00:00Z --yes",
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


# -- keys -------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """This node's keys: rotation of the identity and encryption keys."""


@keys.command(
    "rotate",
    epilog="Example:\n\n    accord --data ./pk-moi keys rotate            # new identity key\n"
    "    accord --data ./pk-moi keys rotate --encryption   # new encryption-key epoch",
)
@click.option(
    "--encryption",
    is_flag=True,
    help="Rotate the encryption key (new epoch) instead of the identity key.",
)
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default="hybrid",
    show_default=True,
    help="HPKE suite of the new encryption key.",
)
@json_option
@pass_ctx
def keys_rotate(ctx: CliContext, encryption: bool, suite: str, as_json: bool) -> None:
    """Rotate a key and publish a new card version signed by the old identity key.

    Send the new card to partners ('accord card export'); they accept it because the key
    they trust signed it.
    """
    if is_serving(ctx.data_dir):
        raise ConfigError(
            "the node is running; its keys are loaded in memory",
            code="config.serving",
            next_step="Stop it ('accord serve' gets SIGTERM), rotate, then start it again.",
        )
    with opened(ctx) as node:
        before = node.own_chain().latest
        if encryption:
            chain = node.rotate_encryption(clock.now(), SUITES[suite])
        else:
            chain = node.rotate_identity(clock.now())
    latest = chain.latest
    if as_json:
        print_json({**card_json(latest), "previous_fingerprint": before.fingerprint})
        return
    what = "encryption key" if encryption else "identity key"
    ok(f"{what} rotated; card version {latest.version}")
    if not encryption:
        say(f"old fingerprint {before.fingerprint}\nnew fingerprint {latest.fingerprint}")
    say("Next: export the card ('accord card export --out FILE') and send it to every partner.")


def _own_keys(node: Node) -> list[dict[str, object]]:
    """This node's identity keys, oldest first, with the card versions each signed and
    its revocation, if any."""
    from exchange.revocation import parse_revocation_unverified

    revoked = {
        r.identity_key: r
        for r in (parse_revocation_unverified(s.statement) for s in node.own_revocations())
    }
    chain = node.own_chain()
    keys: list[dict[str, object]] = []
    for card in chain.cards:
        if keys and keys[-1]["_key"] == card.identity_key:
            keys[-1]["last_version"] = card.version
            continue
        revocation = revoked.get(card.identity_key)
        keys.append(
            {
                "_key": card.identity_key,
                "fingerprint": card.fingerprint,
                "first_version": card.version,
                "last_version": card.version,
                "since": card.issued_at,
                "current": False,
                "revoked_from": None if revocation is None else revocation.revoked_from,
                "reason": None if revocation is None else revocation.reason,
            }
        )
    keys[-1]["current"] = True
    return [{k: v for k, v in key.items() if k != "_key"} for key in keys]


@keys.command("list", epilog="Example:\n\n    accord --data ./pk-moi keys list")
@json_option
@pass_ctx
def keys_list(ctx: CliContext, as_json: bool) -> None:
    """List this node's identity keys, oldest first: card versions, status, revocation."""
    with opened(ctx) as node:
        rows = _own_keys(node)
    if as_json:
        print_json(rows)
        return

    def status(row: dict[str, object]) -> str:
        if row["revoked_from"]:
            return f"revoked from {row['revoked_from']} ({row['reason']})"
        return "current" if row["current"] else "retired"

    print_table(
        "Identity keys",
        ["fingerprint", "card versions", "since", "status"],
        [
            (
                r["fingerprint"],
                f"{r['first_version']}"
                + ("" if r["first_version"] == r["last_version"] else f"-{r['last_version']}"),
                r["since"],
                status(r),
            )
            for r in rows
        ],
    )


@keys.command(
    "revoke",
    epilog="Example:\n\n    accord --data ./pk-moi keys revoke ABCD-EFGH-IJKL-MNOP-QRST-UVWX "
    "--from 2026-11-20T00:00:00Z --reason compromised --yes",
)
@click.argument("fingerprint")
@click.option(
    "--from", "revoked_from", help="RFC 3339 UTC time from which the key is invalid (default: now)."
)
@click.option(
    "--reason",
    type=click.Choice(["compromised", "retired"]),
    default="compromised",
    show_default=True,
    help="Why the key is revoked.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_ctx
def keys_revoke(
    ctx: CliContext,
    fingerprint: str,
    revoked_from: str | None,
    reason: str,
    yes: bool,
    as_json: bool,
) -> None:
    """Revoke one of this node's identity keys with a signed statement.

    Partners fetch the statement with the card ('GetCard') the next time they sync and
    refuse what the key signed from that time on. Revoking the current key cuts this
    node off: partners must re-add it with a new identity, checked out of band.
    """
    from exchange.card import fingerprints_equal

    now = clock.now()
    when = parse_time(revoked_from, field="--from") if revoked_from else now
    with opened(ctx) as node:
        rows = _own_keys(node)
        match = [r for r in rows if fingerprints_equal(str(r["fingerprint"]), fingerprint)]
        blocked = node.pending_sealed_under(fingerprint, when) if match else 0
        if blocked and not as_json:
            warn(
                f"{blocked} envelope(s) sealed under this key from that time are not yet "
                "acknowledged; partners will refuse them and sync with them stops there"
            )
        if match and not yes:
            question = f"Revoke identity key {match[0]['fingerprint']} from {when.isoformat()}?"
            if match[0]["current"]:
                question = (
                    "This is the node's CURRENT identity key: partners will refuse everything "
                    "this node sends from that time on. " + question
                )
            click.confirm(question, abort=True, err=True)
        revocation, new = node.revoke_own_key(fingerprint, when, reason, now)
    if as_json:
        print_json(
            {
                "fingerprint": revocation.fingerprint,
                "revoked_from": revocation.revoked_from,
                "reason": revocation.reason,
                "issued_at": revocation.issued_at,
                "new": new,
                "blocked_envelopes": blocked,
            }
        )
        return
    if not new:
        say(
            f"key {revocation.fingerprint} was already revoked from {revocation.revoked_from}; "
            "nothing changed"
        )
        return
    ok(f"key {revocation.fingerprint} is revoked from {revocation.revoked_from}")
    say("Partners learn it the next time they sync with this node (GetCard).")
