"""The sending side of the exchange: seal, decide per partner, envelope, outbox (one
transaction per batch); serve pulls; accept the partner's signed batch receipts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from exchange.agreement import Ceiling, VerifiedAgreement
from exchange.card import Card, EncryptionKey
from exchange.envelope import (
    Envelope,
    ReportRelease,
    RetractionRelease,
    envelope_digest,
    seal_envelope,
)
from exchange.errors import InputError, PeerDataError, PolicyError
from exchange.policy import PeerStats, Policy
from exchange.receipt import VerifiedReceipt, verify_receipt
from exchange.sdjwt import Retraction, SealedReport, sign_retraction
from exchange.sop import ValidReport
from exchange.times import format_time, parse_time
from keys.signers import HpkeEncryptor
from node.home import Node
from node.ids import uuid7
from node.services import warning
from node.services.agreements import ceiling, current_agreement
from node.services.policy import active_policy, peer_stats, release_decision
from node.services.reports import seal_report
from node.store import Tx
from node.values import Release, Submitted

MAX_BATCH = 256
MAX_BATCH_BYTES = 1 << 20
_ENCRYPTOR = HpkeEncryptor()


@dataclass
class _Target:
    peer: str
    card: Card
    agreement: VerifiedAgreement | None
    ceilings: dict[str, Ceiling | None] = field(default_factory=dict)
    # Per batch: nothing a batch writes changes the partner's inbox or card.
    stats: PeerStats | None = None
    keys: dict[str, EncryptionKey] = field(default_factory=dict)


@dataclass
class ReleaseContext:
    """What every report of one batch is decided against, computed once per batch."""

    policy: Policy
    targets: list[_Target]
    now: datetime


def release_context(node: Node, now: datetime) -> ReleaseContext:
    targets = []
    for record in node.trust_store().list():
        if (
            record.revoked_from is not None
            and parse_time(record.revoked_from, field="revoked_from") <= now
        ):
            continue
        card = node.trust_store().trusted_chain(record.node, now).latest
        targets.append(_Target(record.node, card, current_agreement(node, record.node, now)))
    policy = active_policy(node, now) or Policy(MappingProxyType({}))
    return ReleaseContext(policy=policy, targets=targets, now=now)


def _recipient_key(card: Card, suite: str, now: datetime) -> EncryptionKey:
    usable = [
        k
        for k in card.encryption_keys
        if k.suite == suite and parse_time(k.not_after, field="not_after") > now
    ]
    if not usable:
        raise PolicyError(
            f"{card.node} has no current encryption key for suite {suite}",
            code="policy.no_recipient_key",
            next_step=f"Ask {card.node} to rotate its encryption key and send its new card.",
        )
    return max(usable, key=lambda k: k.not_after)


def _next_seq(node: Node, peer: str) -> int:
    last = node.store.outbox.max_seq(peer)
    return 1 if last is None else last + 1


def _store_envelope(
    node: Node,
    db: Tx,
    peer: str,
    seq: int,
    envelope_id: str,
    kind: str,
    report_id: str,
    version: int,
    env: Envelope,
    now: datetime,
) -> str:
    digest = envelope_digest(env)
    node.store.outbox.add(
        db,
        (
            peer,
            seq,
            envelope_id,
            kind,
            report_id,
            version,
            env.header,
            env.ciphertext,
            env.signature,
            digest,
            format_time(now),
        ),
    )
    return digest


def _release(
    node: Node,
    db: Tx,
    ctx: ReleaseContext,
    valid: ValidReport,
    sealed: SealedReport,
) -> tuple[Release, ...]:
    report = valid.report
    me = node.config.node
    out = []
    for target in ctx.targets:
        if target.stats is None:
            target.stats = peer_stats(node, ctx.policy, target.peer, ctx.now)
        if report.sop not in target.ceilings:
            target.ceilings[report.sop] = ceiling(
                node, target.agreement, me, target.peer, report.sop
            )
        decision = release_decision(
            node,
            report,
            target.peer,
            ctx.now,
            policy=ctx.policy,
            limit=target.ceilings[report.sop],
            stats=target.stats,
        )
        event = {k: v for k, v in decision.to_log_event().items() if k != "kind"}
        envelope_id = seq = None
        if decision.releases_anything and target.agreement is not None:
            envelope_id, seq = uuid7(), _next_seq(node, target.peer)
            suite = target.agreement.agreement.suite
            if suite not in target.keys:
                target.keys[suite] = _recipient_key(target.card, suite, ctx.now)
            env = seal_envelope(
                ReportRelease.from_decision(sealed, decision),
                envelope_id=envelope_id,
                sender=me,
                recipient=target.peer,
                seq=seq,
                recipient_key=target.keys[suite],
                suite=suite,
                now=ctx.now,
                signer=node.keyring().identity_signer(),
                encryptor=_ENCRYPTOR,
            )
            event["envelope_digest"] = _store_envelope(
                node,
                db,
                target.peer,
                seq,
                envelope_id,
                "report",
                sealed.report_id,
                sealed.version,
                env,
                ctx.now,
            )
            warning.on_released(
                node,
                db,
                target.peer,
                target.agreement,
                envelope_id,
                seq,
                report.sop,
                {n: report.fields[n] for n in decision.released if n in report.fields},
                sealed.report_id,
                sealed.version,
                ctx.now,
            )
        index = node.record(
            db,
            "release.decided",
            ctx.now,
            report_id=sealed.report_id,
            version=sealed.version,
            envelope_id=envelope_id,
            seq=seq,
            **event,
        )
        node.store.reports.add_release(db, sealed.report_id, sealed.version, target.peer, index)
        out.append(Release(target.peer, decision, envelope_id, seq))
    return tuple(out)


def submit(
    node: Node,
    reports: Sequence[ValidReport],
    now: datetime,
    idempotency_keys: Sequence[str | None] | None = None,
) -> list[Submitted]:
    """Seal, decide, envelope and store a batch of validated reports: one durable commit,
    then one checkpoint. Every report and every decision is logged. A report with an
    idempotency key is recorded under it in the same commit (see ``already_submitted``)."""
    ctx = release_context(node, now)
    keys = list(idempotency_keys or [None] * len(reports))
    results = []
    with node.store.transaction() as db:
        for valid, key in zip(reports, keys, strict=True):
            sealed = seal_report(node, db, valid, now)
            if key:
                node.store.reports.add_submission(
                    db, key, sealed.report_id, sealed.version, format_time(now)
                )
            results.append(
                Submitted(sealed.report_id, sealed.version, _release(node, db, ctx, valid, sealed))
            )
    node.checkpoint(now)
    return results


def already_submitted(node: Node, idempotency_key: str) -> tuple[str, int] | None:
    """The report an earlier submission with this key produced, if it committed."""
    return node.store.reports.submission(idempotency_key)


def _latest_own(node: Node, report_id: str) -> tuple[int, str, str]:
    row = node.store.reports.latest(report_id)
    if row is None:
        raise InputError(
            f"no report {report_id} of this node",
            code="report.unknown",
            next_step="List reports with 'accord report list'.",
        )
    if row[2] is not None:
        raise InputError(f"report {report_id} was retracted", code="report.retracted")
    return row[0], row[1], str(row[2])


def amend(
    node: Node, report_id: str, valid: ValidReport, now: datetime, base_version: int | None = None
) -> Submitted:
    """A new version of one of our reports, superseding the latest; released as usual."""
    version, jwt_digest, _ = _latest_own(node, report_id)
    if base_version is not None and base_version != version:
        raise InputError(
            f"report {report_id} is at version {version}, not {base_version}",
            code="report.version_conflict",
            next_step="Show the latest version and amend that.",
        )
    ctx = release_context(node, now)
    with node.store.transaction() as db:
        sealed = seal_report(
            node, db, valid, now, report_id=report_id, version=version + 1, supersedes=jwt_digest
        )
        releases = _release(node, db, ctx, valid, sealed)
    node.checkpoint(now)
    return Submitted(report_id, version + 1, releases)


def retract(node: Node, report_id: str, reason: str, now: datetime) -> list[tuple[str, str, int]]:
    """Sign a retraction and send it to every partner that received a version."""
    version, jwt_digest, _ = _latest_own(node, report_id)
    me = node.config.node
    retraction = Retraction(me, report_id, version, jwt_digest, reason, int(now.timestamp()))
    signed = sign_retraction(retraction, node.keyring().identity_signer())
    ctx = release_context(node, now)
    sent_to = node.store.outbox.peers_sent(report_id)
    out = []
    with node.store.transaction() as db:
        node.store.reports.set_retracted(db, report_id, format_time(now))
        node.record(
            db,
            "report.retracted",
            now,
            report_id=report_id,
            version=version,
            reason=reason,
            issuer_jwt_digest=jwt_digest,
        )
        for target in ctx.targets:
            if target.peer not in sent_to or target.agreement is None:
                continue
            envelope_id, seq = uuid7(), _next_seq(node, target.peer)
            suite = target.agreement.agreement.suite
            env = seal_envelope(
                RetractionRelease(retraction, signed, target.agreement.digest, ctx.policy.digest),
                envelope_id=envelope_id,
                sender=me,
                recipient=target.peer,
                seq=seq,
                recipient_key=_recipient_key(target.card, suite, now),
                suite=suite,
                now=now,
                signer=node.keyring().identity_signer(),
                encryptor=_ENCRYPTOR,
            )
            digest = _store_envelope(
                node, db, target.peer, seq, envelope_id, "retraction", report_id, version, env, now
            )
            node.record(
                db,
                "release.decided",
                now,
                peer=target.peer,
                report_id=report_id,
                version=version,
                envelope_kind="retraction",
                envelope_id=envelope_id,
                seq=seq,
                envelope_digest=digest,
                agreement_digest=target.agreement.digest,
                policy_digest=ctx.policy.digest,
            )
            out.append((target.peer, envelope_id, seq))
    node.checkpoint(now)
    return out


# -- serving pulls and receipts -------------------------------------------------------------


def pending(node: Node, peer: str, after_seq: int, max_batch: int) -> list[Envelope]:
    return [env for _seq, env in pending_with_seq(node, peer, after_seq, max_batch)]


def pending_with_seq(
    node: Node, peer: str, after_seq: int, max_batch: int
) -> list[tuple[int, Envelope]]:
    """Envelopes for ``peer`` after ``after_seq``, in seq order: at most ``max_batch``
    (capped at 256) and about 1 MiB."""
    limit = max(1, min(max_batch or MAX_BATCH, MAX_BATCH))
    rows = node.store.outbox.after(peer, after_seq, limit)
    out: list[tuple[int, Envelope]] = []
    size = 0
    for seq, header, ciphertext, signature in rows:
        size += len(header) + len(ciphertext) + len(signature)
        if out and size > MAX_BATCH_BYTES:
            break
        out.append((int(seq), Envelope(bytes(header), bytes(ciphertext), bytes(signature))))
    return out


def backlog(node: Node, peer: str) -> tuple[int, int]:
    """(highest seq sent to ``peer``, highest seq it acknowledged). Point queries on the
    ``(peer, seq)`` key and the ``(peer, state, seq)`` index (migration 13): this runs on
    every Acknowledge, and scanning a large outbox there stalled the whole server."""
    repo = node.store.outbox
    sent = repo.max_seq(peer)
    acknowledged = 0
    for state in ("delivered", "rejected"):
        acknowledged = max(acknowledged, repo.max_seq_in_state(peer, state) or 0)
    return int(sent or 0), acknowledged


def accept_receipt(
    node: Node, peer: str, statement: bytes, signature: bytes, now: datetime
) -> tuple[VerifiedReceipt, bool]:
    """Verify a partner's batch receipt against what we sent; record it once.

    Returns the receipt and whether it was new (a repeated receipt changes nothing)."""
    key = node.trust_store().trusted_chain(peer, now).latest.identity_key

    def digests(first: int, last: int) -> list[str]:
        return node.store.outbox.digests(peer, first, last)

    receipt = verify_receipt(
        statement,
        signature,
        signer_key=key,
        expected_from=peer,
        expected_to=node.config.node,
        digests_for_range=digests,
    )
    with node.store.transaction() as db:
        repo = node.store.outbox
        if repo.receipt_received(peer, receipt.digest):
            return receipt, False
        if (
            repo.pending_count(peer, receipt.first_seq, receipt.last_seq) == 0
        ):  # adds nothing: no row, no leaf (L06, ADR 0016)
            raise PeerDataError(
                f"receipt from {peer} for seq {receipt.first_seq}..{receipt.last_seq}, "
                "a range already confirmed by another receipt",
                code="peer.receipt.redundant",
                next_step="Nothing was stored. Re-send the receipt already sent for the range.",
            )
        rejected = {r.seq: r.code for r in receipt.rejections}
        repo.mark_delivered(db, peer, receipt.first_seq, receipt.last_seq)
        for seq, code in rejected.items():
            repo.mark_rejected(db, peer, seq, code)
        warning.on_receipt(node, db, peer, receipt.first_seq, receipt.last_seq, receipt.received_at)
        repo.add_receipt(
            db,
            {
                "peer": peer,
                "direction": "received",
                "first_seq": receipt.first_seq,
                "last_seq": receipt.last_seq,
                "statement": statement,
                "signature": signature,
                "digest": receipt.digest,
                "at": format_time(now),
            },
        )
        node.record(
            db,
            "receipt.received",
            now,
            peer=peer,
            first_seq=receipt.first_seq,
            last_seq=receipt.last_seq,
            receipt_digest=receipt.digest,
            rejected={str(s): c for s, c in sorted(rejected.items())},
        )
    node.checkpoint(now)
    return receipt, True


# For the warning loop's acknowledgements (node/services/warning.py), which are envelopes like any.
ENCRYPTOR = _ENCRYPTOR
next_seq = _next_seq
recipient_key = _recipient_key
store_envelope = _store_envelope
