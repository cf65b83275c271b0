"""The liaison officer's daily commands, served by the running node over its Officer
socket: report submit/list/show/amend/retract, inbox list/show/export, status."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.text import Text

from exchange.errors import InputError, PolicyError, StoreError
from node.cli.base import CliContext, cli, examples, json_option, pass_ctx
from node.cli.output import (
    ok,
    print_fields,
    print_json,
    print_table,
    safe,
    say,
    stderr,
    stdout,
    warn,
)
from node.cli.report_cmds import read_report_file, report
from node.files import write_export
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_client import call, officer
from node.services.policy import REASON_TEXT

TLP_STYLE = {
    "clear": "white",
    "green": "green",
    "amber": "yellow",
    "amber+strict": "yellow",
    "red": "red",
}


def _time(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if ts.seconds else "-"


def _release_json(r: officer_pb2.ReleaseOutcome) -> dict[str, Any]:
    return {
        "peer": r.peer,
        "released": list(r.released),
        "transformed": {t.field: t.transform for t in r.transformed},
        "withheld": {w.field: w.reason for w in r.withheld},
        "envelope_id": r.envelope_id or None,
        "seq": r.seq or None,
        "policy_digest": r.policy_digest,
    }


def _print_releases(releases: Any) -> None:
    for r in releases:
        sent = f"envelope seq {r.seq}" if r.envelope_id else "nothing sent"
        rows = [(f, "sent", "") for f in r.released]
        rows += [(t.field, "sent transformed", t.transform) for t in r.transformed]
        rows += [(w.field, "WITHHELD", REASON_TEXT.get(w.reason, w.reason)) for w in r.withheld]
        print_table(f"{r.peer}: {sent}", ["field", "outcome", "why / how"], sorted(rows))


@dataclass(frozen=True)
class Delivery:
    """Where a submitted report stands for one partner, in the officer's words."""

    state: str  # "delivering" | "queued" | "not_sent"
    why: str  # for not_sent: the reason code every field was withheld for, or "withheld"
    text: str
    next_step: str


def delivery_of(r: officer_pb2.ReleaseOutcome) -> Delivery:
    if r.envelope_id:
        if r.partner_connected:
            return Delivery(
                "delivering",
                "",
                f"sent to {r.peer} (seq {r.seq}): the partner is connected and takes it now",
                f"'accord report show' shows the receipt once {r.peer} confirms it.",
            )
        return Delivery(
            "queued",
            "",
            f"queued for {r.peer} (seq {r.seq}): the partner is not connected; it is "
            "delivered when it reconnects",
            "'accord status' shows the backlog and when the partner was last in contact.",
        )
    reasons = {w.reason for w in r.withheld}
    why = reasons.pop() if len(reasons) == 1 else "withheld"
    steps = {
        "no-agreement": "Sign an agreement with the partner ('accord agreement propose').",
        "tlp-above-max": "The TLP is above what this partner may receive; lower it only if "
        "the originator allows.",
        "not-in-policy": f"'accord policy explain --peer {r.peer} FILE' shows what the policy "
        "would release.",
    }
    text = REASON_TEXT.get(why, "the policy and the agreement withhold every field")
    return Delivery(
        "not_sent",
        why,
        f"nothing sent to {r.peer}: {text}",
        steps.get(why, f"'accord policy explain --peer {r.peer} FILE' says why, field by field."),
    )


