"""The warning loop on a node (docs/DESIGN.md §7a, ADR 0022): acknowledgements sent and
received, deadlines in both directions, replies, overdue detection, read marks.

The rules are pure (``exchange/ack.py``, ``exchange/deadlines.py``, ``exchange/receiver.py``);
this module persists what they decide, inside the caller's transaction where a batch is
being applied or sealed, so a deadline, an acknowledgement and the envelope that carried it
commit together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from exchange.ack import ACK_STATUSES, make_ack, parse_ack_unverified
from exchange.agreement import VerifiedAgreement
from exchange.canonical import b64, b64_decode, canonical_json, sha256_digest
from exchange.deadlines import Deadline, RuleLookup, applicable_rule
from exchange.envelope import AckRelease, VerifiedRelease, seal_envelope
from exchange.errors import InputError, PolicyError, StoreError
from exchange.times import format_time, parse_time
from node.home import Node
from node.logsetup import failure_level
from node.store import Tx
from node.values import AckRecord, AckSent

REPLY_SOP = "response@1"
log = structlog.get_logger("accord.warning")


def rule_lookup(agreement: VerifiedAgreement | None) -> RuleLookup:
    """The agreement's response rules as a lookup (nothing without an agreement)."""

    def lookup(sop: str, severity: str) -> tuple[timedelta, timedelta | None] | None:
        if agreement is None:
            return None
        rule = agreement.response_rule(sop, severity)
        return None if rule is None else (rule.acknowledge, rule.respond)

    return lookup


def has_rules(agreement: VerifiedAgreement | None) -> bool:
    return agreement is not None and bool(agreement.agreement.response)


# ---- receiving: deadlines, acknowledgements and replies from the partner ---------------------


def on_applied(
    node: Node,
    db: Tx,
    peer: str,
    release: VerifiedRelease,
    agreement: VerifiedAgreement,
    now: datetime,
) -> dict[str, Any]:
    """Persist what an applied envelope means for the loop; return the attributes its
    ``envelope.received`` event carries (deadlines: times, never a field value)."""
    header = release.header
    if release.ack is not None:
        return {}
    report = release.report
    if report is None:
        return {}
    attrs: dict[str, Any] = {}
    rule = applicable_rule(rule_lookup(agreement), report.sop, report.fields)
    if rule is not None:
        acknowledge, respond = rule
        node.store.loop.add_deadline(
            db,
            "in",
            peer,
            header.id,
            header.seq,
            report.report_id,
            report.version,
            int(acknowledge.total_seconds()),
            None if respond is None else int(respond.total_seconds()),
            format_time(now),
        )
        attrs["acknowledge_by"] = format_time(now + acknowledge)
        if respond is not None:
            attrs["respond_by"] = format_time(now + respond)
    answered = report.fields.get("in_reply_to") if report.sop == REPLY_SOP else None
    if isinstance(answered, str):
        node.store.loop.add_reply(
            db, "in", peer, report.report_id, report.version, header.id, answered, format_time(now)
        )
        node.store.loop.deadline_replied(db, "out", peer, answered, format_time(now))
        attrs["in_reply_to"] = answered
    return attrs


def on_ack_received(node: Node, db: Tx, peer: str, release: VerifiedRelease, now: datetime) -> None:
    """The partner acknowledged one of our reports: its outgoing deadline is met (or late),
    and the log says so (status and times; the note stays in the sealed inbox record)."""
    ack, signed = release.ack, release.ack_signed
    assert ack is not None and signed is not None
    node.store.loop.add_ack_received(db, sha256_digest(signed.statement), peer, release.header.id)
    node.store.loop.deadline_acked(db, "out", peer, ack.envelope_id, ack.acked_at)
    node.record(
        db,
        "ack.received",
        now,
        peer=peer,
        envelope_id=release.header.id,
        item_envelope_id=ack.envelope_id,
        report_id=ack.report_id,
        version=ack.version,
        status=ack.status,
        acked_at=ack.acked_at,
    )


def sent_at(node: Node, peer: str) -> Any:
    """For the receiver: when we released a version of our report to ``peer``."""

    def lookup(report_id: str, version: int, jwt_digest: str) -> datetime | None:
        at = node.store.outbox.first_release_time(peer, report_id, version, jwt_digest)
        return None if at is None else parse_time(at, field="outbox created_at")

    return lookup


def ack_held(node: Node, peer: str) -> Any:
    """For the receiver: that acknowledgement statement (by digest) was received before."""

    def held(digest: str) -> bool:
        return node.store.loop.ack_received(digest, peer)

    return held


# ---- sending: deadlines of what we release, receipts, our acknowledgements --------------------


