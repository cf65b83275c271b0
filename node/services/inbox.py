"""The receiving side of the exchange: apply a pulled batch in ONE transaction (inbox rows,
log events, cursor), answer with a signed batch receipt; read the inbox back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from exchange.ack import parse_ack_unverified
from exchange.canonical import b64, b64_decode, b64url_decode, canonical_json, sha256_digest
from exchange.envelope import Envelope, VerifiedRelease, envelope_digest
from exchange.errors import AccordError, InputError, PeerDataError, StoreError
from exchange.receipt import ItemRejection, SignedReceipt, make_receipt
from exchange.receiver import (
    Equivocation,
    OpenContext,
    Opened,
    Receiver,
    Refused,
    Replay,
    Stop,
    TrustedState,
    Unmatched,
)
from exchange.sdjwt import HeldVersion
from exchange.times import format_time
from keys.keyring import BatchDecrypter
from node.home import Node
from node.ids import resolve_prefix
from node.services import warning
from node.services.agreements import current_agreement
from node.services.opening import OpenedBatch, batch_kids
from node.services.schemas import registry
from node.store import Tx
from node.store.inbox import ITEM_JWT_DIGEST as _JWT_DIGEST
from node.store.inbox import ITEM_SEALED as _SEALED
from node.values import AckRecord

log = structlog.get_logger("accord.inbox")


@dataclass(frozen=True)
class AppliedItem:
    """What the caller of :func:`apply_batch` may act on once the batch committed (the
    escalation commands, node/services/alerts.py): metadata, and the severity only when the
    partner disclosed it (read from the verified presentation)."""

    peer: str
    envelope_id: str
    kind: str
    report_id: str
    version: int
    sop: str
    tlp: str
    severity: str | None
    received_at: str


@dataclass
class BatchOutcome:
    receipt: SignedReceipt | None = None
    applied: int = 0
    duplicates: int = 0
    rejected: list[ItemRejection] = field(default_factory=list)
    stopped: PeerDataError | None = None  # a failure before the seq check: cursor unmoved
    items: list[AppliedItem] = field(default_factory=list)  # applied items only, in order


def _applied_item(peer: str, release: VerifiedRelease, now: datetime) -> AppliedItem:
    report = release.report
    severity = release.fields.get("severity") if report is not None else None
    return AppliedItem(
        peer=peer,
        envelope_id=release.header.id,
        kind=release.header.kind,
        report_id=release.release.report_id,
        version=release.release.version,
        sop=report.sop if report else "",
        tlp=report.tlp if report else "",
        severity=severity if isinstance(severity, str) else None,
        received_at=format_time(now),
    )


def cursor(node: Node, peer: str) -> int:
    last = node.store.inbox.cursor(peer)
    return 0 if last is None else last


def _inbound(node: Node, peer: str, seq: int) -> Envelope | None:
    row = node.store.inbox.inbound(peer, seq)
    return None if row is None else Envelope(*row)


def _held(node: Node, issuer: str, report_id: str) -> HeldVersion | None:
    """The newest version of ``report_id`` from ``issuer`` we hold (report state is kept
    per issuer, P17), read from the authenticated records: every row filed under the
    report id is opened and checked, so an edited ``version`` (or ``kind``) column cannot
    make an older version look like the newest (I08)."""
    rows = node.store.inbox.items_of_report_by(report_id, issuer)
    held: HeldVersion | None = None
    for row in rows:
        item, _content = _verified(node, row)
        if item.kind == "report" and (held is None or item.version > held.version):
            held = HeldVersion(item.issuer, item.version, str(row[_JWT_DIGEST]))
    return held


def _own_report(node: Node, report_id: str) -> bool:
    return node.store.reports.exists(report_id)


def _aad(peer: str, seq: int) -> bytes:
    return f"accord/v1/inbox-at-rest\n{peer}\n{seq}".encode("ascii")


def _store_item(node: Node, db: Tx, peer: str, release: VerifiedRelease, now: datetime) -> None:
    header = release.header
    report = release.report
    sealed: dict[str, Any] = {
        "release": b64(release.release_bytes),
        "release_signature": b64(release.release_signature),
        "derived": [
            {"field": d.field, "transform": d.transform, "value": d.value, "source": d.source}
            for d in release.derived
        ],
    }
    if report is not None:
        sealed["presentation"] = (
            report.issuer_jwt + "~" + "".join(d + "~" for d in report.disclosures.values())
        )
    if release.retraction_signed is not None:
        sealed["retraction"] = b64(release.retraction_signed.statement)
        sealed["retraction_signature"] = b64(release.retraction_signed.signature)
    if release.ack_signed is not None:
        sealed["ack"] = b64(release.ack_signed.statement)
        sealed["ack_signature"] = b64(release.ack_signed.signature)
    sealed["received_at"] = format_time(now)  # older rows lack it (ADR 0013)
    blob = node.keyring().storage_cipher().encrypt(canonical_json(sealed), _aad(peer, header.seq))
    node.store.inbox.add_item(
        db,
        (
            peer,
            header.seq,
            header.id,
            header.kind,
            release.release.report_id,
            release.release.version,
            report.issuer if report else peer,
            report.sop if report else "",
            report.tlp if report else "",
            json.dumps(sorted(release.fields)),
            json.dumps({d.field: d.transform for d in release.derived}),
            release.release.issuer_jwt_digest,
            blob,
            format_time(now),
        ),
    )


def _store_inbound(
    node: Node,
    db: Tx,
    peer: str,
    seq: int,
    env: Envelope,
    digest: str,
    status: str,
    code: str | None,
    now: datetime,
) -> None:
    node.store.inbox.add_inbound(
        db,
        peer,
        seq,
        env.header,
        env.ciphertext,
        env.signature,
        digest,
        status,
        code,
        format_time(now),
    )


def _reject(
    node: Node,
    db: Tx,
    peer: str,
    env: Envelope,
    seq: int,
    envelope_id: str,
    digest: str,
    code: str,
    now: datetime,
) -> None:
    _store_inbound(node, db, peer, seq, env, digest, "rejected", code, now)
    node.record(
        db,
        "envelope.rejected",
        now,
        peer=peer,
        seq=seq,
        envelope_id=envelope_id,
        code=code,
        envelope_digest=digest,
    )


# Alarm events (``envelope.rejected`` for an equivocation) per partner and window: the
# first conflicting envelope for each seq is kept whole with one event while the budget
# lasts; beyond it only a counter moves (L06, ADR 0016).
ALARM_BUDGET = 10
ALARM_WINDOW = timedelta(hours=1)


def _alarm_allowed(node: Node, db: Tx, peer: str, now: datetime) -> bool:
    """Whether ``peer`` has an alarm left in the sliding window (counted from the
    evidence rows themselves); if not, count the equivocation as suppressed."""
    repo = node.store.inbox
    if repo.equivocations_since(peer, format_time(now - ALARM_WINDOW)) < ALARM_BUDGET:
        return True
    repo.count_suppressed(db, peer, format_time(now))
    return False


def _equivocation(
    node: Node,
    db: Tx,
    peer: str,
    env: Envelope,
    eq: Equivocation,
    now: datetime,
) -> None:
    """Keep the first conflicting envelope per (partner, seq) whole, with one alarm (P07);
    count every later, different one on that row (no row, no leaf: L06). The very
    envelope already kept changes nothing."""
    seq = eq.header.seq
    kept = node.store.inbox.first_equivocation(peer, seq)
    if kept is not None:
        if kept[1] != eq.incoming_digest:
            node.store.inbox.count_repeat(db, kept[0])
        return
    if not _alarm_allowed(node, db, peer, now):
        return
    node.store.inbox.add_evidence(
        db,
        {
            "peer": peer,
            "kind": "equivocation",
            "seq": seq,
            "held_digest": eq.held_digest,
            "incoming_digest": eq.incoming_digest,
            "incoming": canonical_json(
                {
                    "header": b64(env.header),
                    "ciphertext": b64(env.ciphertext),
                    "signature": b64(env.signature),
                }
            ),
            "at": format_time(now),
        },
    )
    node.record(
        db,
        "envelope.rejected",
        now,
        peer=peer,
        seq=seq,
        envelope_id=eq.header.id,
        code=eq.code,
        envelope_digest=eq.incoming_digest,
    )


def _receiver(node: Node, peer: str, now: datetime) -> Receiver | PeerDataError:
    """The pure receiver for ``peer``, built from what this node trusts (docs/DESIGN.md §7)."""
    trust = node.trust_store()
    chain = trust.trusted_chain(peer, now)
    agreement = current_agreement(node, peer, now)
    if agreement is None:
        return PeerDataError(f"no agreement in force with {peer}", code="peer.no_agreement")
    last = cursor(node, peer)
    state = TrustedState(
        me=node.config.node,
        peer=peer,
        chain=chain,
        revoked=trust.revoked_keys(peer),
        last_applied=last,
        last_envelope=_inbound(node, peer, last) if last else None,
        agreement=agreement,
    )
    return Receiver(
        state,
        decrypter_for=node.keyring().decrypter,
        registry=registry(),
        now=now,
        held_envelope=lambda seq: _inbound(node, peer, seq),
        held_version=lambda issuer, report_id: _held(node, issuer, report_id),
        own_report=lambda report_id: _own_report(node, report_id),
        sent_at=warning.sent_at(node, peer),
        ack_held=warning.ack_held(node, peer),
    )


def open_inputs(
    node: Node, peer: str, envelopes: Sequence[Envelope], now: datetime
) -> tuple[OpenContext, BatchDecrypter] | None:
    """What worker processes need to open ``envelopes`` ahead (node/services/opening.py):
    the receiver's context for ``peer`` at ``now`` and a decrypter holding only the epoch
    keys the batch's headers name. None when the batch would stop at once (no agreement)."""
    receiver = _receiver(node, peer, now)
    if isinstance(receiver, PeerDataError):
        return None
    kids = batch_kids(envelopes, receiver.limits.max_header_bytes)
    return receiver.context, node.keyring().batch_decrypter(kids)