def print_submitted(answer: Any, as_json: bool, headline: str) -> None:
    """What a Submit or Amend answered: per partner, whether it is on its way, queued, or
    not sent and why, then the fields sent, transformed and withheld. Exits 4 (the policy
    family) when no partner gets anything: the report is stored and logged all the same."""
    deliveries = [delivery_of(r) for r in answer.releases]
    if as_json:
        print_json(
            {
                "report_id": answer.report_id,
                "version": answer.version,
                "releases": [
                    {**_release_json(r), "delivery": d.state, "why": d.why or None}
                    for r, d in zip(answer.releases, deliveries, strict=True)
                ],
            }
        )
    else:
        ok(headline)
        _print_releases(answer.releases)
        for d in deliveries:
            (say if d.state != "not_sent" else warn)(d.text)
            say(f"  next: {d.next_step}")
        if not answer.releases:
            warn("no trusted partner: the report is stored and logged but sent to nobody")
    if not any(d.state != "not_sent" for d in deliveries):
        stderr.print(
            "nothing was sent to any partner (exit 4); the report is stored and logged",
            style="yellow",
        )
        raise click.exceptions.Exit(PolicyError.exit_code)


def _tlp(tlp: str) -> Text:
    return Text(f" TLP:{tlp.upper()} ", style=f"bold reverse {TLP_STYLE.get(tlp, 'white')}")


@report.command(
    "submit",
    epilog=examples(
        "accord --data ./pk-moi report submit alert.json",
        "cat alert.toml | accord --data ./pk-moi report submit - --json",
    ),
)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@json_option
@pass_ctx
def report_submit(ctx: CliContext, file: Path, as_json: bool) -> None:
    """Validate, seal and send a report (JSON or TOML) to every partner its policy allows.

    Needs the node running ('accord serve'). Prints, per partner, what was sent and what
    was withheld, and whether it is on its way, queued or not sent (and why). Exits 4 when
    no partner receives anything; the report is stored and logged all the same.
    """
    data, _fmt = read_report_file(file)
    with officer(ctx.data_dir) as stub:
        answer = call(stub.Submit, officer_pb2.SubmitRequest(report=data))
    print_submitted(answer, as_json, f"report {answer.report_id} sealed (version {answer.version})")


@report.command("list", epilog=examples("accord --data ./pk-moi report list --limit 20"))
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--sop", help="Only reports of this schema, e.g. threat-alert@1.")
@json_option
@pass_ctx
def report_list(ctx: CliContext, limit: int, sop: str | None, as_json: bool) -> None:
    """List this node's reports, newest first."""
    with officer(ctx.data_dir) as stub:
        answer = call(stub.ListReports, officer_pb2.ListReportsRequest(limit=limit, sop=sop or ""))
    items = [
        {
            "report_id": r.report_id,
            "version": r.version,
            "sop": r.sop,
            "tlp": r.tlp,
            "sealed_at": _time(r.sealed_at),
            "retracted": r.retracted,
            "partners": {d.peer: d.state for d in r.deliveries},
            "loop": {
                d.peer: {
                    "acknowledged": d.ack_status or None,
                    "due": d.due_state or None,
                    "replies": d.replies,
                }
                for d in r.deliveries
            },
        }
        for r in answer.reports
    ]
    if as_json:
        print_json(items)
        return
    if not items:
        say("No reports yet. Submit one with 'accord report submit FILE'.")
        return
    print_table(
        "Reports",
        ["report id", "version", "schema", "TLP", "sealed", "partners", "state"],
        [
            (
                i["report_id"],
                i["version"],
                i["sop"],
                i["tlp"],
                i["sealed_at"],
                ", ".join(
                    f"{p}: {_delivery_text(s, i['loop'].get(p, {}))}"
                    for p, s in i["partners"].items()
                )
                or "-",
                "retracted" if i["retracted"] else "",
            )
            for i in items
        ],
    )


def _delivery_text(state: str, loop: dict[str, Any]) -> str:
    """queued / delivered / not sent, then the loop: acknowledged, replied, OVERDUE."""
    parts = [state.replace("_", " ")]
    if loop.get("acknowledged"):
        parts.append(f"ack {loop['acknowledged']}")
    if loop.get("replies"):
        parts.append("replied")
    if loop.get("due") in ("OVERDUE", "DUE", "LATE"):
        parts.append(str(loop["due"]))
    return ", ".join(parts)


def _ts(ts: Any) -> str | None:
    return _time(ts) if ts.seconds else None