def on_released(
    node: Node,
    db: Tx,
    peer: str,
    agreement: VerifiedAgreement | None,
    envelope_id: str,
    seq: int,
    sop: str,
    released: Mapping[str, Any],
    report_id: str,
    version: int,
    now: datetime,
) -> None:
    """A report released to ``peer`` with a response rule for what it discloses: the
    partner's deadlines (started now, moved to the arrival time its receipt states)."""
    rule = applicable_rule(rule_lookup(agreement), sop, released)
    if rule is None:
        return
    acknowledge, respond = rule
    node.store.loop.add_deadline(
        db,
        "out",
        peer,
        envelope_id,
        seq,
        report_id,
        version,
        int(acknowledge.total_seconds()),
        None if respond is None else int(respond.total_seconds()),
        format_time(now),
    )


def on_receipt(node: Node, db: Tx, peer: str, first: int, last: int, received_at: str) -> None:
    """The partner's signed receipt says when it applied seqs first..last: its clock
    started then (never earlier than our release)."""
    node.store.loop.deadlines_started(db, peer, first, last, received_at)


def _ack_aad(ack_envelope_id: str) -> bytes:
    return f"accord/v1/ack-at-rest\n{ack_envelope_id}".encode("ascii")


def acknowledge(
    node: Node,
    envelope_id: str,
    status: str,
    officer: str,
    note: str | None,
    now: datetime,
) -> AckSent:
    """Sign an acknowledgement of a received report and queue it for its issuer."""
    from node.services.agreements import current_agreement
    from node.services.inbox import get_inbox
    from node.services.outbox import ENCRYPTOR, next_seq, recipient_key, store_envelope
    from node.services.policy import active_policy

    if status not in ACK_STATUSES:
        raise InputError(
            f"--status must be one of {', '.join(ACK_STATUSES)}", code="ack.bad_status"
        )
    item, content = get_inbox(node, envelope_id)
    if item.kind != "report":
        raise InputError(f"{envelope_id} is a {item.kind}, not a report", code="ack.not_a_report")
    peer = item.peer
    agreement = current_agreement(node, peer, now)
    if agreement is None:
        raise PolicyError(
            f"no agreement with {peer} is in force: nothing can be sent to it",
            code="policy.no_agreement",
            next_step="Sign a current agreement with the partner first.",
        )
    if not has_rules(agreement):
        raise PolicyError(
            f"the agreement with {peer} has no response rules, so its node may not understand "
            "acknowledgements",
            code="ack.no_rules",
            next_step="Propose a superseding agreement with [response] rules "
            "(see 'accord agreement propose --help').",
        )
    me = node.config.node
    jwt_digest = str(json.loads(content["release"])["issuer_jwt_digest"])  # as verified
    ack, signed = make_ack(
        sender=me,
        recipient=peer,
        report_id=item.report_id,
        version=item.version,
        issuer_jwt_digest=jwt_digest,
        envelope_id=envelope_id,
        status=status,
        officer=officer,
        now=now,
        note=note,
        signer=node.keyring().identity_signer(),
    )
    card = node.trust_store().trusted_chain(peer, now).latest
    suite = agreement.agreement.suite
    policy = active_policy(node, now)
    policy_digest = policy.digest if policy is not None else _empty_policy_digest()
    with node.store.transaction() as db:
        ack_envelope_id, seq = _uuid7(), next_seq(node, peer)
        env = seal_envelope(
            AckRelease(ack, signed, agreement.digest, policy_digest),
            envelope_id=ack_envelope_id,
            sender=me,
            recipient=peer,
            seq=seq,
            recipient_key=recipient_key(card, suite, now),
            suite=suite,
            now=now,
            signer=node.keyring().identity_signer(),
            encryptor=ENCRYPTOR,
        )
        digest = store_envelope(
            node, db, peer, seq, ack_envelope_id, "ack", item.report_id, item.version, env, now
        )
        sealed = (
            node.keyring()
            .storage_cipher()
            .encrypt(
                canonical_json(
                    {"statement": b64(signed.statement), "signature": b64(signed.signature)}
                ),
                _ack_aad(ack_envelope_id),
            )
        )
        node.store.loop.add_ack_sent(
            db,
            (
                ack_envelope_id,
                peer,
                seq,
                envelope_id,
                item.report_id,
                item.version,
                status,
                ack.acked_at,
                sealed,
            ),
        )
        node.store.loop.deadline_acked(db, "in", peer, envelope_id, ack.acked_at)
        node.record(
            db,
            "release.decided",
            now,
            peer=peer,
            report_id=item.report_id,
            version=item.version,
            envelope_kind="ack",
            envelope_id=ack_envelope_id,
            seq=seq,
            envelope_digest=digest,
            agreement_digest=agreement.digest,
            policy_digest=policy_digest,
        )
        node.record(
            db,
            "ack.sent",
            now,
            peer=peer,
            envelope_id=ack_envelope_id,
            item_envelope_id=envelope_id,
            report_id=item.report_id,
            version=item.version,
            status=status,
            seq=seq,
        )
    node.checkpoint(now)
    return AckSent(peer, ack_envelope_id, seq, ack)


