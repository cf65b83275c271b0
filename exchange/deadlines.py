"""Deadlines of the warning loop (docs/DESIGN.md §7a, ADR 0022); pure.

A report whose disclosed ``severity`` (with its SOP) has a response rule in the agreement
in force must be acknowledged, and answered, within the rule's durations. The clock starts
when the **receiving node applied the envelope** (the time in its log and in the signed
receipt it returns), never at the sender's ``created_at``: a back-dated envelope cannot put
the receiver in breach on arrival. Both sides compute the same times from the same
signed values; the sender waits out the documented clock skew before it calls its
partner overdue.

States of each of the two steps (acknowledge, respond):
``due`` (open, deadline ahead), ``overdue`` (open, deadline passed), ``met`` (done in
time), ``late`` (done after the deadline). A step with no rule is ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from exchange.events import Event
from exchange.times import format_time, parse_time

# How long the sender waits past a deadline before it calls its partner overdue: a tenth
# of the step's duration, at most the clock skew Accord tolerates everywhere (5 minutes,
# docs/THREATS.md W02), so a partner's clock a little behind ours is not a breach.
SENDER_GRACE: Final = timedelta(minutes=5)


def sender_grace(duration: timedelta) -> timedelta:
    return min(SENDER_GRACE, duration / 10)


STEPS: Final = ("acknowledge", "respond")

# (sop, severity) -> (acknowledge within, respond within or None), or None without a rule.
RuleLookup = Callable[[str, str], tuple[timedelta, timedelta | None] | None]


def applicable_rule(
    lookup: RuleLookup, sop: str, disclosed: Mapping[str, Any]
) -> tuple[timedelta, timedelta | None] | None:
    """The rule for a report as the receiver sees it: only a disclosed ``severity`` counts
    (a withheld or derived one selects nothing, on both sides alike)."""
    severity = disclosed.get("severity")
    if not isinstance(severity, str):
        return None
    return lookup(sop, severity)


@dataclass(frozen=True)
class Deadline:
    """One report's deadlines in one direction: ``incoming`` (we must answer the partner)
    or outgoing (the partner must answer us)."""

    incoming: bool
    peer: str
    envelope_id: str
    seq: int
    report_id: str
    version: int
    acknowledge: timedelta
    respond: timedelta | None
    started_at: datetime
    acked_at: datetime | None = None
    replied_at: datetime | None = None
    ack_overdue_logged: bool = False
    respond_overdue_logged: bool = False

    @property
    def acknowledge_by(self) -> datetime:
        return self.started_at + self.acknowledge

    @property
    def respond_by(self) -> datetime | None:
        return None if self.respond is None else self.started_at + self.respond

    def by(self, step: str) -> datetime | None:
        return self.acknowledge_by if step == "acknowledge" else self.respond_by

    def done_at(self, step: str) -> datetime | None:
        return self.acked_at if step == "acknowledge" else self.replied_at

    def _limit(self, step: str) -> datetime | None:
        by = self.by(step)
        duration = self.acknowledge if step == "acknowledge" else self.respond
        if by is None or duration is None:
            return None
        return by if self.incoming else by + sender_grace(duration)

    def state(self, step: str, now: datetime) -> str | None:
        limit = self._limit(step)
        if limit is None:
            return None
        done = self.done_at(step)
        if done is not None:
            return "met" if done <= limit else "late"
        return "overdue" if now >= limit else "due"

    def overdue_now(self, now: datetime) -> list[str]:
        """Steps that are overdue at ``now`` and not reported yet (each is reported once:
        the caller records it; a clock stepping back never un-reports, W02)."""
        logged = {"acknowledge": self.ack_overdue_logged, "respond": self.respond_overdue_logged}
        return [s for s in STEPS if self.state(s, now) == "overdue" and not logged[s]]

    def urgency(self, now: datetime) -> tuple[int, datetime]:
        """Sort key: overdue first, then open steps by their deadline, then the rest."""
        opens = [(s, self._limit(s)) for s in STEPS if self.state(s, now) in ("due", "overdue")]
        if not opens:
            return (2, self.started_at)
        first = min(limit for _, limit in opens if limit is not None)
        return (0 if first <= now else 1, first)

    def summary(self, now: datetime) -> str:
        """``OVERDUE``, ``DUE`` (with the nearest open deadline), or the outcome."""
        states = {s: self.state(s, now) for s in STEPS}
        if "overdue" in states.values():
            return "OVERDUE"
        if "due" in states.values():
            return "DUE"
        if "late" in states.values():
            return "LATE"
        return "MET"

    def to_json(self, now: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.summary(now)}
        for step in STEPS:
            by = self.by(step)
            done = self.done_at(step)
            out[step] = (
                None
                if by is None
                else {
                    "by": format_time(by),
                    "done_at": None if done is None else format_time(done),
                    "state": self.state(step, now),
                }
            )
        return out


# ---- offline: the procedure from the two logs -------------------------------------------------


@dataclass(frozen=True)
class ProcedureLine:
    """One alert with a response rule, as the two logs show it."""

    sender: str
    receiver: str
    report_id: str
    version: int
    envelope_id: str
    acknowledge_by: str
    acked_at: str | None
    acknowledge: str  # met | late | missed | open
    respond_by: str | None
    replied_at: str | None
    respond: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.sender,
            "to": self.receiver,
            "report_id": self.report_id,
            "version": self.version,
            "envelope_id": self.envelope_id,
            "acknowledge_by": self.acknowledge_by,
            "acked_at": self.acked_at,
            "acknowledge": self.acknowledge,
            "respond_by": self.respond_by,
            "replied_at": self.replied_at,
            "respond": self.respond,
        }


@dataclass
class ProcedureReport:
    lines: list[ProcedureLine] = field(default_factory=list)

    @property
    def breaches(self) -> int:
        return sum(
            1
            for line in self.lines
            for outcome in (line.acknowledge, line.respond)
            if outcome in ("late", "missed")
        )

    @property
    def met(self) -> int:
        outcomes = [o for line in self.lines for o in (line.acknowledge, line.respond)]
        return outcomes.count("met")

    def to_json(self) -> dict[str, Any]:
        return {
            "met": self.met,
            "breaches": self.breaches,
            "alerts": [line.to_json() for line in self.lines],
        }


def _outcome(by: str, done: str | None, end: str) -> str:
    if done is not None:
        return "met" if done <= by else "late"
    return "missed" if end > by else "open"


def procedure(
    node_a: str, events_a: Iterable[Event], node_b: str, events_b: Iterable[Event]
) -> ProcedureReport:
    """Per alert with a response rule (an ``envelope.received`` carrying
    ``acknowledge_by``), when it was acknowledged (the receiver's first ``ack.sent`` for
    that envelope) and answered (its first ``report.sealed`` with ``in_reply_to`` the
    report id), against the deadlines its own log recorded. A step still open at the end of
    both logs (the latest ``at`` either shows) is ``open``, past it ``missed``."""
    a, b = list(events_a), list(events_b)
    end = max((e.at for e in (*a, *b)), default="")
    report = ProcedureReport()
    for receiver, received in ((node_a, a), (node_b, b)):
        sender = node_b if receiver == node_a else node_a
        acks: dict[str, str] = {}
        replies: dict[str, str] = {}
        for e in received:
            if e.kind == "ack.sent" and e.attrs.get("peer") == sender:
                acks.setdefault(str(e.attrs.get("item_envelope_id")), e.at)
            if e.kind == "report.sealed" and isinstance(e.attrs.get("in_reply_to"), str):
                replies.setdefault(str(e.attrs["in_reply_to"]), e.at)
        for e in received:
            by = e.attrs.get("acknowledge_by")
            if e.kind != "envelope.received" or e.attrs.get("peer") != sender:
                continue
            if not isinstance(by, str) or not _is_time(by):
                continue
            envelope_id = str(e.attrs.get("envelope_id"))
            report_id = str(e.attrs.get("report_id"))
            raw = e.attrs.get("respond_by")
            respond_by = raw if isinstance(raw, str) and _is_time(raw) else None
            acked = acks.get(envelope_id)
            replied = replies.get(report_id)
            version = e.attrs.get("version")
            report.lines.append(
                ProcedureLine(
                    sender=sender,
                    receiver=receiver,
                    report_id=report_id,
                    version=version if isinstance(version, int) else 0,
                    envelope_id=envelope_id,
                    acknowledge_by=by,
                    acked_at=acked,
                    acknowledge=_outcome(by, acked, end),
                    respond_by=respond_by,
                    replied_at=replied if respond_by is not None else None,
                    respond=None if respond_by is None else _outcome(respond_by, replied, end),
                )
            )
    return report


def _is_time(text: str) -> bool:
    try:
        parse_time(text, field="deadline")
    except Exception:
        return False
    return True


__all__ = [
    "SENDER_GRACE",
    "STEPS",
    "Deadline",
    "ProcedureLine",
    "ProcedureReport",
    "RuleLookup",
    "applicable_rule",
    "procedure",
    "sender_grace",
]