def thread_json(t: officer_pb2.Thread) -> dict[str, Any]:
    return {
        "in_reply_to": t.in_reply_to or None,
        "acknowledgements": [
            {
                "direction": a.direction,
                "peer": a.peer,
                "status": a.status,
                "officer": a.officer,
                "acked_at": _ts(a.acked_at),
                "note": a.note or None,
                "envelope_id": a.envelope_id,
                "item": a.item_envelope_id,
                "report_id": a.report_id,
                "version": a.version,
            }
            for a in t.acks
        ],
        "replies": [
            {
                "direction": r.direction,
                "peer": r.peer,
                "report_id": r.report_id,
                "version": r.version,
                "envelope_id": r.envelope_id or None,
                "at": _ts(r.at),
            }
            for r in t.replies
        ],
        "deadlines": [
            {
                "direction": d.direction,
                "peer": d.peer,
                "envelope_id": d.envelope_id,
                "version": d.version,
                "state": d.state,
                **{
                    s.step: {"by": _ts(s.by), "done_at": _ts(s.done_at), "state": s.state}
                    for s in d.steps
                },
            }
            for d in t.deadlines
        ],
    }


def print_thread(t: officer_pb2.Thread) -> None:
    """Acknowledgements, replies and deadlines, one line each (partner text escaped)."""
    if t.in_reply_to:
        say(f"In reply to report {t.in_reply_to}.")
    for d in t.deadlines:
        who = "we must" if d.direction == "in" else f"{d.peer} must"
        for s in d.steps:
            done = f", done {_time(s.done_at)}" if s.done_at.seconds else ""
            line = f"{d.state if s.state in ('overdue', 'due') else s.state.upper()}: {who} "
            line += f"{s.step} by {_time(s.by)}{done}"
            (warn if s.state in ("overdue", "late") else say)(line)
    for a in t.acks:
        by = "we" if a.direction == "sent" else safe(a.peer)
        note = f": {safe(a.note)}" if a.note else ""
        say(f"Acknowledged {a.status} by {safe(a.officer)} ({by}) at {_time(a.acked_at)}{note}")
    for r in t.replies:
        by = "we" if r.direction == "sent" else safe(r.peer)
        say(f"Reply {r.report_id} v{r.version} from {by} at {_time(r.at)}")


@report.command("show", epilog=examples("accord --data ./pk-moi report show 0193f2c4-..."))
@click.argument("report_id", metavar="ID")
@click.option(
    "--version", type=click.IntRange(min=1), help="A given version (default: the latest)."
)
@json_option
@pass_ctx
def report_show(ctx: CliContext, report_id: str, version: int | None, as_json: bool) -> None:
    """Show one of this node's reports and, per partner, what was released."""
    with officer(ctx.data_dir) as stub:
        answer = call(
            stub.GetReport, officer_pb2.GetReportRequest(report_id=report_id, version=version or 0)
        )
    body = json.loads(answer.report)
    report_id = answer.summary.report_id  # the full id, also when a prefix was given
    if as_json:
        print_json(
            {
                **body,
                "report_id": report_id,
                "version": answer.summary.version,
                "versions": list(answer.versions),
                "retracted": answer.summary.retracted,
                "releases": [_release_json(r) for r in answer.releases],
                "deliveries": [
                    {
                        "peer": d.peer,
                        "state": d.state,
                        "seq": d.seq,
                        "acknowledged": d.ack_status or None,
                        "due": d.due_state or None,
                        "replies": d.replies,
                    }
                    for d in answer.summary.deliveries
                ],
                **thread_json(answer.thread),
            }
        )
        return
    stdout.print(
        _tlp(body["tlp"]), Text(f"  {body['sop']}  report {report_id} v{answer.summary.version}")
    )
    if answer.summary.retracted:
        warn("this report was retracted")
    print_fields(
        [
            (k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)
            for k, v in body["fields"].items()
        ]
    )
    _print_releases(answer.releases)
    for d in answer.summary.deliveries:
        loop = {"acknowledged": d.ack_status, "due": d.due_state, "replies": d.replies}
        say(f"{d.peer}: {_delivery_text(d.state, loop)}")
    print_thread(answer.thread)