def _uuid7() -> str:
    from node.ids import uuid7

    return uuid7()


def _empty_policy_digest() -> str:
    from types import MappingProxyType

    from exchange.policy import Policy

    return Policy(MappingProxyType({})).digest


def sent_acks(node: Node, *, item_envelope_id: str | None = None) -> list[AckRecord]:
    """Our acknowledgements, each read back from its sealed statement (the AEAD tag proves
    we stored it; a row whose columns disagree with its statement is refused)."""
    out = []
    cipher = node.keyring().storage_cipher()
    for ack_id, peer, item_id, status, acked_at, sealed in node.store.loop.acks_sent(
        item_envelope_id
    ):
        record = json.loads(cipher.decrypt(bytes(sealed), _ack_aad(ack_id)))
        statement = b64_decode(record["statement"], what="ack statement")
        ack = parse_ack_unverified(statement)
        if (ack.envelope_id, ack.status, ack.acked_at, ack.recipient) != (
            item_id,
            status,
            acked_at,
            peer,
        ):
            raise StoreError(
                f"stored acknowledgement {ack_id} disagrees with its signed statement",
                code="store.row_tampered",
                next_step="Restore the database from a backup and run 'accord status'.",
            )
        out.append(AckRecord("sent", peer, ack_id, ack, sha256_digest(statement)))
    return out


# ---- deadlines: reading, overdue -----------------------------------------------------------


def _deadline(row: Sequence[Any]) -> Deadline:
    def t(v: object) -> datetime | None:
        return None if v is None else parse_time(v, field="deadline time")

    started = t(row[8])
    assert started is not None
    return Deadline(
        incoming=row[0] == "in",
        peer=str(row[1]),
        envelope_id=str(row[2]),
        seq=int(row[3]),
        report_id=str(row[4]),
        version=int(row[5]),
        acknowledge=timedelta(seconds=int(row[6])),
        respond=None if row[7] is None else timedelta(seconds=int(row[7])),
        started_at=started,
        acked_at=t(row[9]),
        replied_at=t(row[10]),
        ack_overdue_logged=row[11] is not None,
        respond_overdue_logged=row[12] is not None,
    )


def deadlines(
    node: Node,
    *,
    incoming: bool | None = None,
    peer: str | None = None,
    envelope_id: str | None = None,
    report_id: str | None = None,
    which: str | None = None,
) -> list[Deadline]:
    """Deadlines as stored. ``which="unreported"``: a step neither done nor reported
    overdue yet (what the overdue check reads); ``"unfinished"``: a step not done (what
    status counts). Both leave years of finished history unread."""
    direction = None if incoming is None else ("in" if incoming else "out")
    rows = node.store.loop.deadlines(direction, peer, envelope_id, report_id, which)
    return [_deadline(r) for r in rows]


@dataclass(frozen=True)
class Overdue:
    deadline: Deadline
    step: str  # "acknowledge" | "respond"
    due: datetime


def check_overdue(node: Node, now: datetime) -> list[Overdue]:
    """Every step that passed its deadline and was not reported yet: one ``ack.overdue``
    event each (ids and times, no field value), recorded once; a clock that steps back
    never reports it again, and one that steps forward reports it at the next check (W02)."""
    found: list[Overdue] = []
    for d in deadlines(node, which="unreported"):
        for step in d.overdue_now(now):
            by = d.by(step)
            assert by is not None
            found.append(Overdue(d, step, by))
    if not found:
        return []
    with node.store.transaction() as db:
        for o in found:
            changed = node.store.loop.mark_overdue(
                db,
                o.step,
                format_time(now),
                "in" if o.deadline.incoming else "out",
                o.deadline.peer,
                o.deadline.envelope_id,
            )
            if not changed:
                continue
            node.record(
                db,
                "ack.overdue",
                now,
                peer=o.deadline.peer,
                direction="in" if o.deadline.incoming else "out",
                envelope_id=o.deadline.envelope_id,
                report_id=o.deadline.report_id,
                version=o.deadline.version,
                step=o.step,
                due=format_time(o.due),
            )
    node.checkpoint(now)
    return found


def mark_read(node: Node, envelope_id: str, now: datetime) -> None:
    with node.store.transaction() as db:
        node.store.loop.mark_read(db, envelope_id, format_time(now))


