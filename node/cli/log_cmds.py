"""The exchange log and its audit: log show/checkpoint/prove, audit export/verify/reconcile."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exchange.agreement import LABELS
from exchange.audit import (
    Anchor,
    AuditReport,
    anchor_map,
    card_anchor,
    fingerprint_anchor,
    reconcile,
)
from exchange.canonical import b64
from exchange.card import MAX_CHAIN_BYTES
from exchange.deadlines import ProcedureReport, procedure
from exchange.errors import InputError
from exchange.events import Event, parse_event_unverified
from exchange.times import format_time, parse_time
from node import clock
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.node_cmds import opened
from node.cli.output import ok, print_fields, print_json, print_table, say, stderr
from node.services.audit import export_bundle, verify_bundle_file
from node.services.disclosures import disclosures

MAX_LIMIT = 10_000


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi log show --from 0 --limit 20",
        "accord --data ./pk-moi log checkpoint",
    )
)
def log() -> None:
    """This node's exchange log: entries, checkpoints and proofs."""


@log.command("show", epilog=examples("accord --data ./pk-moi log show --from 0 --limit 20"))
@click.option(
    "--from", "start", type=click.IntRange(min=0), default=0, show_default=True, help="First entry."
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=50,
    show_default=True,
    help="How many entries.",
)
@json_option
@pass_ctx
def log_show(ctx: CliContext, start: int, limit: int, as_json: bool) -> None:
    """List log entries: index, time, kind and the ids they name (never field values)."""
    with opened(ctx) as node:
        rows = node.log.leaves(start, limit)
        size = node.log.size()
    events = [parse_event_unverified(data) for _i, data in rows]
    if as_json:
        print_json(
            {
                "size": size,
                "entries": [
                    {"index": e.index, "kind": e.kind, "at": e.at, **e.attrs} for e in events
                ],
            }
        )
        return
    print_table(
        f"Log entries {start}..{start + len(events) - 1} of {size}"
        if events
        else f"No entries from {start} (log size {size})",
        ["#", "at", "kind", "details"],
        [(e.index, e.at, e.kind, _details(e)) for e in events],
    )


def _details(event: Event) -> str:
    parts = []
    for key, value in event.attrs.items():
        if isinstance(value, list):
            value = ",".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items()) or "-"
        parts.append(f"{key}={value}")
    return " ".join(parts)


@log.command("checkpoint", epilog=examples("accord --data ./pk-moi log checkpoint --json"))
@click.option(
    "--sign", is_flag=True, help="Sign a new checkpoint if entries were added since the last one."
)
@json_option
@pass_ctx
def log_checkpoint(ctx: CliContext, sign: bool, as_json: bool) -> None:
    """Show the latest signed checkpoint, with the cosignatures partners returned.

    Refuses (exit 6, naming the entry or both sizes) when the log holds what the node would
    not sign: an entry it did not write (log.foreign_entry) or a rolled-back tail."""
    with opened(ctx) as node:
        if not sign:
            node.check_log()  # what --sign would refuse is said here too (ADR 0012)
        cp = node.checkpoint(clock.now()) if sign else node.log.latest_checkpoint()
        if cp is None:
            raise InputError(
                "no checkpoint signed yet", next_step="Run 'accord log checkpoint --sign'."
            )
        note = node.log.cosigned_note(cp).decode("utf-8")
        cosigners = [w for w, _line in node.log.cosignatures(cp.size)]
        size = node.log.size()
    if as_json:
        print_json(
            {
                "size": cp.size,
                "root": b64(cp.root),
                "signed_at": cp.signed_at,
                "note": note,
                "cosigned_by": cosigners,
                "log_size": size,
            }
        )
        return
    print_fields(
        [
            ("size", cp.size),
            ("root", b64(cp.root)),
            ("signed", cp.signed_at),
            ("cosigned by", ", ".join(cosigners) or "nobody yet"),
            ("log size", size),
        ]
    )
    say(note.rstrip("\n"))