def _ahead_usable(
    node: Node, receiver: Receiver, envelopes: Sequence[Envelope], ahead: OpenedBatch | None
) -> bool:
    """Results opened ahead are used only when computed with exactly what this batch
    would use: the same context (chain, revocations, agreement, time, limits), the same
    epoch keys as the keyring holds now, one result per envelope."""
    if ahead is None or len(ahead.results) != len(envelopes):
        return False
    if ahead.context != receiver.context:
        return False
    return node.keyring().batch_decrypter(ahead.decrypter.kids) == ahead.decrypter


def apply_batch(
    node: Node,
    peer: str,
    envelopes: Sequence[Envelope],
    now: datetime,
    *,
    ahead: OpenedBatch | None = None,
) -> BatchOutcome:
    """Verify and apply envelopes from ``peer`` (the mTLS-authenticated caller) in one
    transaction, then sign a receipt for the range the cursor passed.

    Every rule is :class:`exchange.receiver.Receiver`'s; this function loads the trusted
    state and persists what each outcome says: an applied item, a recorded rejection
    (authentic and in sequence, never silently dropped: the cursor passes it), evidence of
    an equivocation, nothing for an exact replay. A stop ends the batch unchanged.

    ``ahead``: the batch opened in worker processes (:func:`open_inputs`,
    ``node.services.opening``); each result is used only where the receiver would have
    computed it itself, so the outcome is the same with or without it."""
    out = BatchOutcome()
    receiver = _receiver(node, peer, now)
    if isinstance(receiver, PeerDataError):
        out.stopped = receiver
        return out
    usable = ahead is not None and _ahead_usable(node, receiver, envelopes, ahead)
    if ahead is not None and not usable:  # rare: a rotation or a new agreement in between
        log.info("inbox.opened_ahead_unused", peer=peer, envelopes=len(envelopes))
    opened: Sequence[Opened | None] = (
        ahead.results if ahead is not None and usable else [None] * len(envelopes)
    )
    ring = node.keyring()
    me = node.config.node
    passed: list[str] = []
    with node.store.transaction() as db:
        start = receiver.last_applied
        for env, pre in zip(envelopes, opened, strict=True):
            outcome = receiver.receive(env, pre)
            if isinstance(outcome, Stop):  # before the seq check: the batch ends here
                out.stopped = outcome.error
                break
            if isinstance(outcome, Replay):
                out.duplicates += 1
                continue
            if isinstance(outcome, Unmatched):
                continue
            if isinstance(outcome, Equivocation):
                _equivocation(node, db, peer, env, outcome, now)
                continue
            if isinstance(outcome, Refused):
                seq = outcome.header.seq
                _reject(
                    node,
                    db,
                    peer,
                    env,
                    seq,
                    outcome.header.id,
                    outcome.envelope_digest,
                    outcome.code,
                    now,
                )
                out.rejected.append(ItemRejection(seq, outcome.code))
                passed.append(outcome.envelope_digest)
                continue
            release = outcome.release
            seq = release.header.seq
            _store_inbound(node, db, peer, seq, env, release.envelope_digest, "applied", None, now)
            _store_item(node, db, peer, release, now)
            loop = warning.on_applied(node, db, peer, release, receiver.state.agreement, now)
            node.record(
                db,
                "envelope.received",
                now,
                peer=peer,
                seq=seq,
                envelope_id=release.header.id,
                envelope_kind=release.header.kind,
                report_id=release.release.report_id,
                version=release.release.version,
                envelope_digest=release.envelope_digest,
                fields=sorted(release.fields),
                transformed=sorted(d.field for d in release.derived),
                **loop,
            )
            if release.ack is not None:
                warning.on_ack_received(node, db, peer, release, now)
            out.applied += 1
            out.items.append(_applied_item(peer, release, now))
            passed.append(release.envelope_digest)
        last = receiver.last_applied
        if last != start:
            node.store.inbox.set_cursor(db, peer, last, format_time(now))
            receipt = make_receipt(
                sender=me,
                recipient=peer,
                first_seq=start + 1,
                last_seq=last,
                envelope_digests=passed,
                rejections=out.rejected,
                received_at=now,
                signer=ring.identity_signer(),
            )
            node.store.inbox.add_receipt(
                db,
                {
                    "peer": peer,
                    "direction": "sent",
                    "first_seq": start + 1,
                    "last_seq": last,
                    "statement": receipt.statement,
                    "signature": receipt.signature,
                    "digest": receipt.digest,
                    "at": format_time(now),
                },
            )
            node.record(
                db,
                "receipt.sent",
                now,
                peer=peer,
                first_seq=start + 1,
                last_seq=last,
                receipt_digest=receipt.digest,
                rejected=len(out.rejected),
            )
            out.receipt = receipt
    if out.receipt is not None:
        node.checkpoint(now)
    elif out.duplicates:
        out.receipt = last_receipt(node, peer)
    return out


