"""The warning loop for liaison officers (ADR 0022): acknowledge a received report, reply
with the measures taken. Deadlines show in ``inbox list``, ``report list/show`` and
``status``; the thread in ``report show`` and ``inbox show``."""

from __future__ import annotations

import getpass
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import click

from exchange.ack import ACK_STATUSES, MAX_NOTE_CHARS
from exchange.errors import InputError
from node.cli.base import CliContext, examples, json_option, pass_ctx
from node.cli.officer_cmds import inbox, print_submitted
from node.cli.output import ok, print_json, say, warn
from node.cli.report_cmds import read_report_file, report
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_client import call, officer

REPLY_SOP = "response@1"


def officer_name(given: str | None) -> str:
    """Who acknowledges: ``--officer``, else ``$ACCORD_OFFICER``, else the login that ran
    ``sudo`` (``$SUDO_USER``), else this process's login name. The Officer socket admits
    only the node's OS user (mode 0600), so the name is as good as the host's logins."""
    for name in (given, os.environ.get("ACCORD_OFFICER"), os.environ.get("SUDO_USER")):
        if name:
            return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise InputError(
            "cannot tell who you are from the system",
            code="ack.no_officer",
            next_step="Give your name with --officer NAME (or set ACCORD_OFFICER).",
        ) from None


def answered_item(ctx: CliContext, given: str) -> officer_pb2.InboxItem:
    """The received report an answer is for (its inbox id or a unique prefix)."""
    with officer(ctx.data_dir) as stub:
        answer: officer_pb2.GetInboxResponse = call(
            stub.GetInbox, officer_pb2.GetInboxRequest(envelope_id=given, form="json")
        )
    if answer.item.kind != "report":
        raise InputError(
            f"{given} is a {answer.item.kind}, not a report", code="reply.not_a_report"
        )
    return answer.item


@inbox.command(
    "ack",
    epilog=examples(
        "accord --data ./cn-mps inbox ack 0193f2c5 --status accepted",
        'accord --data ./cn-mps inbox ack 0193f2c5 --status actioned --note "patrols doubled"',
    ),
)
@click.argument("envelope_id", metavar="ID")
@click.option(
    "--status",
    type=click.Choice(ACK_STATUSES),
    required=True,
    help="received: seen; accepted: taken on; actioned: measures taken; rejected: not taken.",
)
@click.option(
    "--note", help=f"Free text for the originator (at most {MAX_NOTE_CHARS}; never logged)."
)
@click.option("--officer", "officer_given", metavar="NAME", help="Who acknowledges (default: you).")
@json_option
@pass_ctx
def inbox_ack(
    ctx: CliContext,
    envelope_id: str,
    status: str,
    note: str | None,
    officer_given: str | None,
    as_json: bool,
) -> None:
    """Acknowledge a received report: signed by this node, sent back to its author.

    The acknowledgement names the item, the status, the time and you; it travels like a
    report (encrypted, exactly once, receipted) and meets the agreement's deadline when it
    is given in time. The note is shown to the partner's officers and never logged.
    """
    name = officer_name(officer_given)
    with officer(ctx.data_dir) as stub:
        answer = call(
            stub.AckInbox,
            officer_pb2.AckInboxRequest(
                envelope_id=envelope_id, status=status, note=note or "", officer=name
            ),
        )
    acked_at = answer.acked_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    if as_json:
        print_json(
            {
                "item": answer.item_envelope_id,
                "peer": answer.peer,
                "report_id": answer.report_id,
                "status": status,
                "officer": name,
                "acked_at": acked_at,
                "ack_envelope_id": answer.ack_envelope_id,
                "seq": answer.seq,
                "delivery": "sent" if answer.partner_connected else "queued",
            }
        )
        return
    ok(f"{status} sent to {answer.peer} for report {answer.report_id} (by {name}, {acked_at})")
    if not answer.partner_connected:
        warn(f"{answer.peer} is not connected: the acknowledgement waits in the outbox")
        say(f"  next: it goes when {answer.peer} pulls; check 'accord sync status'")


def _reply_fields(file: Path) -> tuple[dict[str, Any], str | None]:
    """A reply file: either a whole report (``sop``, ``tlp``, ``fields``) or just the
    fields of response@1 (JSON or TOML). Returns the fields and the TLP if given."""
    data, fmt = read_report_file(file)
    try:
        doc = json.loads(data) if fmt == "json" else tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: not valid {fmt.upper()} ({e})") from e
    if not isinstance(doc, dict):
        raise InputError(f"{file}: a reply is an object of fields")
    if "fields" in doc:
        if doc.get("sop", REPLY_SOP) != REPLY_SOP:
            raise InputError(f"{file}: a reply is a {REPLY_SOP} report", code="reply.sop")
        fields = doc["fields"]
        if not isinstance(fields, dict):
            raise InputError(f"{file}: fields must be an object")
        tlp = doc.get("tlp")
        return dict(fields), tlp if isinstance(tlp, str) else None
    return dict(doc), None


@report.command(
    "reply",
    epilog=examples(
        "accord --data ./cn-mps report reply 0193f2c5 measures.toml",
        "accord --data ./cn-mps report reply 0193f2c5 measures.json --tlp amber --json",
    ),
)
@click.argument("envelope_id", metavar="ID")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option(
    "--tlp",
    type=click.Choice(["clear", "green", "amber", "amber+strict", "red"]),
    help="TLP of the reply (default: the file's, else that of the report it answers).",
)
@json_option
@pass_ctx
def report_reply(
    ctx: CliContext, envelope_id: str, file: Path, tlp: str | None, as_json: bool
) -> None:
    """Answer a received report with the measures taken (a response@1 report).

    FILE holds the reply's fields (status, title, measures_taken, next_update_due,
    point_of_contact, summary) as JSON or TOML; in_reply_to is set to the report it
    answers. It is sealed and released under the policy and agreement like any report.
    """
    item = answered_item(ctx, envelope_id)
    fields, file_tlp = _reply_fields(file)
    given = fields.get("in_reply_to")
    if given is not None and given != item.report_id:
        raise InputError(
            "in_reply_to in the file names another report than ID",
            code="reply.mismatch",
            next_step="Leave in_reply_to out of the file: it is set from ID.",
        )
    fields["in_reply_to"] = item.report_id
    document = {"sop": REPLY_SOP, "tlp": tlp or file_tlp or item.tlp, "fields": fields}
    with officer(ctx.data_dir) as stub:
        answer = call(
            stub.Submit, officer_pb2.SubmitRequest(report=json.dumps(document).encode("utf-8"))
        )
    print_submitted(
        answer,
        as_json,
        f"reply {answer.report_id} to {item.peer}'s report {item.report_id} sealed",
    )