@log.command("prove", epilog=examples("accord --data ./pk-moi log prove --leaf 3"))
@click.option("--leaf", type=click.IntRange(min=0), required=True, help="The entry to prove.")
@json_option
@pass_ctx
def log_prove(ctx: CliContext, leaf: int, as_json: bool) -> None:
    """An inclusion proof of one entry against the latest checkpoint."""
    from exchange.merkle import leaf_hash, verify_inclusion

    with opened(ctx) as node:
        cp = node.log.latest_checkpoint()
        if cp is None or leaf >= cp.size:
            raise InputError(
                f"entry {leaf} is not covered by a signed checkpoint yet",
                next_step="Run 'accord log checkpoint --sign' first.",
            )
        data = node.log.leaf(leaf)
        proof = node.log.inclusion_proof(leaf, cp.size)
    verify_inclusion(leaf_hash(data), leaf, cp.size, proof, cp.root)
    if as_json:
        print_json(
            {
                "leaf": leaf,
                "tree_size": cp.size,
                "root": b64(cp.root),
                "leaf_hash": b64(leaf_hash(data)),
                "proof": [b64(h) for h in proof],
                "checkpoint": cp.note.decode("utf-8"),
            }
        )
        return
    ok(f"entry {leaf} is included in checkpoint {cp.size} ({len(proof)} hashes)")
    print_fields(
        [
            ("root", b64(cp.root)),
            ("leaf hash", b64(leaf_hash(data))),
            *[(f"proof[{i}]", b64(h)) for i, h in enumerate(proof)],
        ]
    )


# -- audit --------------------------------------------------------------------------------


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi audit export --out pk-moi.bundle",
        "accord audit verify pk-moi.bundle",
    )
)
def audit() -> None:
    """Export a node's log for auditors and verify bundles offline with public keys only."""


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,  # no stray blank lines in logs, pipes and make demo
    )


@audit.command("export", epilog=examples("accord --data ./pk-moi audit export --out pk-moi.bundle"))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Bundle file to write.",
)
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@json_option
@pass_ctx
def audit_export(ctx: CliContext, out: Path, force: bool, as_json: bool) -> None:
    """Write the log, cosigned checkpoints and public cards to one bundle file."""
    if (out.exists() or out.is_symlink()) and not force:
        raise InputError(f"{out} exists", next_step="Choose another --out or pass --force.")
    with opened(ctx) as node, _progress() as bar:
        task = bar.add_task("exporting", total=None)
        size, checkpoints = export_bundle(
            node,
            out,
            clock.now(),
            lambda n, total: bar.update(task, completed=n, total=total),
            force=force,
        )
    if as_json:
        print_json({"file": str(out), "entries": size, "checkpoints": checkpoints})
        return
    ok(f"{size} entries and {checkpoints} checkpoints written to {out}")


F = TypeVar("F", bound=Callable[..., Any])


def anchor_options(f: F) -> F:
    """``--fingerprint NODE=FP`` and ``--card FILE``: the keys the auditor checked out of
    band. A bundle carries its own keys, so without an anchor it proves nothing."""
    f = click.option(
        "--card",
        "cards",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A card file written by 'accord card export': anchors that node to the card's "
        "identity key. Repeatable.",
    )(f)
    return click.option(
        "--fingerprint",
        "fingerprints",
        multiple=True,
        metavar="NODE=FINGERPRINT",
        help="A node's fingerprint as checked out of band ('accord card show' on the node, "
        "'accord peer list' on its partner, the signed agreement). Repeatable: give the "
        "bundle's node and each partner.",
    )(f)


def anchors_from(fingerprints: Sequence[str], cards: Sequence[Path]) -> list[Anchor]:
    """The anchors given on the command line; none at all is a usage error (exit 2)."""
    anchors = [fingerprint_anchor(text) for text in fingerprints]
    for path in cards:
        if path.stat().st_size > MAX_CHAIN_BYTES:
            raise InputError(f"{path} is larger than {MAX_CHAIN_BYTES} bytes; it is not a card")
        anchors.append(card_anchor(path.read_bytes(), what=str(path)))
    anchor_map(anchors)  # refuses no anchor at all, and two that disagree, before any work
    return anchors