_VERSION_CODES = frozenset(
    {
        "peer.rollback",
        "peer.equivocation",
        "peer.version_fork",
        "peer.version_jump",
        "peer.retraction_invalid",
    }
)


def unacknowledged_receipts(node: Node, peer: str) -> list[tuple[int, SignedReceipt]]:
    """Receipts we sent ``peer`` whose delivery it has not confirmed, oldest first, each
    with its last seq.

    A receipt is committed with the cursor, before Acknowledge carries it to the partner;
    a crash of either node or a failed call in between would otherwise lose it for good
    (the partner's outbox rows stay 'pending'). The sync loop sends these again before
    each Pull; a receipt the partner already holds is answered as a duplicate. What the
    partner confirmed is recorded by :func:`receipts_acknowledged` (``cursors``), so only
    the unconfirmed tail is sent again: in practice the latest receipt or none."""
    acknowledged = node.store.inbox.acknowledged(peer)
    rows = node.store.inbox.sent_receipts_after(peer, acknowledged or 0)
    return [(int(r[0]), SignedReceipt(bytes(r[1]), bytes(r[2]))) for r in rows]


def receipts_acknowledged(node: Node, peer: str, through: int) -> None:
    """Record that ``peer`` confirmed every receipt we sent it up to seq ``through`` (a
    small commit of its own, only when the mark moves; it never moves back)."""
    acknowledged = node.store.inbox.acknowledged(peer)
    if acknowledged is None or acknowledged >= through:
        return
    with node.store.transaction() as db:
        node.store.inbox.set_acknowledged(db, peer, through)


