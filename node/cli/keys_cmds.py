"""This node's keys: rotation, the list of identity keys, signed revocation."""

from __future__ import annotations

from datetime import datetime

import click

from exchange.card import verify_chain_bytes
from exchange.times import parse_time
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.node_cmds import SUITES, card_json, opened
from node.cli.output import ok, print_json, print_table, say, warn
from node.home import (
    KEY_ENCRYPTION,
    KEY_IDENTITY,
    KEY_KINDS,
    KEY_LOG,
    KEY_TLS,
    KEY_WITNESS,
    Node,
    is_serving,
)
from node.rpc.officer_client import call, officer
from node.rpc.wire import rotation_message


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
        "accord --data ./pk-moi keys rotate --tls --log    # new TLS CA and log key",
        "accord --data ./pk-moi keys rotate --all          # every key: a stolen host",
    ),
)
@click.option("--identity", is_flag=True, help="Rotate the identity key (the default).")
@click.option("--encryption", is_flag=True, help="Start a new encryption-key epoch.")
@click.option("--tls", is_flag=True, help="Rotate the TLS CA and the node certificate.")
@click.option("--log", "log_key", is_flag=True, help="Rotate the log (checkpoint) key.")
@click.option("--witness", is_flag=True, help="Rotate the witness (cosigning) key.")
@click.option("--all", "all_keys", is_flag=True, help="Rotate every kind of key at once.")
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default=None,
    help="HPKE suite of the new encryption key (default: that of the newest key).",
)
@json_option
@pass_ctx
def keys_rotate(
    ctx: CliContext,
    identity: bool,
    encryption: bool,
    tls: bool,
    log_key: bool,
    witness: bool,
    all_keys: bool,
    suite: str | None,
    as_json: bool,
) -> None:
    """Rotate keys and publish a new card version signed by the old identity key.

    Works whether or not the node serves: a serving node rotates through its Officer
    socket and uses the new keys at once. Partners learn the new card the next time they
    sync (GetCard); they accept it because the key they trust signed it.
    """
    chosen = {
        KEY_IDENTITY: identity,
        KEY_ENCRYPTION: encryption,
        KEY_TLS: tls,
        KEY_LOG: log_key,
        KEY_WITNESS: witness,
    }
    kinds = list(KEY_KINDS) if all_keys else [k for k in KEY_KINDS if chosen[k]]
    kinds = kinds or [KEY_IDENTITY]
    chosen_suite = SUITES[suite] if suite else None
    if is_serving(ctx.data_dir):
        with officer(ctx.data_dir) as stub:
            answer = call(stub.RotateKeys, rotation_message(kinds, chosen_suite))
        chain = verify_chain_bytes(bytes(answer.chain))
        before_fingerprint = answer.previous_fingerprint
    else:
        with opened(ctx) as node:
            before_fingerprint = node.own_chain().latest.fingerprint
            chain = node.rotate_keys(clock.now(), kinds, suite=chosen_suite)
    latest = chain.latest
    if as_json:
        print_json(
            {**card_json(latest), "previous_fingerprint": before_fingerprint, "rotated": kinds}
        )
        return
    ok(f"{', '.join(kinds)} key(s) rotated; card version {latest.version}")
    if KEY_IDENTITY in kinds:
        say(f"old fingerprint {before_fingerprint}\nnew fingerprint {latest.fingerprint}")
    say("Partners learn the new card when they next sync (GetCard); a partner that does not")
    say("sync with this node needs it by hand: 'accord card export --out FILE'.")


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


def _other_keys(node: Node) -> list[dict[str, object]]:
    """This node's log, witness and TLS CA keys, oldest first per kind, with the card
    versions that carried each, whether it is current, and its revocation (ADR 0018)."""
    from exchange.key_revocation import KINDS, card_key, parse_key_revocation_unverified

    revoked = {
        (r.kind, r.key): r
        for r in (parse_key_revocation_unverified(s.statement) for s in node.own_key_revocations())
    }
    chain = node.own_chain()
    out: list[dict[str, object]] = []
    for kind in KINDS:
        rows: list[dict[str, object]] = []
        for card in chain.cards:
            key = card_key(card, kind)
            if rows and rows[-1]["key"] == key:
                rows[-1]["last_version"] = card.version
                continue
            revocation = revoked.get((kind, key))
            rows.append(
                {
                    "kind": kind,
                    "key": key,
                    "first_version": card.version,
                    "last_version": card.version,
                    "current": False,
                    "revoked_from": None if revocation is None else revocation.revoked_from,
                    "reason": None if revocation is None else revocation.reason,
                }
            )
        rows[-1]["current"] = True
        out.extend(rows)
    return out


