"""The one place generated protobuf messages and domain values are converted (docs/DESIGN.md §2).

Signed things cross as their exact bytes (``Envelope``, ``SignedCard``, receipts): this
module never re-serialises them, it only moves bytes between a message and a value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from exchange.card import SUITE_HYBRID, SUITE_X25519, SignedCard, VerifiedChain
from exchange.deadlines import STEPS, Deadline
from exchange.envelope import Envelope
from exchange.errors import InputError
from exchange.policy import ReleaseDecision
from exchange.revocation import SignedRevocation
from exchange.times import parse_time
from node.rpc._pb.accord.v1 import card_pb2, envelope_pb2, officer_pb2
from node.values import AckRecord, AckSent, ExpiryWarning, Submitted


def envelope_message(env: Envelope) -> envelope_pb2.Envelope:
    return envelope_pb2.Envelope(
        header=env.header, ciphertext=env.ciphertext, signature=env.signature
    )


def envelope_from_message(message: envelope_pb2.Envelope) -> Envelope:
    return Envelope(bytes(message.header), bytes(message.ciphertext), bytes(message.signature))


def node_card_message(signed: SignedCard) -> card_pb2.NodeCard:
    return card_pb2.NodeCard(
        card=signed.card_bytes,
        signature=signed.signature,
        previous_signature=signed.previous_signature or b"",
    )


def signed_card_from_message(message: card_pb2.NodeCard) -> SignedCard:
    return SignedCard(
        card_bytes=bytes(message.card),
        signature=bytes(message.signature),
        previous_signature=bytes(message.previous_signature) or None,
    )


def revocation_message(signed: SignedRevocation) -> card_pb2.Revocation:
    return card_pb2.Revocation(statement=signed.statement, signature=signed.signature)


def signed_revocation_from_message(message: card_pb2.Revocation) -> SignedRevocation:
    return SignedRevocation(statement=bytes(message.statement), signature=bytes(message.signature))


def timestamp(text: str | None) -> Timestamp | None:
    if not text:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(parse_time(text, field="time"))
    return stamp


def timestamp_of(at: datetime | None) -> Timestamp | None:
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at.astimezone(UTC))
    return stamp


def outcome_message(
    peer: str, decision: ReleaseDecision, envelope_id: str | None, seq: int | None
) -> officer_pb2.ReleaseOutcome:
    return officer_pb2.ReleaseOutcome(
        peer=peer,
        released=list(decision.released),
        transformed=[
            officer_pb2.TransformedField(field=f, transform=t.transform)
            for f, t in sorted(decision.transformed.items())
        ],
        withheld=[
            officer_pb2.WithheldField(field=f, reason=r)
            for f, r in sorted(decision.withheld.items())
        ],
        policy_digest=decision.policy_digest,
        envelope_id=envelope_id or "",
        seq=seq or 0,
    )


def submitted_message(s: Submitted) -> officer_pb2.SubmitResponse:
    return officer_pb2.SubmitResponse(
        report_id=s.report_id,
        version=s.version,
        releases=[outcome_message(r.peer, r.decision, r.envelope_id, r.seq) for r in s.releases],
    )


def outcome_from_event(event: dict[str, Any]) -> officer_pb2.ReleaseOutcome:
    return officer_pb2.ReleaseOutcome(
        peer=event["peer"],
        released=event.get("released", []),
        transformed=[
            officer_pb2.TransformedField(field=f, transform=t)
            for f, t in event.get("transformed", {}).items()
        ],
        withheld=[
            officer_pb2.WithheldField(field=f, reason=r)
            for f, r in event.get("withheld", {}).items()
        ],
        policy_digest=event.get("policy_digest", ""),
        envelope_id=event.get("envelope_id") or "",
        seq=event.get("seq") or 0,
    )


def inbox_message(
    item: Any,
    newest: dict[str, int],
    shown: dict[str, Any] | None = None,
    *,
    due: Deadline | None = None,
    now: datetime | None = None,
    unread: bool = False,
    ack_status: str = "",
) -> officer_pb2.InboxItem:
    message = _inbox_item(item, newest, shown)
    message.unread = unread
    message.ack_status = ack_status
    if due is not None and now is not None:
        message.due_state = due.summary(now)
        open_steps = [
            by
            for step in STEPS
            if due.state(step, now) in ("due", "overdue") and (by := due.by(step)) is not None
        ]
        nearest = timestamp_of(min(open_steps)) if open_steps else None
        if nearest is not None:
            message.due_at.CopyFrom(nearest)
    return message


def _inbox_item(
    item: Any, newest: dict[str, int], shown: dict[str, Any] | None = None
) -> officer_pb2.InboxItem:
    return officer_pb2.InboxItem(
        peer=item.peer,
        envelope_id=item.envelope_id,
        seq=item.seq,
        kind=item.kind,
        report_id=item.report_id,
        version=item.version,
        sop=item.sop,
        tlp=item.tlp,
        fields=list(item.fields),
        received_at=timestamp(item.received_at),
        superseded=item.version < newest.get(item.report_id, item.version),
        retracted=item.retracted,
        title=str(shown.get("title", "")) if shown else "",
        severity=str(shown.get("severity", "")) if shown else "",
    )


def expiry_warning_message(w: ExpiryWarning, now: datetime) -> officer_pb2.ExpiryWarning:
    message = officer_pb2.ExpiryWarning(
        subject=w.subject, days_left=w.days_left(now), expired=w.expired
    )
    message.not_after.FromDatetime(w.not_after.astimezone(UTC))
    return message


SUITE_NAMES = {"hybrid": SUITE_HYBRID, "x25519": SUITE_X25519}
_KIND_FIELDS = ("identity", "encryption", "tls", "log", "witness")  # node.home.KEY_KINDS


def rotation_from_message(request: officer_pb2.RotateKeysRequest) -> tuple[list[str], str | None]:
    """The key kinds a RotateKeys request names (KEY_KINDS order) and the suite, if any."""
    kinds = [k for k in _KIND_FIELDS if getattr(request, k)]
    if not request.suite:
        return kinds, None
    suite = SUITE_NAMES.get(request.suite)
    if suite is None:
        raise InputError(
            f"unknown HPKE suite {request.suite!r}",
            code="input.suite",
            next_step="Use " + " or ".join(sorted(SUITE_NAMES)) + ".",
        )
    return kinds, suite


def rotation_message(kinds: list[str], suite: str | None) -> officer_pb2.RotateKeysRequest:
    name = next((n for n, s in SUITE_NAMES.items() if s == suite), "")
    return officer_pb2.RotateKeysRequest(suite=name, **{k: k in kinds for k in _KIND_FIELDS})


def rotated_message(
    chain: VerifiedChain, previous_fingerprint: str, kinds: list[str]
) -> officer_pb2.RotateKeysResponse:
    return officer_pb2.RotateKeysResponse(
        card_version=chain.latest.version,
        fingerprint=chain.latest.fingerprint,
        previous_fingerprint=previous_fingerprint,
        rotated=kinds,
        chain=chain.to_bytes(),
    )


# ---- the warning loop (ADR 0022) ---------------------------------------------------------------


def ack_message(record: AckRecord) -> officer_pb2.Acknowledgement:
    a = record.ack
    return officer_pb2.Acknowledgement(
        direction=record.direction,
        peer=record.peer,
        status=a.status,
        officer=a.officer,
        acked_at=timestamp(a.acked_at),
        note=a.note or "",
        envelope_id=record.ack_envelope_id,
        item_envelope_id=a.envelope_id,
        report_id=a.report_id,
        version=a.version,
    )


def deadline_message(d: Deadline, now: datetime) -> officer_pb2.Deadline:
    steps = []
    for step in STEPS:
        by, done = d.by(step), d.done_at(step)
        if by is None:
            continue
        steps.append(
            officer_pb2.DeadlineStep(
                step=step,
                by=timestamp_of(by),
                done_at=timestamp_of(done),
                state=d.state(step, now) or "",
            )
        )
    return officer_pb2.Deadline(
        direction="in" if d.incoming else "out",
        peer=d.peer,
        envelope_id=d.envelope_id,
        report_id=d.report_id,
        version=d.version,
        state=d.summary(now),
        steps=steps,
    )


def thread_message(
    acks: list[AckRecord],
    replies: list[dict[str, Any]],
    deadlines: list[Deadline],
    now: datetime,
    in_reply_to: str = "",
) -> officer_pb2.Thread:
    return officer_pb2.Thread(
        acks=[ack_message(a) for a in acks],
        replies=[
            officer_pb2.Reply(
                direction=r["direction"],
                peer=r["peer"],
                report_id=r["report_id"],
                version=int(r["version"]),
                envelope_id=r["envelope_id"],
                at=timestamp(r["at"]),
            )
            for r in replies
        ],
        deadlines=[deadline_message(d, now) for d in deadlines],
        in_reply_to=in_reply_to,
    )


def ack_sent_message(sent: AckSent, connected: bool) -> officer_pb2.AckInboxResponse:
    return officer_pb2.AckInboxResponse(
        peer=sent.peer,
        report_id=sent.ack.report_id,
        ack_envelope_id=sent.ack_envelope_id,
        seq=sent.seq,
        acked_at=timestamp(sent.ack.acked_at),
        partner_connected=connected,
        item_envelope_id=sent.ack.envelope_id,
    )