def last_receipt(node: Node, peer: str) -> SignedReceipt | None:
    """The latest receipt we sent ``peer`` (re-sent when a batch held only duplicates)."""
    row = node.store.inbox.last_sent_receipt(peer)
    return None if row is None else SignedReceipt(*row)


# -- reading the inbox ------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxItem:
    peer: str
    seq: int
    envelope_id: str
    kind: str
    report_id: str
    version: int
    issuer: str
    sop: str
    tlp: str
    fields: tuple[str, ...]
    transformed: dict[str, str]
    received_at: str
    retracted: bool


def _item(row: Sequence[Any], retracted: bool = False) -> InboxItem:
    return InboxItem(
        row[0],
        int(row[1]),
        row[2],
        row[3],
        row[4],
        int(row[5]),
        row[6],
        row[7],
        row[8],
        tuple(json.loads(row[9])),
        dict(json.loads(row[10])),
        row[11],
        retracted,
    )


def _tampered(peer: str, seq: int, envelope_id: str, field: str) -> StoreError:
    # Names the item and the field, never the field's value (either one).
    return StoreError(
        f"received item {envelope_id} (from {peer}, seq {seq}) does not match its "
        f"authenticated record (field {field}); it is not shown",
        code="store.row_tampered",
        next_step="The database was edited outside Accord. Run 'accord audit export' and "
        "'accord audit verify', and restore the database from a backup.",
    )