@keys.command(
    "list",
    epilog=examples("accord --data ./pk-moi keys list", "accord --data ./pk-moi keys list --all"),
)
@click.option(
    "--all", "all_kinds", is_flag=True, help="Also list the log, witness and TLS CA keys."
)
@json_option
@pass_ctx
def keys_list(ctx: CliContext, all_kinds: bool, as_json: bool) -> None:
    """List this node's identity keys, oldest first: card versions, status, revocation.
    With --all, also its log, witness and TLS CA keys (what 'keys revoke --kind' names)."""
    with opened(ctx) as node:
        rows = _own_keys(node)
        others = _other_keys(node) if all_kinds else []
    if as_json:
        print_json({"identity": rows, "other": others} if all_kinds else rows)
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
    if all_kinds:
        print_table(
            "Log, witness and TLS CA keys",
            ["kind", "key", "card versions", "status"],
            [
                (
                    o["kind"],
                    o["key"],
                    f"{o['first_version']}"
                    + ("" if o["first_version"] == o["last_version"] else f"-{o['last_version']}"),
                    status(o),
                )
                for o in others
            ],
        )


@keys.command(
    "revoke",
    epilog=examples(
        "accord --data ./pk-moi keys revoke ABCD-EFGH-IJKL-MNOP-QRST-UVWX "
        "--from 2026-11-20T00:00:00Z --reason compromised --yes",
        "accord --data ./pk-moi keys revoke --kind log 0a1b2c3d "
        "--from 2026-11-20T00:00:00Z --reason compromised --yes",
    ),
)
@click.argument("fingerprint", metavar="FINGERPRINT_OR_KEY_ID")
@click.option(
    "--kind",
    type=click.Choice(["identity", "log", "witness", "tls"]),
    default="identity",
    show_default=True,
    help="Which kind of key: identity (by fingerprint), or a replaced log/witness key (its "
    "verifier key or hex key id) or TLS CA (its sha256 hex digest).",
)
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
    kind: str,
    revoked_from: str | None,
    reason: str,
    yes: bool,
    as_json: bool,
) -> None:
    """Revoke one of this node's keys with a signed statement.

    Partners fetch the statement with the card ('GetCard') the next time they sync and
    refuse what the key signed from that time on. Revoking the current identity key cuts
    this node off: partners must re-add it with a new identity, checked out of band.
    A log, witness or TLS CA key can be revoked only once replaced ('keys rotate --log',
    '--witness', '--tls'): partners' witnesses then refuse checkpoints by a revoked log
    key, our cosigner ignores cosignatures by a revoked witness key, partners refuse a
    revoked TLS CA, and 'audit verify' reports both from that time on.
    """
    from exchange.card import fingerprints_equal

    now = clock.now()
    when = parse_time(revoked_from, field="--from") if revoked_from else now
    if kind != "identity":
        _revoke_other(ctx, kind, fingerprint, when, reason, yes, as_json, now)
        return
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


def _revoke_other(
    ctx: CliContext,
    kind: str,
    wanted: str,
    when: datetime,
    reason: str,
    yes: bool,
    as_json: bool,
    now: datetime,
) -> None:
    if not yes:
        click.confirm(
            f"Revoke this node's replaced {kind} key {wanted} from {when.isoformat()}?",
            abort=True,
            err=True,
        )
    with opened(ctx) as node:
        statement, new = node.revoke_own_other_key(kind, wanted, when, reason, now)
    if as_json:
        print_json(
            {
                "kind": statement.kind,
                "key": statement.key,
                "revoked_from": statement.revoked_from,
                "reason": statement.reason,
                "issued_at": statement.issued_at,
                "new": new,
            }
        )
        return
    if not new:
        say(
            f"{kind} key {statement.key} was already revoked from {statement.revoked_from}; "
            "nothing changed"
        )
        return
    ok(f"{kind} key {statement.key} is revoked from {statement.revoked_from}")
    say("Partners learn it the next time they sync with this node (GetCard).")