def read_ids(node: Node) -> set[str]:
    return node.store.loop.read_ids()


def replies(node: Node, *, in_reply_to: str) -> list[dict[str, Any]]:
    rows = node.store.loop.replies(in_reply_to)
    return [
        {
            "direction": "received" if r[0] == "in" else "sent",
            "peer": r[1],
            "report_id": r[2],
            "version": r[3],
            "envelope_id": r[4],
            "at": r[5],
        }
        for r in rows
    ]


def on_reply_sealed(
    node: Node,
    db: Tx,
    report_id: str,
    version: int,
    in_reply_to: str,
    now: datetime,
) -> str:
    """One of our reports answers a partner's report: the thread, and our incoming
    deadline to respond. Returns the partner whose report it answers."""
    peer = node.store.inbox.first_report_peer(db, in_reply_to)
    if peer is None:
        raise InputError(
            "fields.in_reply_to names no report received from a partner",
            code="report.reply_unknown",
            next_step="Reply to an item of 'accord inbox list': 'accord report reply ID FILE'.",
        )
    node.store.loop.add_reply(
        db, "out", peer, report_id, version, f"{report_id}:{version}", in_reply_to, format_time(now)
    )
    node.store.loop.deadline_replied(db, "in", peer, in_reply_to, format_time(now))
    return peer


class DeadlineWatch:
    """The serving node's deadline check: every ``interval`` seconds, log each newly
    overdue step once (``ack.overdue``) and hand it to ``on_overdue`` (the operator's
    ``[alerts] on_overdue`` command). ``checks`` counts completed checks for tests."""

    def __init__(
        self,
        node: Node,
        *,
        now: Any,
        interval: float = 5.0,
        on_overdue: Any = None,
    ) -> None:
        self._node = node
        self._now = now
        self._interval = interval
        self._on_overdue = on_overdue
        self.checks = 0

    def check(self) -> list[dict[str, Any]]:
        """One pass (blocking: run it in a thread); returns the payloads for on_overdue."""
        found = check_overdue(self._node, self._now())
        for o in found:
            log.warning(
                "ack.overdue",
                peer=o.deadline.peer,
                direction="in" if o.deadline.incoming else "out",
                envelope_id=o.deadline.envelope_id,
                report_id=o.deadline.report_id,
                step=o.step,
                due=format_time(o.due),
            )
        return [overdue_payload(self._node, o) for o in found]

    async def run(self) -> None:
        import asyncio

        while True:
            try:
                # On the loop, not in a thread: the store's one connection must not be used
                # by two threads at once (a thread's statements would land in the loop's
                # open transaction, or its transaction be refused as already open).
                payloads = self.check()
            except Exception as e:  # a failed check is logged and retried, never fatal
                getattr(log, failure_level(e))(
                    "ack.overdue_check_failed",
                    error=type(e).__name__,
                    code=getattr(e, "code", None),
                )
                payloads = []
            if self._on_overdue is not None:
                for payload in payloads:  # on the loop: the runner schedules its command
                    self._on_overdue(payload)
            self.checks += 1
            await asyncio.sleep(self._interval)


def overdue_payload(node: Node, o: Overdue) -> dict[str, Any]:
    """What an ``on_overdue`` command receives: ids, schema, severity, TLP, partner and
    the deadline; never a withheld field (the severity is the one the rule was chosen by,
    which the partner received)."""
    d = o.deadline
    sop = tlp = severity = None
    if d.incoming:
        row = node.store.inbox.sop_tlp(d.peer, d.envelope_id)
        if row is not None:
            sop, tlp = row
    else:
        row = node.store.reports.sop_tlp(d.report_id, d.version)
        if row is not None:
            sop, tlp = row
    severity = _rule_severity(node, d, sop)
    return {
        "event": "overdue",
        "partner": d.peer,
        "envelope_id": d.envelope_id,
        "report_id": d.report_id,
        "version": d.version,
        "sop": sop,
        "severity": severity,
        "tlp": tlp,
        "received_at": format_time(d.started_at),
        "which": o.step,
        "due": format_time(o.due),
    }


def _rule_severity(node: Node, d: Deadline, sop: str | None) -> str | None:
    """The severity whose rule set these deadlines (the agreement names it with the
    durations): read from the rules, not from the report, so nothing withheld leaks."""
    from node.services.agreements import current_agreement

    if sop is None:
        return None
    agreement = current_agreement(node, d.peer, d.started_at)
    if agreement is None:
        return None
    matches = [
        severity
        for severity, rule in agreement.agreement.response.get(sop, {}).items()
        if (rule.acknowledge, rule.respond) == (d.acknowledge, d.respond)
    ]
    return matches[0] if len(matches) == 1 else None