def _presentation_claims(presentation: str) -> tuple[dict[str, Any], list[str]]:
    """The issuer JWT's claims and the disclosed field names of a presentation read back
    from the store (its signature verified on receipt; the AEAD tag proves the bytes are
    those we stored)."""
    jwt, *disclosures, _ = presentation.split("~")
    claims = json.loads(b64url_decode(jwt.split(".")[1], what="issuer JWT payload"))
    names = [str(json.loads(b64url_decode(d, what="disclosure"))[1]) for d in disclosures]
    return claims, names


def _authenticated(peer: str, seq: int, content: dict[str, Any]) -> dict[str, Any]:
    """What the authenticated record says each inbox column holds."""
    release = json.loads(b64_decode(content["release"], what="release"))
    values: dict[str, Any] = {
        "peer": release["from"],
        "seq": release["seq"],
        "envelope_id": release["id"],
        "kind": release["kind"],
        "report_id": release["report_id"],
        "version": release["version"],
        "issuer_jwt_digest": release["issuer_jwt_digest"],
        "transformed": {d["field"]: d["transform"] for d in release["derived"]},
        "issuer": peer,
        "sop": "",
        "tlp": "",
        "fields": [],
    }
    if "presentation" in content:
        claims, names = _presentation_claims(content["presentation"])
        values |= {
            "issuer": claims["iss"],
            "sop": claims["sop"],
            "tlp": claims["tlp"],
            "fields": sorted(names),
        }
    if "received_at" in content:
        values["received_at"] = content["received_at"]
    return values


