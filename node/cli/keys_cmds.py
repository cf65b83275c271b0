"""This node's keys: rotation, the list of identity keys, signed revocation."""

from __future__ import annotations

import click

from exchange.errors import ConfigError
from exchange.times import parse_time
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.node_cmds import SUITES, card_json, opened
from node.cli.output import ok, print_json, print_table, say, warn
from node.home import Node, is_serving


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi keys list",
        "accord --data ./pk-moi keys rotate",
    )
)
def keys() -> None:
    """This node's keys: rotate, list the identity keys, revoke one."""


@keys.command(
    "rotate",
    epilog=examples(
        "accord --data ./pk-moi keys rotate                # new identity key",
        "accord --data ./pk-moi keys rotate --encryption   # new encryption-key epoch",
    ),
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


@keys.command("list", epilog=examples("accord --data ./pk-moi keys list"))
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
    epilog=examples(
        "accord --data ./pk-moi keys revoke ABCD-EFGH-IJKL-MNOP-QRST-UVWX "
        "--from 2026-11-20T00:00:00Z --reason compromised --yes"
    ),
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