def _verify_with_bar(
    bundle: Path,
    anchors: list[Anchor],
    since: Path | None,
    on_event: Callable[[Event], None] | None = None,
) -> AuditReport:
    with _progress() as bar:
        task = bar.add_task("verifying", total=None)
        return verify_bundle_file(
            bundle, anchors, since, lambda n: bar.update(task, completed=n), on_event
        )


def _print_report(bundle: Path, report: AuditReport) -> None:
    anchors = [
        f"{a['node']} {a['fingerprint']} by {a['source']}: "
        + (
            f"{a['used_for']} from card v{a['card_version']}"
            if a["card_version"]
            else a["used_for"]
        )
        for a in report.anchors
    ]
    partners = [
        f"{p.node}: largest cosigned {p.largest_cosigned} ({p.cosigned_checkpoints} checkpoints)"
        + ("" if p.keys else ", no anchored witness key")
        for p in sorted(report.partners.values(), key=lambda p: p.node)
    ]
    print_fields(
        [
            ("bundle", bundle),
            ("node", report.node),
            ("origin", report.origin),
            ("anchors", "; ".join(anchors) or "-"),
            ("entries", report.entries),
            (
                "checkpoints",
                f"{report.checkpoints} ({report.cosigned_checkpoints} cosigned by anchored "
                "partners)",
            ),
            ("largest checkpoint", report.largest_checkpoint),
            ("partners", "; ".join(partners) or "-"),
            (
                "not checked",
                ", ".join(report.unanchored_peers) + " (no anchor: cosignatures not checked)"
                if report.unanchored_peers
                else "-",
            ),
            ("events", ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items())) or "-"),
        ]
    )
    if report.findings:
        print_table(
            f"{len(report.findings)} finding(s)",
            ["entry", "code", "finding"],
            [("-" if f.index is None else f.index, f.code, f.message) for f in report.findings],
        )


@audit.command(
    "verify",
    epilog=examples(
        "accord audit verify pk-moi.bundle --fingerprint pk-moi=Y3TO-64CP-W63K-R2V7-F7PI-SB3E",
        "accord audit verify pk-moi.bundle --card pk-moi.card --card cn-mps.card --json",
    ),
)
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@anchor_options
@click.option(
    "--since",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A checkpoint note verified earlier; the log must extend it.",
)
@json_option
def audit_verify(
    bundle: Path,
    fingerprints: tuple[str, ...],
    cards: tuple[Path, ...],
    since: Path | None,
    as_json: bool,
) -> None:
    """Verify a bundle offline: signatures, cosignatures, every root and every entry.

    Needs no node and no private key, but at least one anchor: every key used must chain
    to a fingerprint or card you checked out of band. Exits 3 on any finding.
    """
    anchors = anchors_from(fingerprints, cards)
    report = _verify_with_bar(bundle, anchors, since)
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(bundle, report)
        if report.ok:
            ok(f"audit passed: {report.entries} entries, {report.checkpoints} checkpoints")
    if not report.ok:
        raise click.exceptions.Exit(3)