def _verified(node: Node, row: Sequence[Any]) -> tuple[InboxItem, dict[str, Any]]:
    """Open a row's sealed record (AEAD under the storage key, bound to peer and seq) and
    refuse the row unless every column shown, exported or acted on equals the value the
    record holds (docs/THREATS.md I08, ADR 0013)."""
    item = _item(row)
    content = json.loads(
        node.keyring().storage_cipher().decrypt(bytes(row[_SEALED]), _aad(item.peer, item.seq))
    )
    try:
        truth = _authenticated(item.peer, item.seq, content)
    except (KeyError, IndexError, TypeError, ValueError, AccordError) as e:
        raise _tampered(item.peer, item.seq, item.envelope_id, "sealed") from e
    columns = {
        "peer": item.peer,
        "seq": item.seq,
        "envelope_id": item.envelope_id,
        "kind": item.kind,
        "report_id": item.report_id,
        "version": item.version,
        "issuer_jwt_digest": str(row[_JWT_DIGEST]),
        "transformed": item.transformed,
        "issuer": item.issuer,
        "sop": item.sop,
        "tlp": item.tlp,
        "fields": list(item.fields),
        "received_at": item.received_at,
    }
    for name, value in truth.items():
        if columns[name] != value:
            raise _tampered(item.peer, item.seq, str(truth["envelope_id"]), name)
    return item, content


def _retracted(node: Node, peers: set[str]) -> set[tuple[str, str]]:
    """(peer, report id) of every retraction received from ``peers``, each row checked:
    a retraction's kind or report id edited to hide it is refused, not ignored."""
    out: set[tuple[str, str]] = set()
    for peer in sorted(peers):
        rows = node.store.inbox.items_not_report(peer)
        for row in rows:
            item, _content = _verified(node, row)
            if item.kind == "retraction":
                out.add((item.peer, item.report_id))
    return out


def retraction_of(node: Node, peer: str, report_id: str) -> dict[str, Any] | None:
    """The stored record of the retraction ``peer`` sent for ``report_id``, if any (the
    row checked like every other), for the officer to see why and when."""
    rows = node.store.inbox.items_not_report_of(peer, report_id)
    for row in rows:
        item, content = _verified(node, row)
        if item.kind == "retraction":
            return {"item": item, **content}
    return None


def received_acks(
    node: Node, *, peer: str | None = None, report_id: str | None = None
) -> list[AckRecord]:
    """Acknowledgements partners sent us (inbox rows of kind ``ack``), each row checked
    against its authenticated record like every other."""
    out = []
    for row in node.store.inbox.acks(peer, report_id):
        item, content = _verified(node, row)
        if item.kind != "ack":
            continue
        statement = b64_decode(content["ack"], what="ack statement")
        out.append(
            AckRecord(
                "received",
                item.peer,
                item.envelope_id,
                parse_ack_unverified(statement),
                sha256_digest(statement),
            )
        )
    return out


def list_inbox(
    node: Node, *, peer: str | None = None, limit: int = 100, before: str | None = None
) -> list[InboxItem]:
    """Received reports, newest first. The columns only select and order the rows; what
    is returned is checked against each row's authenticated record."""
    return [
        item for item, _content in list_inbox_records(node, peer=peer, limit=limit, before=before)
    ]


def list_inbox_records(
    node: Node, *, peer: str | None = None, limit: int = 100, before: str | None = None
) -> list[tuple[InboxItem, dict[str, Any]]]:
    """:func:`list_inbox` with each item's decrypted record, read once (what ``inbox
    list`` needs to show titles without opening every item a second time)."""
    rows = node.store.inbox.reports(peer, before, limit)
    records = [_verified(node, r) for r in rows]
    retracted = _retracted(node, {i.peer for i, _c in records})
    return [(replace(i, retracted=(i.peer, i.report_id) in retracted), c) for i, c in records]


