"""The receiving side of the exchange: apply a pulled batch in ONE transaction (inbox rows,
log events, cursor), answer with a signed batch receipt; read the inbox back."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlite_utils

from exchange.canonical import b64, b64_decode, b64url_decode, canonical_json
from exchange.card import Card, VerifiedChain
from exchange.envelope import (
    ContentRejected,
    Envelope,
    EnvelopeDuplicate,
    EnvelopeEquivocation,
    VerifiedRelease,
    check_duplicate,
    envelope_digest,
    open_envelope,
    parse_header_unverified,
)
from exchange.errors import AccordError, InputError, PeerDataError, StoreError
from exchange.receipt import ItemRejection, SignedReceipt, make_receipt
from exchange.sdjwt import HeldVersion, ReportIdCollision, check_retraction, check_version
from exchange.times import format_time, parse_time
from node.agreements import current_agreement
from node.home import Node
from node.ids import resolve_prefix
from node.schemas import registry


@dataclass
class BatchOutcome:
    receipt: SignedReceipt | None = None
    applied: int = 0
    duplicates: int = 0
    rejected: list[ItemRejection] = field(default_factory=list)
    stopped: PeerDataError | None = None  # a failure before the seq check: cursor unmoved


def cursor(node: Node, peer: str) -> int:
    row = node.store.conn.execute(
        "SELECT last_applied FROM cursors WHERE peer = ?", (peer,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _inbound(node: Node, peer: str, seq: int) -> Envelope | None:
    row = node.store.conn.execute(
        "SELECT header, ciphertext, signature FROM inbound WHERE peer = ? AND seq = ?", (peer, seq)
    ).fetchone()
    return None if row is None else Envelope(bytes(row[0]), bytes(row[1]), bytes(row[2]))


def _held(node: Node, report_id: str) -> HeldVersion | None:
    """The newest version of ``report_id`` we hold, read from the authenticated records:
    every row filed under the report id is opened and checked, so an edited ``version``
    (or ``kind``) column cannot make an older version look like the newest (I08)."""
    rows = node.store.conn.execute(_ITEM_SQL + " WHERE i.report_id = ?", (report_id,)).fetchall()
    held: HeldVersion | None = None
    for row in rows:
        item, _content = _verified(node, row)
        if item.kind == "report" and (held is None or item.version > held.version):
            held = HeldVersion(item.issuer, item.version, str(row[_JWT_DIGEST]))
    return held


def _check_versions(node: Node, release: VerifiedRelease) -> None:
    """P01 rollback, P07 same version other bytes, P11 a partner rewriting our reports."""
    report_id = release.release.report_id
    if node.store.conn.execute(
        "SELECT 1 FROM reports WHERE report_id = ?", (report_id,)
    ).fetchone():
        raise ReportIdCollision("the report id belongs to a report of this node")
    held = _held(node, report_id)
    if release.report is not None:
        check_version(held, release.report)
    elif release.retraction is not None:
        check_retraction(held, release.retraction)


def _aad(peer: str, seq: int) -> bytes:
    return f"accord/v1/inbox-at-rest\n{peer}\n{seq}".encode("ascii")


def _store_item(
    node: Node, db: sqlite_utils.Database, peer: str, release: VerifiedRelease, now: datetime
) -> None:
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
    sealed["received_at"] = format_time(now)  # older rows lack it (ADR 0013)
    blob = node.keyring().storage_cipher().encrypt(canonical_json(sealed), _aad(peer, header.seq))
    db.conn.execute(  # a plain INSERT: sqlite-utils' insert runs ~4 statements per row
        "INSERT INTO inbox (peer, seq, envelope_id, kind, report_id, version, issuer, sop, tlp, "
        "fields, transformed, issuer_jwt_digest, sealed, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    db: sqlite_utils.Database,
    peer: str,
    seq: int,
    env: Envelope,
    digest: str,
    status: str,
    code: str | None,
    now: datetime,
) -> None:
    db.conn.execute(
        "INSERT INTO inbound (peer, seq, header, ciphertext, signature, digest, status, code, "
        "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            peer,
            seq,
            env.header,
            env.ciphertext,
            env.signature,
            digest,
            status,
            code,
            format_time(now),
        ),
    )


def _reject(
    node: Node,
    db: sqlite_utils.Database,
    peer: str,
    env: Envelope,
    seq: int,
    envelope_id: str,
    digest: str,
    code: str,
    now: datetime,
) -> None:
    _store_inbound(db, peer, seq, env, digest, "rejected", code, now)
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


def _duplicate(
    node: Node,
    db: sqlite_utils.Database,
    peer: str,
    env: Envelope,
    dup: EnvelopeDuplicate,
    now: datetime,
) -> bool:
    """True for an exact replay (nothing changes); an equivocation is kept as evidence."""
    held = _inbound(node, peer, dup.header.seq)
    if held is None:  # a seq before anything we hold: cannot be compared, so not acknowledged
        return False
    try:
        check_duplicate(held, env)
        return True
    except EnvelopeEquivocation as eq:
        if node.store.conn.execute(
            "SELECT 1 FROM evidence WHERE peer = ? AND kind = 'equivocation' AND seq = ? "
            "AND incoming_digest = ?",
            (peer, dup.header.seq, eq.incoming_digest),
        ).fetchone():
            return False  # this very equivocation is already kept and alarmed once
        db.table("evidence").insert(
            {
                "peer": peer,
                "kind": "equivocation",
                "seq": dup.header.seq,
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
            }
        )
        node.record(
            db,
            "envelope.rejected",
            now,
            peer=peer,
            seq=dup.header.seq,
            envelope_id=dup.header.id,
            code=eq.code,
            envelope_digest=eq.incoming_digest,
        )
        return False


def signing_card(
    chain: VerifiedChain, env: Envelope, revoked: Mapping[bytes, datetime] | None = None
) -> Card:
    """The partner's card in force when the envelope was sealed: an envelope queued
    before a key rotation still verifies under the key that signed it, and only under
    that one. ``created_at`` is covered by the outer signature, which this card checks.

    ``revoked`` maps the partner's revoked identity keys to the time from which each is
    invalid: an envelope sealed under one at or after that time is refused."""
    if len(chain.cards) == 1 and not revoked:
        return chain.latest
    try:
        created = parse_header_unverified(env.header).created_at
    except PeerDataError:
        return chain.latest  # open_envelope names the problem
    era = chain.cards[0]
    for card in chain.cards:
        if card.issued_at <= created:  # RFC 3339 UTC with Z: ordered as text
            era = card
    if (
        revoked
        and era.identity_key in revoked
        and parse_time(created, field="envelope created_at") >= revoked[era.identity_key]
    ):
        raise PeerDataError(
            f"envelope sealed under a key {chain.latest.node} revoked "
            f"({era.fingerprint}) after its revocation time",
            code="peer.revoked",
        )
    return era


def apply_batch(
    node: Node, peer: str, envelopes: Sequence[Envelope], now: datetime
) -> BatchOutcome:
    """Verify and apply envelopes from ``peer`` (the mTLS-authenticated caller) in one
    transaction, then sign a receipt for the range the cursor passed.

    Only ``seq == last + 1`` applies. An exact duplicate changes nothing (acknowledged
    again); the same seq with other bytes is kept as evidence. An authentic, in-sequence
    item whose content fails is recorded as rejected (never silently dropped) and the
    cursor passes it. Anything failing before the seq check stops the batch unchanged."""
    out = BatchOutcome()
    trust = node.trust_store()
    chain = trust.trusted_chain(peer, now)
    revoked = trust.revoked_keys(peer)
    agreement = current_agreement(node, peer, now)
    if agreement is None:
        out.stopped = PeerDataError(f"no agreement in force with {peer}", code="peer.no_agreement")
        return out
    ring = node.keyring()
    me = node.config.node
    passed: list[str] = []
    with node.store.transaction() as db:
        last = cursor(node, peer)
        start = last
        for env in envelopes:
            try:
                release = open_envelope(
                    env,
                    me=me,
                    expected_sender=peer,
                    sender_card=signing_card(chain, env, revoked),
                    last_applied_seq=last,
                    decrypter_for=ring.decrypter,
                    agreement=agreement,
                    registry=registry(),
                    now=now,
                    issuer_keys=[c.identity_key for c in chain.cards],
                )
            except EnvelopeDuplicate as dup:
                if _duplicate(node, db, peer, env, dup, now):
                    out.duplicates += 1
                continue
            except ContentRejected as bad:
                last = bad.header.seq
                _reject(
                    node, db, peer, env, last, bad.header.id, bad.envelope_digest, bad.code, now
                )
                out.rejected.append(ItemRejection(last, bad.code))
                passed.append(bad.envelope_digest)
                continue
            except PeerDataError as stop:  # before the seq check: the batch ends here
                out.stopped = stop
                break
            last = release.header.seq
            try:
                _check_versions(node, release)
            except PeerDataError as refused:  # authentic and in sequence: a recorded rejection
                _reject(
                    node,
                    db,
                    peer,
                    env,
                    last,
                    release.header.id,
                    release.envelope_digest,
                    refused.code,
                    now,
                )
                out.rejected.append(ItemRejection(last, refused.code))
                passed.append(release.envelope_digest)
                continue
            _store_inbound(db, peer, last, env, release.envelope_digest, "applied", None, now)
            _store_item(node, db, peer, release, now)
            node.record(
                db,
                "envelope.received",
                now,
                peer=peer,
                seq=last,
                envelope_id=release.header.id,
                envelope_kind=release.header.kind,
                report_id=release.release.report_id,
                version=release.release.version,
                envelope_digest=release.envelope_digest,
                fields=sorted(release.fields),
                transformed=sorted(d.field for d in release.derived),
            )
            out.applied += 1
            passed.append(release.envelope_digest)
        if last != start:
            db.table("cursors").upsert(
                {"peer": peer, "last_applied": last, "updated_at": format_time(now)}, pk="peer"
            )
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
            db.table("receipts").insert(
                {
                    "peer": peer,
                    "direction": "sent",
                    "first_seq": start + 1,
                    "last_seq": last,
                    "statement": receipt.statement,
                    "signature": receipt.signature,
                    "digest": receipt.digest,
                    "at": format_time(now),
                }
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
    row = node.store.conn.execute(
        "SELECT acknowledged FROM cursors WHERE peer = ?", (peer,)
    ).fetchone()
    rows = node.store.conn.execute(
        "SELECT last_seq, statement, signature FROM receipts "
        "WHERE peer = ? AND direction = 'sent' AND first_seq > ? ORDER BY first_seq",
        (peer, 0 if row is None else int(row[0])),
    ).fetchall()
    return [(int(r[0]), SignedReceipt(bytes(r[1]), bytes(r[2]))) for r in rows]


def receipts_acknowledged(node: Node, peer: str, through: int) -> None:
    """Record that ``peer`` confirmed every receipt we sent it up to seq ``through`` (a
    small commit of its own, only when the mark moves; it never moves back)."""
    row = node.store.conn.execute(
        "SELECT acknowledged FROM cursors WHERE peer = ?", (peer,)
    ).fetchone()
    if row is None or int(row[0]) >= through:
        return
    with node.store.transaction():
        node.store.conn.execute(
            "UPDATE cursors SET acknowledged = ? WHERE peer = ? AND acknowledged < ?",
            (through, peer, through),
        )


def last_receipt(node: Node, peer: str) -> SignedReceipt | None:
    """The latest receipt we sent ``peer`` (re-sent when a batch held only duplicates)."""
    row = node.store.conn.execute(
        "SELECT statement, signature FROM receipts WHERE peer = ? AND direction = 'sent' "
        "ORDER BY last_seq DESC LIMIT 1",
        (peer,),
    ).fetchone()
    return None if row is None else SignedReceipt(bytes(row[0]), bytes(row[1]))


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


_ITEM_SQL = (
    "SELECT i.peer, i.seq, i.envelope_id, i.kind, i.report_id, i.version, i.issuer, i.sop, i.tlp, "
    "i.fields, i.transformed, i.received_at, 0, i.issuer_jwt_digest, i.sealed FROM inbox i"
)
_JWT_DIGEST, _SEALED = 13, 14


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
        rows = node.store.conn.execute(
            _ITEM_SQL + " WHERE i.peer = ? AND i.kind != 'report'", (peer,)
        ).fetchall()
        for row in rows:
            item, _content = _verified(node, row)
            out.add((item.peer, item.report_id))
    return out


def list_inbox(
    node: Node, *, peer: str | None = None, limit: int = 100, before: str | None = None
) -> list[InboxItem]:
    """Received reports, newest first. The columns only select and order the rows; what
    is returned is checked against each row's authenticated record."""
    where, args = ["i.kind = 'report'"], []
    if peer:
        where.append("i.peer = ?")
        args.append(peer)
    if before:
        where.append("i.envelope_id < ?")
        args.append(before)
    rows = node.store.conn.execute(
        _ITEM_SQL + " WHERE " + " AND ".join(where) + " ORDER BY i.envelope_id DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    items = [_verified(node, r)[0] for r in rows]
    retracted = _retracted(node, {i.peer for i in items})
    return [replace(i, retracted=(i.peer, i.report_id) in retracted) for i in items]


def received_times(node: Node, peer: str, since: str, limit: int) -> list[str]:
    """When the newest ``limit`` reports from ``peer`` received after ``since`` arrived,
    each row checked against its record (the reciprocity count, docs/THREATS.md I08: an edited
    ``received_at`` or ``kind`` cannot earn a partner tactical fields). ``limit`` is the
    policy's ``min_reports``: more rows cannot change whether it is met."""
    rows = node.store.conn.execute(
        _ITEM_SQL + " WHERE i.peer = ? AND i.kind = 'report' AND i.received_at > ? "
        "ORDER BY i.received_at DESC LIMIT ?",
        (peer, since, limit),
    ).fetchall()
    return [_verified(node, r)[0].received_at for r in rows]


def inbox_after(node: Node, peer: str, after_seq: int, limit: int) -> list[InboxItem]:
    """Reports and retractions from ``peer`` after seq ``after_seq``, in seq order (the TAXII
    feed indexes what arrived through this, so the same row checks apply to it)."""
    rows = node.store.conn.execute(
        _ITEM_SQL + " WHERE i.peer = ? AND i.seq > ? ORDER BY i.seq LIMIT ?",
        (peer, after_seq, limit),
    ).fetchall()
    return [_verified(node, r)[0] for r in rows]


def report_versions(node: Node, peer: str, report_id: str) -> list[InboxItem]:
    """Every item of one report received from ``peer`` (its versions, then any
    retraction), in the order they arrived."""
    rows = node.store.conn.execute(
        _ITEM_SQL + " WHERE i.peer = ? AND i.report_id = ? ORDER BY i.seq",
        (peer, report_id),
    ).fetchall()
    return [_verified(node, r)[0] for r in rows]


def get_inbox(node: Node, envelope_id: str) -> tuple[InboxItem, dict[str, Any]]:
    """One received item and its decrypted content (presentation, derived values, release),
    checked against its authenticated record."""
    row = node.store.conn.execute(_ITEM_SQL + " WHERE i.envelope_id = ?", (envelope_id,)).fetchone()
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
    sql = "SELECT peer, seq, code FROM inbound WHERE status = 'rejected'"
    args: tuple[Any, ...] = ()
    if peer:
        sql += " AND peer = ?"
        args = (peer,)
    return [
        (r[0], int(r[1]), r[2]) for r in node.store.conn.execute(sql + " ORDER BY peer, seq", args)
    ]


__all__ = [
    "BatchOutcome",
    "InboxItem",
    "apply_batch",
    "cursor",
    "envelope_digest",
    "get_inbox",
    "inbox_after",
    "list_inbox",
    "report_versions",
]


def resolve_envelope_id(node: Node, given: str) -> str:
    """A received item's full envelope id from the id or a unique prefix of it."""

    def candidates(low: str, high: str) -> list[str]:
        rows = node.store.conn.execute(
            "SELECT envelope_id FROM inbox WHERE envelope_id >= ? AND envelope_id < ? "
            "ORDER BY envelope_id LIMIT 2",
            (low, high),
        ).fetchall()
        return [str(r[0]) for r in rows]

    return resolve_prefix(candidates, given, "inbox")