@report.command(
    "amend", epilog=examples("accord --data ./pk-moi report amend 0193f2c4-... alert-v2.json")
)
@click.argument("report_id", metavar="ID")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option(
    "--base-version",
    type=click.IntRange(min=1),
    help="Refuse if the latest version is not this one.",
)
@json_option
@pass_ctx
def report_amend(
    ctx: CliContext, report_id: str, file: Path, base_version: int | None, as_json: bool
) -> None:
    """Send a corrected version of a report; partners keep the chain of versions."""
    data, _fmt = read_report_file(file)
    with officer(ctx.data_dir) as stub:
        answer = call(
            stub.Amend,
            officer_pb2.AmendRequest(
                report_id=report_id, report=data, base_version=base_version or 0
            ),
        )
    print_submitted(
        answer,
        as_json,
        f"report {answer.report_id} amended: version {answer.version} "
        f"replaces version {answer.version - 1}",
    )


RETRACT_REASONS = ["erroneous", "withdrawn", "duplicate", "source-compromised"]


@report.command(
    "retract",
    epilog=examples("accord --data ./pk-moi report retract 0193f2c4-... --reason erroneous --yes"),
)
@click.argument("report_id", metavar="ID")
@click.option(
    "--reason",
    type=click.Choice(RETRACT_REASONS),
    required=True,
    help="Why (a code; no free text is logged).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_ctx
def report_retract(ctx: CliContext, report_id: str, reason: str, yes: bool, as_json: bool) -> None:
    """Withdraw a report: partners that received it get a signed retraction."""
    if not yes and not as_json:
        click.confirm(
            f"Retract report {report_id} ({reason}) at every partner?", abort=True, err=True
        )
    with officer(ctx.data_dir) as stub:
        answer = call(stub.Retract, officer_pb2.RetractRequest(report_id=report_id, reason=reason))
    if as_json:
        print_json(
            {
                "report_id": answer.report_id,
                "envelopes": [
                    {"peer": e.peer, "envelope_id": e.envelope_id, "seq": e.seq}
                    for e in answer.envelopes
                ],
            }
        )
        return
    ok(
        f"report {answer.report_id} retracted ({reason}); signed retraction sent to "
        f"{', '.join(e.peer for e in answer.envelopes) or 'nobody'}"
    )


# -- inbox --------------------------------------------------------------------------------


@cli.group(
    epilog=examples(
        "accord --data ./cn-mps inbox list",
        "accord --data ./cn-mps inbox show 0193f2c5-...",
    )
)
def inbox() -> None:
    """Reports partners sent to this node (verified against their authors' signatures)."""


def _inbox_json(i: officer_pb2.InboxItem) -> dict[str, Any]:
    return {
        "envelope_id": i.envelope_id,
        "peer": i.peer,
        "seq": i.seq,
        "report_id": i.report_id,
        "version": i.version,
        "sop": i.sop,
        "tlp": i.tlp,
        "fields": list(i.fields),
        "received_at": _time(i.received_at),
        "superseded": i.superseded,
        "retracted": i.retracted,
        "title": i.title or None,
        "severity": i.severity or None,
        "due": i.due_state or None,
        "due_at": _ts(i.due_at),
        "unread": i.unread,
        "acknowledged": i.ack_status or None,
    }


@inbox.command(
    "list",
    epilog=examples(
        "accord --data ./cn-mps inbox list --peer pk-moi",
        "accord --data ./cn-mps inbox list --severity critical --state current --text convoy",
        "accord --data ./cn-mps inbox list --limit 20 --offset 20 --json",
    ),
)
@click.option("--peer", help="Only from this partner.")
@click.option("--sop", help="Only reports of this schema, e.g. threat-alert@1.")
@click.option("--severity", help="Only reports whose disclosed severity is this.")
@click.option(
    "--state",
    type=click.Choice(["current", "superseded", "retracted", "due", "overdue", "unread"]),
    help="current: the latest version, not retracted; due/overdue: awaiting our answer.",
)
@click.option("--text", help="Only reports whose disclosed title contains this text.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many first.")
@json_option
@pass_ctx
def inbox_list(
    ctx: CliContext,
    peer: str | None,
    sop: str | None,
    severity: str | None,
    state: str | None,
    text: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List received reports, most urgent first: OVERDUE, then DUE by deadline, then newest.

    Titles and severities are what the partner disclosed, verified under the author's key
    and shown escaped. Filters combine; --offset pages through the matches.
    """
    request = officer_pb2.ListInboxRequest(
        peer=peer or "",
        sop=sop or "",
        severity=severity or "",
        state=state or "",
        text=text or "",
        limit=limit,
        offset=offset,
    )
    with officer(ctx.data_dir) as stub:
        answer = call(stub.ListInbox, request)
    items = [_inbox_json(i) for i in answer.items]
    if as_json:
        print_json(items)
        return
    if not items:
        say("Nothing received yet." if not (sop or severity or state or text) else "No match.")
        return
    print_table(
        "Received reports",
        ["", "id", "from", "TLP", "severity", "title", "schema", "v", "received", "due", "state"],
        [
            (
                "●" if i["unread"] else "",
                i["envelope_id"],
                i["peer"],
                i["tlp"].upper(),
                i["severity"] or "-",
                i["title"] or "-",
                i["sop"],
                i["version"],
                i["received_at"],
                _due_text(i),
                "retracted" if i["retracted"] else "superseded" if i["superseded"] else "",
            )
            for i in items
        ],
    )


def _due_text(i: dict[str, Any]) -> str:
    if not i["due"]:
        return f"ack {i['acknowledged']}" if i["acknowledged"] else ""
    if i["due"] in ("DUE", "OVERDUE") and i["due_at"]:
        return f"{i['due']} {i['due_at']}"
    return str(i["due"])


def _get(
    ctx: CliContext, envelope_id: str, *, mark_read: bool = False, form: str = "json"
) -> tuple[officer_pb2.GetInboxResponse, dict[str, Any]]:
    """The item and its report; ``form`` names the one derived form to build (STIX, CAP),
    "json" none of them (inbox show needs neither)."""
    with officer(ctx.data_dir) as stub:
        answer = call(
            stub.GetInbox,
            officer_pb2.GetInboxRequest(envelope_id=envelope_id, mark_read=mark_read, form=form),
        )
    return answer, json.loads(answer.report)


@inbox.command("show", epilog=examples("accord --data ./cn-mps inbox show 0193f2c5-..."))
@click.argument("envelope_id", metavar="ID")
@json_option
@pass_ctx
def inbox_show(ctx: CliContext, envelope_id: str, as_json: bool) -> None:
    """Show a received report: disclosed fields, transformed fields marked, origin, TLP."""
    answer, body = _get(ctx, envelope_id, mark_read=True)
    item = answer.item
    if as_json:
        print_json(
            {
                **_inbox_json(item),
                "fields": body["fields"],
                "derived": body["derived"],
                "transformed": {t.field: t.transform for t in answer.transformed},
                "verified": True,
                "retraction": body.get("retraction"),
                **thread_json(answer.thread),
            }
        )
        return
    stdout.print(
        Panel(
            Text.assemble(
                _tlp(item.tlp),
                f"  {item.sop}  from {safe(item.peer)}  report {item.report_id} v{item.version}",
            ),
            expand=False,
        )
    )
    rows: list[tuple[str, object]] = [
        (k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
        for k, v in body["fields"].items()
    ]
    transforms = {t.field: t.transform for t in answer.transformed}
    rows += [
        (f"{k} ({transforms.get(k, 'transformed')})", v if isinstance(v, str) else json.dumps(v))
        for k, v in body["derived"].items()
    ]
    print_fields(rows)
    say(
        f"Verified: the author's ({item.peer}) signature covers every field shown; "
        "transformed values "
        f"are signed by {item.peer}'s release. Received {_time(item.received_at)}."
    )
    if item.retracted:
        r = body.get("retraction") or {}
        stdout.print(
            Text(" RETRACTED ", style="bold reverse red")
            + Text(
                f"  by {safe(r.get('by', item.peer))} at {r.get('retracted_at', '?')}: "
                f"{safe(r.get('reason', 'no reason given'))}. Do not act on this report."
            )
        )
    elif item.superseded:
        warn("a newer version of this report was received")
    print_thread(answer.thread)
    if item.due_state in ("DUE", "OVERDUE"):
        say(
            f"  next: accord --data {ctx.data_dir} inbox ack {item.envelope_id[:13]} "
            "--status accepted"
        )


@inbox.command(
    "export",
    epilog=examples(
        "accord --data ./cn-mps inbox export 0193f2c5-... --format stix --out alert.stix.json",
        "accord --data ./cn-mps inbox export 0193f2c5-... --format cap --out alert.cap.xml",
        "accord --data ./cn-mps inbox export 0193f2c5-... --format cap --ack --out ack.cap.xml",
    ),
)
@click.argument("envelope_id", metavar="ID")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["sd-jwt", "json", "stix", "cap"]),
    default="json",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write, mode 0600 (default: standard output).",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option(
    "--ack",
    "as_ack",
    is_flag=True,
    help="With --format cap: our newest acknowledgement of the item, as a CAP Ack.",
)
@pass_ctx
def inbox_export(
    ctx: CliContext, envelope_id: str, fmt: str, out: Path | None, force: bool, as_ack: bool
) -> None:
    """Export a received report: the SD-JWT presentation, plain JSON, a STIX 2.1 bundle, or
    an OASIS CAP 1.2 message (Alert or Update; Cancel once the sender retracted it)."""
    if as_ack and fmt != "cap":
        raise InputError("--ack goes with --format cap", next_step="Add --format cap.")
    answer, body = _get(ctx, envelope_id, form=fmt if fmt in ("stix", "cap") else "json")
    if as_ack:
        acks = body.get("cap_acks") or []
        if not acks:
            raise InputError(
                f"{envelope_id} has no acknowledgement of ours",
                code="inbox.no_ack",
                next_step=f"Acknowledge it first: accord inbox ack {envelope_id} --status ...",
            )
        body = {**body, "cap": acks[-1]}
    if fmt == "sd-jwt":
        text = body["presentation"] + "\n"
    elif fmt == "json":
        text = (
            json.dumps(
                {
                    "sop": body["sop"],
                    "tlp": body["tlp"],
                    "fields": body["fields"],
                    "derived": body["derived"],
                    "from": answer.item.peer,
                    "report_id": answer.item.report_id,
                    "version": answer.item.version,
                    # withdrawn by the sender: who, when, why (null while it stands)
                    "retracted": body.get("retraction"),
                },
                indent=2,
                ensure_ascii=True,  # partner text stays inert in a terminal (docs/THREATS.md B03)
            )
            + "\n"
        )
    elif fmt == "stix":
        if "stix" not in body:
            raise InputError(
                f"no STIX form of {envelope_id} ({body.get('stix_error', 'unknown')})",
                code="inbox.no_stix",
                next_step="Export it as --format json, or check the node's log.",
            )
        text = body["stix"] + "\n"  # built by node/services/stix.py from the verified item
    elif fmt == "cap":
        if "cap" not in body:
            raise InputError(
                f"no CAP form of {envelope_id} ({body.get('cap_error', 'unknown')})",
                code="inbox.no_cap",
                next_step="Export it as --format json, or check the node's log.",
            )
        text = body["cap"]  # node/services/cap.py, built by the node from the verified item
    if out is None:
        click.echo(text, nl=False)
    else:
        write_export(out, text.encode("utf-8"), force=force)
        ok(f"{fmt} export written to {out}")


# -- status -------------------------------------------------------------------------------


def _status(ctx: CliContext, warn_days: int = 0) -> officer_pb2.StatusResponse:
    with officer(ctx.data_dir) as stub:
        answer: officer_pb2.StatusResponse = call(
            stub.Status, officer_pb2.StatusRequest(warn_days=warn_days)
        )
    return answer


_WARNING_TEXT = {
    "our_encryption_key": "our encryption key",
    "their_encryption_key": "their encryption key",
    "agreement": "the agreement",
}


def _warning_json(w: officer_pb2.ExpiryWarning) -> dict[str, Any]:
    return {
        "subject": w.subject,
        "not_after": _time(w.not_after),
        "days_left": w.days_left,
        "expired": w.expired,
    }


def _warning_text(peer: str, w: officer_pb2.ExpiryWarning) -> str:
    what = _WARNING_TEXT.get(w.subject, w.subject)
    if w.expired:
        return f"{peer}: {what} has expired ({_time(w.not_after)})"
    return f"{peer}: {what} expires in {w.days_left} day(s) ({_time(w.not_after)})"


def _peer_json(p: officer_pb2.PeerStatus) -> dict[str, Any]:
    return {
        "peer": p.peer,
        "connected": p.connected,
        "last_sync": _time(p.last_sync),
        "backlog": p.backlog,
        "outbox_seq": p.outbox_seq,
        "acknowledged_seq": p.acknowledged_seq,
        "inbox_seq": p.inbox_seq,
        "rejected": p.rejected,
        "cosigned_size": p.cosigned_size,
        "last_contact": _time(p.last_contact),
        "last_error_code": p.last_error_code or None,
        "agreement_valid": p.agreement_valid,
        "agreement_not_after": _time(p.agreement_not_after),
        "stale": p.stale,
        "classical_tls_allowed": p.classical_tls_allowed,
        "expiry_warnings": [_warning_json(w) for w in p.expiry_warnings],
        "partner_overdue": p.partner_overdue,
        "our_overdue": p.our_overdue,
    }


@cli.command(
    "status",
    epilog=examples(
        "accord --data ./pk-moi status --json", "accord --data ./pk-moi status --warn-days 30"
    ),
)
@click.option(
    "--warn-days",
    type=click.IntRange(1, 3650),
    default=14,
    show_default=True,
    help="Warn about keys and agreements that end within this many days.",
)
@json_option
@pass_ctx
def status(ctx: CliContext, warn_days: int, as_json: bool) -> None:
    """Is the exchange healthy? The node, its log, and each partner at a glance.

    Warns, per partner, ahead of the end of our encryption key, theirs and the agreement.
    """
    s = _status(ctx, warn_days)
    if as_json:
        print_json(
            {
                "node": s.node,
                "version": s.version,
                "log_size": s.log_size,
                "checkpoint_size": s.checkpoint_size,
                "tls12_refused": s.tls12_refused,
                "log_problem_code": s.log_problem_code or None,
                "log_problem": s.log_problem or None,
                "peers": [_peer_json(p) for p in s.peers],
                # Only on PostgreSQL, where a standby may wait (docs/adr/0026).
                **({"role": s.role, "leader": _leader_json(s)} if s.role else {}),
            }
        )
        _log_problem_exit(s)
        return
    print_fields(
        [
            ("node", s.node),
            ("software", s.version),
            ("log", f"{s.log_size} entries"),
            ("checkpoint", f"size {s.checkpoint_size}"),
            ("transport", _transport_line(s)),
            ("log integrity", s.log_problem_code or "ok"),
            *([("role", _role_line(s))] if s.role else []),
        ]
    )
    if s.role == "standby":
        warn(
            "this process is a standby: it serves nothing and takes over when the leader "
            "stops; run commands against the leader's data directory"
        )
        return
    _sync_table(s)
    for p in s.peers:
        if p.partner_overdue:
            warn(
                f"{p.peer} has not acknowledged or answered {p.partner_overdue} report(s) of "
                "ours in time: see 'accord report list'"
            )
        if p.our_overdue:
            warn(
                f"we have not acknowledged or answered {p.our_overdue} item(s) from {p.peer} "
                "in time: see 'accord inbox list --state overdue'"
            )
    _log_problem_exit(s)


def _leader_json(s: officer_pb2.StatusResponse) -> dict[str, Any] | None:
    if not s.leader_pid:
        return None
    return {
        "host": s.leader_host,
        "pid": s.leader_pid,
        "data_dir": s.leader_data_dir,
        "since": s.leader_since,
    }


def _role_line(s: officer_pb2.StatusResponse) -> str:
    """Who leads a node on PostgreSQL (docs/adr/0026), as the answering process sees it."""
    leader = (
        f"pid {s.leader_pid} on {s.leader_host} ({s.leader_data_dir}) since {s.leader_since}"
        if s.leader_pid
        else "unknown"
    )
    if s.role == "leader":
        return f"leader (this process: {leader})"
    return f"standby; the leader is {leader}"


def _log_problem_exit(s: officer_pb2.StatusResponse) -> None:
    """A log the node cannot sign (an insider's entry, a rolled-back tail) is unhealthy:
    say so on stderr and exit non-zero (ADR 0012)."""
    if s.log_problem_code:
        warn(f"log: {s.log_problem_code}: {s.log_problem}")
        raise click.exceptions.Exit(StoreError.exit_code)


def _transport_line(s: officer_pb2.StatusResponse) -> str:
    """What the peer port enforces, no more (docs/adr/0015-post-quantum-transport.md)."""
    version = "TLS 1.3 only" if s.tls12_refused else "TLS 1.2 ACCEPTED"
    classical = sorted(p.peer for p in s.peers if p.classical_tls_allowed)
    groups = "calls only over X25519MLKEM768"
    if classical:
        groups += f", except classical TLS allowed for {', '.join(classical)}"
    return f"{version}; {groups}"


def _sync_table(s: officer_pb2.StatusResponse) -> None:
    rows = []
    for p in s.peers:
        health = (
            "STALE" if p.stale else ("ok" if p.connected and not p.last_error_code else "attention")
        )
        rows.append(
            (
                p.peer,
                "yes" if p.connected else "no",
                _time(p.last_sync),
                p.backlog,
                p.rejected,
                p.cosigned_size,
                "yes" if p.agreement_valid else "NO",
                p.last_error_code or "-",
                health,
            )
        )
    print_table(
        "Partners",
        [
            "partner",
            "connected",
            "last sync",
            "backlog",
            "rejected",
            "cosigned size",
            "agreement",
            "last error",
            "health",
        ],
        rows,
    )
    for p in s.peers:
        if p.stale:
            warn(f"{p.peer}: no cosigned checkpoint recently; the sync is not known to be healthy")
        if p.classical_tls_allowed:
            warn(f"{p.peer}: may call over classical TLS (--allow-classical-tls)")
        for w in p.expiry_warnings:
            warn(_warning_text(p.peer, w))


@cli.group(
    epilog=examples(
        "accord --data ./pk-moi sync status",
    )
)
def sync() -> None:
    """Machine-to-machine sync with partners (runs inside 'accord serve')."""


@sync.command("status", epilog=examples("accord --data ./pk-moi sync status"))
@json_option
@pass_ctx
def sync_status(ctx: CliContext, as_json: bool) -> None:
    """Per partner: connected, last sync, backlog, rejections, cosigned checkpoint, stale."""
    s = _status(ctx)
    if as_json:
        print_json([_peer_json(p) for p in s.peers])
        return
    _sync_table(s)