@audit.command(
    "disclosures",
    epilog=examples(
        "accord audit disclosures cn-mps.bundle --card cn-mps.card --label personal",
        "accord audit disclosures cn-mps.bundle --card cn-mps.card --since 2026-11-01T00:00:00Z",
    ),
)
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@anchor_options
@click.option(
    "--label",
    type=click.Choice(sorted(LABELS)),
    default=None,
    help="Only fields with this schema label (e.g. personal).",
)
@click.option(
    "--since",
    default=None,
    help="Only from this time on (RFC 3339 UTC, e.g. 2026-11-01T00:00:00Z).",
)
@json_option
def audit_disclosures(
    bundle: Path,
    fingerprints: tuple[str, ...],
    cards: tuple[Path, ...],
    label: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """List every release of fields in a verified log: to which partner or feed consumer,
    when, which fields, and the legal basis and digests it was made under.

    The bundle is verified first, against the anchors given as for 'audit verify'; a
    bundle with findings is refused.
    """
    anchors = anchors_from(fingerprints, cards)
    if since is not None:
        since = format_time(parse_time(since, field="--since"))
    events: list[Event] = []
    report = _verify_with_bar(bundle, anchors, None, events.append)
    if not report.ok:
        _print_report(bundle, report)
        raise InputError(
            f"{bundle} did not verify; disclosures are listed only from a verified log",
            code="audit.failed",
            next_step="Run 'accord audit verify' and resolve its findings.",
        )
    found = disclosures(events, label=label, since=since)
    if as_json:
        print_json([d.to_json() for d in found])
        return
    print_table(
        f"{len(found)} disclosure(s)" + (f" of {label} fields" if label else ""),
        ["entry", "at", "to", "subject", "fields", "legal basis", "policy / agreement"],
        [
            (
                d.index,
                d.at,
                f"{d.recipient} ({d.recipient_kind})",
                d.subject,
                ", ".join(f"{f} [{d.labels.get(f, '?')}]" for f in d.fields),
                "; ".join(f"{f}: {b}" for f, b in sorted(d.legal_basis.items())) or "-",
                f"{(d.policy_digest or '-')[:19]} / {(d.agreement_digest or '-')[:19]}",
            )
            for d in found
        ],
    )


def _print_procedure(steps: ProcedureReport) -> None:
    if not steps.lines:
        return
    print_table(
        f"Warning procedure: {steps.met} deadline(s) met, {steps.breaches} breach(es)",
        ["from", "to", "report", "acknowledge by", "acknowledged", "", "respond by", "replied", ""],
        [
            (
                line.sender,
                line.receiver,
                line.report_id,
                line.acknowledge_by,
                line.acked_at or "-",
                line.acknowledge,
                line.respond_by or "-",
                line.replied_at or "-",
                line.respond or "",
            )
            for line in steps.lines
        ],
    )


@audit.command(
    "reconcile",
    epilog=examples(
        "accord audit reconcile pk-moi.bundle cn-mps.bundle --card pk-moi.card --card cn-mps.card"
    ),
)
@click.argument("bundle_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("bundle_b", type=click.Path(dir_okay=False, path_type=Path))
@anchor_options
@json_option
def audit_reconcile(
    bundle_a: Path,
    bundle_b: Path,
    fingerprints: tuple[str, ...],
    cards: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Match each side's releases with the other side's receipts and inbox events.

    Both bundles are verified first against the same anchors (give both nodes). Then the
    warning procedure: per alert with a response rule, the agreed deadlines, when it was
    acknowledged and answered, and the breaches (shown; they are not log findings).
    """
    anchors = anchors_from(fingerprints, cards)
    events: dict[Path, list[Event]] = {bundle_a: [], bundle_b: []}
    reports = {}
    for bundle in (bundle_a, bundle_b):
        reports[bundle] = _verify_with_bar(bundle, anchors, None, events[bundle].append)
    bad = [b for b, r in reports.items() if not r.ok]
    if bad:
        for b in bad:
            _print_report(b, reports[b])
        raise InputError(
            f"{', '.join(map(str, bad))} did not verify; reconcile needs verified bundles",
            next_step="Run 'accord audit verify' on each bundle and resolve its findings.",
        )
    result = reconcile(
        reports[bundle_a].node, events[bundle_a], reports[bundle_b].node, events[bundle_b]
    )
    node_a, node_b = reports[bundle_a].node, reports[bundle_b].node
    steps = procedure(node_a, events[bundle_a], node_b, events[bundle_b])
    if as_json:
        print_json({"a": node_a, "b": node_b, **result.to_json(), "procedure": steps.to_json()})
    else:
        _print_procedure(steps)
        if result.findings:
            print_table(
                f"{len(result.findings)} finding(s)",
                ["entry", "code", "finding"],
                [(f.index, f.code, f.message) for f in result.findings],
            )
        else:
            ok(
                f"reconciled {reports[bundle_a].node} and {reports[bundle_b].node}: "
                f"{result.matched} releases matched with receipts and inbox events"
            )
    if not result.ok:
        raise click.exceptions.Exit(3)