def received_times(node: Node, peer: str, since: str, limit: int) -> list[str]:
    """When the newest ``limit`` reports from ``peer`` received after ``since`` arrived,
    each row checked against its record (the reciprocity count, docs/THREATS.md I08: an edited
    ``received_at`` or ``kind`` cannot earn a partner tactical fields). ``limit`` is the
    policy's ``min_reports``: more rows cannot change whether it is met."""
    rows = node.store.inbox.reports_received_after(peer, since, limit)
    return [_verified(node, r)[0].received_at for r in rows]


def inbox_after(node: Node, peer: str, after_seq: int, limit: int) -> list[InboxItem]:
    """Reports and retractions from ``peer`` after seq ``after_seq``, in seq order (the TAXII
    feed indexes what arrived through this, so the same row checks apply to it)."""
    rows = node.store.inbox.items_after(peer, after_seq, limit)
    return [_verified(node, r)[0] for r in rows]


def inbox_last_row(node: Node) -> int:
    """The newest inbox row's rowid (0 for an empty inbox): where a watcher starts."""
    return node.store.inbox.last_rowid()


def inbox_rows_after(
    node: Node, after: int, limit: int
) -> tuple[int, list[tuple[int, InboxItem, dict[str, Any]]]]:
    """Inbox rows of every kind stored after rowid ``after`` (by this process or another:
    the store is read through WAL), oldest first, each checked against its authenticated
    record; returns the last rowid read and the rows. A row that fails its check is
    skipped with a log line naming it (``inbox list`` and ``inbox show`` refuse it too),
    so one edited row cannot stop a watcher."""
    rows = node.store.inbox.rows_after(after, limit)
    out: list[tuple[int, InboxItem, dict[str, Any]]] = []
    last = after
    for row in rows:
        rowid = int(row[0])
        last = rowid
        try:
            item, content = _verified(node, row[1:])
        except AccordError as e:
            log.warning("inbox.row_refused", row=rowid, code=e.code)
            continue
        out.append((rowid, item, content))
    return last, out


def report_versions(node: Node, peer: str, report_id: str) -> list[InboxItem]:
    """Every item of one report received from ``peer`` (its versions, then any
    retraction), in the order they arrived."""
    rows = node.store.inbox.items_of_report(peer, report_id)
    return [_verified(node, r)[0] for r in rows]


def get_inbox(node: Node, envelope_id: str) -> tuple[InboxItem, dict[str, Any]]:
    """One received item and its decrypted content (presentation, derived values, release),
    checked against its authenticated record."""
    row = node.store.inbox.item(envelope_id)
    if row is None:
        raise InputError(
            f"no received item {envelope_id}",
            code="inbox.unknown",
            next_step="List received reports with 'accord inbox list'.",
        )
    item, content = _verified(node, row)
    item = replace(item, retracted=(item.peer, item.report_id) in _retracted(node, {item.peer}))
    if "release" in content:
        content["release"] = b64_decode(content["release"], what="release").decode("utf-8")
    return item, content


def rejections(node: Node, peer: str | None = None) -> list[tuple[str, int, str]]:
    return node.store.inbox.rejections(peer)


__all__ = [
    "AppliedItem",
    "BatchOutcome",
    "InboxItem",
    "apply_batch",
    "cursor",
    "envelope_digest",
    "get_inbox",
    "inbox_after",
    "inbox_last_row",
    "inbox_rows_after",
    "list_inbox",
    "open_inputs",
    "report_versions",
]


def resolve_envelope_id(node: Node, given: str) -> str:
    """A received item's full envelope id from the id or a unique prefix of it."""

    def candidates(low: str, high: str) -> list[str]:
        return node.store.inbox.envelope_ids_between(low, high)

    return resolve_prefix(candidates, given, "inbox")
