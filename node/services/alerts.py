"""Escalation commands (``[alerts]`` in config.toml, docs/adr/0021-alert-commands.md).

An operator attaches a command to an event (``on_critical``: a critical report arrived;
``on_overdue``: an acknowledge or respond deadline passed). The command gets ONE JSON
object on stdin with the keys of :data:`ALERT_KEYS` and nothing else (so no field value
beyond these can reach it: no title, no site, nothing withheld), runs in its own process
group with a timeout (the group is killed when it runs over), with its stdout and stderr
discarded. A failure (non-zero exit, timeout, missing program) is logged as
``alert.command_failed`` and never raised: an escalation command cannot change what the
node stores, logs or answers. Neither the stdin nor the output is ever logged.

Interfaces::

    runner = AlertRunner(node.config.alerts)
    await runner.fire("overdue", {...})      # runs the command, returns its CommandResult
    runner.fire_soon("critical", {...})      # schedules it on the running loop
    await runner.drain()                     # waits for everything scheduled (tests, stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from node.config import AlertsConfig

if TYPE_CHECKING:
    from node.services.inbox import AppliedItem

log = structlog.get_logger("accord.alerts")

AlertEvent = Literal["critical", "overdue"]
EVENTS: tuple[str, ...] = ("critical", "overdue")
# Every key the command's stdin object has (all of them, null when the caller has no
# value); anything else a caller passes is dropped.
ALERT_KEYS: tuple[str, ...] = (
    "event",
    "partner",
    "envelope_id",
    "report_id",
    "version",
    "sop",
    "severity",
    "tlp",
    "received_at",
    "due",
    "which",
)
WHICH = ("acknowledge", "respond")
MAX_VALUE_CHARS = 256  # ids, names and times are short; a longer value is not ours


@dataclass(frozen=True)
class CommandResult:
    """How one run ended: ``reason`` is "ok", "exit" (non-zero), "timeout", "not_found",
    "not_executable" or "error" (could not start for another OS reason)."""

    ok: bool
    reason: str
    exit_code: int | None = None
    duration_ms: int = 0


def _value(value: object) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= MAX_VALUE_CHARS:
        return value
    return None


def alert_payload(event: str, values: Mapping[str, object]) -> dict[str, str | int | None]:
    """The stdin object: exactly :data:`ALERT_KEYS`, each a short string, an int or null.
    Keys not in the list, and values of another type (lists, objects, long text), are
    dropped; ``event`` is the one given here, ``which`` is kept only for "overdue"."""
    if event not in EVENTS:
        raise ValueError(f"unknown alert event {event!r}")
    out = {key: _value(values.get(key)) for key in ALERT_KEYS}
    out["event"] = event
    if event != "overdue" or out["which"] not in WHICH:
        out["which"] = None
    return out


def critical_payload(item: AppliedItem) -> dict[str, str | int | None]:
    """The ``on_critical`` object for one applied report (``due`` comes from the
    acknowledge deadline when one is known; null here)."""
    return alert_payload(
        "critical",
        {
            "partner": item.peer,
            "envelope_id": item.envelope_id,
            "report_id": item.report_id,
            "version": item.version,
            "sop": item.sop,
            "severity": item.severity,
            "tlp": item.tlp,
            "received_at": item.received_at,
            "due": None,
        },
    )


def run_command(argv: Sequence[str], stdin: bytes, timeout: float) -> CommandResult:
    """Run ``argv`` (no shell) with ``stdin``, output discarded, in a new process group
    that is killed (SIGKILL) when it runs longer than ``timeout`` seconds. Blocking: call
    it from a thread (:meth:`AlertRunner.fire` does)."""
    started = time.monotonic()

    def done(ok: bool, reason: str, code: int | None = None) -> CommandResult:
        return CommandResult(ok, reason, code, int((time.monotonic() - started) * 1000))

    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a timeout kills all of it
            close_fds=True,
        )
    except FileNotFoundError:
        return done(False, "not_found")
    except PermissionError:
        return done(False, "not_executable")
    except OSError:
        return done(False, "error")
    try:
        proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return done(False, "timeout")
    finally:
        if proc.poll() is None:  # an exception other than the timeout: leave nothing behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        return done(False, "exit", proc.returncode)
    return done(True, "ok", 0)


class AlertRunner:
    """Runs the configured command of an event; never raises to its caller and never
    blocks the event loop (the process runs from a worker thread)."""

    def __init__(self, config: AlertsConfig) -> None:
        self._config = config
        self._pending: set[asyncio.Task[CommandResult | None]] = set()

    def command_for(self, event: str) -> tuple[str, ...]:
        return {"critical": self._config.on_critical, "overdue": self._config.on_overdue}.get(
            event, ()
        )

    async def fire(self, event: str, payload: Mapping[str, object]) -> CommandResult | None:
        """Run ``event``'s command with ``payload`` (filtered by :func:`alert_payload`);
        None when no command is configured for it."""
        try:
            argv = self.command_for(event)
            if not argv:
                return None
            body = alert_payload(event, payload)
            dropped = sorted(set(payload) - set(ALERT_KEYS))
            if dropped:  # the names only, never a value
                log.warning("alert.payload_keys_dropped", kind=event, fields=dropped)
            stdin = (json.dumps(body, sort_keys=True, ensure_ascii=True) + "\n").encode()
            result = await asyncio.to_thread(run_command, argv, stdin, self._config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never to the caller: the node goes on as before
            log.error("alert.command_failed", kind=event, reason="error", error=type(e).__name__)
            return CommandResult(False, "error")
        if result.ok:
            log.info(
                "alert.command_ran",
                kind=event,
                duration_ms=result.duration_ms,
            )
        else:
            log.warning(
                "alert.command_failed",
                kind=event,
                reason=result.reason,
                exit_code=result.exit_code,
                duration_ms=result.duration_ms,
            )
        return result

    def fire_soon(self, event: str, payload: Mapping[str, object]) -> None:
        """Schedule :meth:`fire` on the running loop and return at once."""
        if not self.command_for(event):
            return
        task = asyncio.get_running_loop().create_task(self.fire(event, dict(payload)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def on_applied(self, items: Iterable[AppliedItem]) -> None:
        """After a batch committed: fire ``on_critical`` once per applied report whose
        disclosed severity is "critical"."""
        for item in items:
            if item.kind == "report" and item.severity == "critical":
                self.fire_soon("critical", critical_payload(item))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scheduled command has ended (bounded by ``timeout``)."""
        while self._pending:
            _done, stuck = await asyncio.wait(set(self._pending), timeout=timeout)
            if stuck:
                for task in stuck:
                    task.cancel()
                return

    @property
    def pending(self) -> int:
        return len(self._pending)
