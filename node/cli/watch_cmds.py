"""``accord inbox watch``: follow new inbox items and acknowledgements live over the
Officer API's WatchInbox stream, reconnecting when the node restarts (ADR 0021)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click
import grpc

from exchange.errors import AccordError, InputError
from node.cli.base import CliContext, examples, json_option, pass_ctx
from node.cli.officer_cmds import _inbox_json, inbox
from node.cli.output import safe
from node.config import ALERT_TIMEOUT_DEFAULT, ALERT_TIMEOUT_MAX, ALERT_TIMEOUT_MIN
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_client import _error, officer
from node.services.alerts import run_command

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0


def _note(message: str) -> None:
    sys.stderr.write(safe(message) + "\n")
    sys.stderr.flush()


def _event_json(event: officer_pb2.InboxEvent) -> dict[str, Any]:
    return {
        **_inbox_json(event.item),
        "kind": event.item.kind,
        "status": event.status or None,
        "critical": event.critical,
        "cursor": event.cursor,
    }


def _line(doc: dict[str, Any], bell: bool) -> str:
    """time, partner, kind, severity, TLP, title, id; partner text escaped."""
    kind = doc["kind"] + (f" {doc['status']}" if doc["status"] else "")
    cells = [
        doc["received_at"],
        doc["peer"],
        kind,
        doc["severity"] or "-",
        f"TLP:{doc['tlp'].upper()}" if doc["tlp"] else "-",
        doc["title"] or "-",
        doc["envelope_id"],
    ]
    return ("\a" if bell and doc["critical"] else "") + "  ".join(safe(c) for c in cells)


def _exec_argv(command: str | None) -> tuple[str, ...]:
    if command is None:
        return ()
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise InputError(f"--exec: cannot be split into arguments ({e})") from e
    if not argv:
        raise InputError("--exec names no program", next_step="e.g. --exec 'notify-send-json'")
    return argv


class _Stopped(Exception):
    """SIGTERM: end the watch like Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Watch:
    """One watch across reconnects: where to resume, what was already printed."""

    def __init__(self, from_start: bool) -> None:
        self.resume = 0  # every row up to here has been handled
        self.started = False  # the first stream said where it starts
        self.from_start = from_start
        self.seen: set[int] = set()  # cursors handled above ``resume``

    def request(self) -> officer_pb2.WatchInboxRequest:
        if self.started:
            if self.resume:
                return officer_pb2.WatchInboxRequest(after=self.resume)
            return officer_pb2.WatchInboxRequest(since_now=False)  # the inbox was empty
        return officer_pb2.WatchInboxRequest(since_now=not self.from_start)

    def fresh(self, event: officer_pb2.InboxEvent) -> bool:
        """Move the resume point; True when ``event`` carries an item not handled yet."""
        if not event.HasField("item"):  # the stream's first message: where it starts
            self.started = True
            self.resume = max(self.resume, event.resume_after)
            return False
        if event.cursor <= self.resume or event.cursor in self.seen:
            return False
        self.seen.add(event.cursor)
        if event.resume_after > self.resume:
            self.resume = event.resume_after
            self.seen = {c for c in self.seen if c > self.resume}
        return True


@inbox.command(
    "watch",
    epilog=examples(
        "accord --data ./cn-mps inbox watch",
        "accord --data ./cn-mps inbox watch --json | jq -c 'select(.critical)'",
        "accord --data ./cn-mps inbox watch --exec 'notify-duty-officer --from accord'",
    ),
)
@json_option
@click.option(
    "--exec",
    "exec_cmd",
    metavar="CMD",
    help="Run CMD (split like a shell would, but no shell runs) once per item with the "
    "item's JSON object on stdin; a failure is printed to stderr and the watch goes on.",
)
@click.option(
    "--exec-timeout",
    type=click.FloatRange(ALERT_TIMEOUT_MIN, ALERT_TIMEOUT_MAX),
    default=ALERT_TIMEOUT_DEFAULT,
    show_default=True,
    help="Seconds --exec's command may run before it is killed.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after N items.")
@click.option("--no-bell", is_flag=True, help="No terminal bell on critical items.")
@click.option(
    "--from-start", is_flag=True, help="First print every item already stored, oldest first."
)
@pass_ctx
def inbox_watch(
    ctx: CliContext,
    as_json: bool,
    exec_cmd: str | None,
    exec_timeout: float,
    count: int | None,
    no_bell: bool,
    from_start: bool,
) -> None:
    """Follow new inbox items and acknowledgements live, one line each.

    Prints time, partner, kind, severity, TLP, title and id per item (critical items
    first when several arrive at once; a bell on critical unless --no-bell). Reconnects
    when the node restarts, without losing or repeating items. Exits 0 on Ctrl-C or
    SIGTERM, or after --count items.
    """
    argv = _exec_argv(exec_cmd)
    watch = _Watch(from_start)
    printed = 0
    delay = BACKOFF_FIRST
    lost: str | None = None
    announced = False
    try:
        with _sigterm_stops():
            while True:
                try:
                    with officer(ctx.data_dir) as stub:
                        for event in stub.WatchInbox(watch.request()):
                            if not event.HasField("item"):  # the stream's first message
                                if lost is not None:
                                    _note("reconnected to the node; watching again")
                                elif not announced:
                                    _note(f"watching the inbox of {ctx.data_dir} (Ctrl-C stops)")
                                lost, announced = None, True
                                delay = 0.0  # connected: the next outage backs off anew
                            if not watch.fresh(event):
                                continue
                            _handle(_event_json(event), as_json, not no_bell, argv, exec_timeout)
                            printed += 1
                            if count is not None and printed >= count:
                                return
                    reason = "the node stopped"
                except grpc.RpcError as e:
                    reason = _error(e).code
                except AccordError as e:
                    reason = e.code
                if lost is None:
                    _note(f"lost the node ({reason}); reconnecting")
                    lost = reason
                delay = min(max(delay * 2, BACKOFF_FIRST), BACKOFF_MAX)
                time.sleep(delay)
    except (KeyboardInterrupt, _Stopped):
        return


def _handle(
    doc: dict[str, Any], as_json: bool, bell: bool, argv: tuple[str, ...], timeout: float
) -> None:
    line = json.dumps(doc, sort_keys=True, ensure_ascii=True)
    if as_json:
        sys.stdout.write(line + "\n")
    else:
        sys.stdout.write(_line(doc, bell) + "\n")
    sys.stdout.flush()
    if argv:
        result = run_command(argv, (line + "\n").encode(), timeout)
        if not result.ok:
            code = f" {result.exit_code}" if result.exit_code is not None else ""
            _note(f"--exec failed for {doc['envelope_id']}: {result.reason}{code}")
