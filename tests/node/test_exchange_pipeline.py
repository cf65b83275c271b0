"""The exchange pipeline in process: submit at pk-moi, apply at cn-mps, receipt back.
(The same functions run behind gRPC in the integration tests.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from exchange.errors import PeerDataError
from exchange.events import parse_event_unverified
from exchange.sdjwt import PresentationLimits, verify_presentation
from exchange.times import format_time
from node.home import Node
from node.services import outbox
from node.services.inbox import apply_batch, cursor, get_inbox, list_inbox
from tests.builders import ALERT, MARKER, sqlite_store, valid_report
from tests.conftest import Result, snapshot

Accord = Callable[..., Result]


def _kinds(node: Node) -> list[str]:
    return [parse_event_unverified(e).kind for _i, e in node.log.leaves(0, 100_000)]


def test_submit_sync_receipt(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    [result] = outbox.submit(pk, [valid_report()], now)
    [release] = result.releases
    assert release.peer == "cn-mps" and release.seq == 1
    envelopes = outbox.pending(pk, "cn-mps", 0, 256)
    assert len(envelopes) == 1
    wire = b"".join(e.header + e.ciphertext + e.signature for e in envelopes)
    assert MARKER.encode() not in wire and b"humint" not in wire
    outcome = apply_batch(cn, "pk-moi", envelopes, now)
    assert outcome.applied == 1 and outcome.stopped is None and not outcome.rejected
    assert cursor(cn, "pk-moi") == 1
    assert outcome.receipt is not None
    receipt, new = outbox.accept_receipt(
        pk, "cn-mps", outcome.receipt.statement, outcome.receipt.signature, now
    )
    assert new and receipt.first_seq == 1 and receipt.last_seq == 1
    state = (
        sqlite_store(pk)
        .conn.execute("SELECT state FROM outbox WHERE peer = 'cn-mps' AND seq = 1")
        .fetchone()[0]
    )
    assert state == "delivered"
    [item] = list_inbox(cn)
    released = set(release.decision.released)
    assert set(item.fields) == released
    assert set(item.transformed) == {"location", "site"}
    _item, content = get_inbox(cn, item.envelope_id)
    pub = pk.own_chain().latest.identity_key
    verified = verify_presentation(content["presentation"], pub, limits=PresentationLimits())
    assert set(verified.fields) == released
    assert "source" not in verified.fields and "indicators" not in verified.fields
    assert {d["field"]: d["transform"] for d in content["derived"]} == {
        "location": "round:1",
        "site": "pseudonym",
    }
    assert "release.decided" in _kinds(pk) and "receipt.received" in _kinds(pk)
    assert "envelope.received" in _kinds(cn) and "receipt.sent" in _kinds(cn)
    # P07: the same batch again is a duplicate: acknowledged, nothing new.
    before = snapshot(cn.data_dir)
    again = apply_batch(cn, "pk-moi", envelopes, now)
    assert again.duplicates == 1 and again.applied == 0 and again.receipt is not None
    assert snapshot(cn.data_dir) == before
    # The repeated receipt changes nothing at the sender either.
    before_pk = snapshot(pk.data_dir)
    _r, new2 = outbox.accept_receipt(
        pk, "cn-mps", again.receipt.statement, again.receipt.signature, now
    )
    assert not new2 and snapshot(pk.data_dir) == before_pk


@pytest.mark.threat("P08")
def test_p08_reordered_envelopes_wait_for_their_turn(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    outbox.submit(pk, [valid_report(), valid_report(), valid_report()], now)
    e1, e2, e3 = outbox.pending(pk, "cn-mps", 0, 256)
    before = snapshot(cn.data_dir)
    out = apply_batch(cn, "pk-moi", [e2], now)
    assert out.applied == 0 and out.stopped is not None and out.stopped.code == "peer.seq_jump"
    assert snapshot(cn.data_dir) == before
    out = apply_batch(cn, "pk-moi", [e1, e3, e2], now)
    assert out.applied == 1 and out.stopped is not None and cursor(cn, "pk-moi") == 1
    out = apply_batch(cn, "pk-moi", [e2, e3], now)
    assert out.applied == 2 and cursor(cn, "pk-moi") == 3


def test_amend_and_retract_reach_the_partner(pair: tuple[Node, Node]) -> None:
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    [first] = outbox.submit(pk, [valid_report()], now)
    changed = json.loads(json.dumps(ALERT))
    changed["fields"]["severity"] = "critical"
    second = outbox.amend(pk, first.report_id, valid_report(changed), now + timedelta(seconds=1))
    assert second.version == 2
    outbox.retract(pk, first.report_id, "erroneous", now + timedelta(seconds=2))
    envelopes = outbox.pending(pk, "cn-mps", 0, 256)
    assert len(envelopes) == 3
    out = apply_batch(cn, "pk-moi", envelopes, now + timedelta(seconds=3))
    assert out.applied == 3, out
    items = list_inbox(cn)
    assert {i.version for i in items} == {1, 2}
    assert all(i.retracted for i in items)
    # The officer sees who withdrew it, when and why, from the signed retraction.
    from node.rpc._pb.accord.v1 import officer_pb2
    from node.rpc.officer_service import ExchangeOfficerService

    service = ExchangeOfficerService(cn, None, now=lambda: now + timedelta(seconds=4))
    newest = max(items, key=lambda i: i.version)
    answer = asyncio.run(
        service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=newest.envelope_id), None)
    )
    shown = json.loads(answer.report)["retraction"]
    assert shown == {
        "by": "pk-moi",
        "reason": "erroneous",
        "retracted_at": format_time(now + timedelta(seconds=2)),
        "version": 2,
    }
    # P01: version 1 replayed after version 2 (as a new envelope) would be a rollback;
    # here the exact old envelope is a duplicate and changes nothing.
    before = snapshot(cn.data_dir)
    assert apply_batch(cn, "pk-moi", envelopes[:1], now).duplicates == 1
    assert snapshot(cn.data_dir) == before


def test_backlog_queued_before_a_rotation_still_arrives(pair: tuple[Node, Node]) -> None:
    """Envelopes sealed under the old identity key verify under that key (the card in
    force when they were sealed); later ones under the new key, never the other way."""
    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    outbox.submit(pk, [valid_report()], now)
    chain = pk.rotate_identity(now + timedelta(seconds=1))
    outbox.submit(pk, [valid_report()], now + timedelta(seconds=2))
    assert cn.refresh_peer_card("pk-moi", list(chain.signed), now + timedelta(seconds=3))
    envelopes = outbox.pending(pk, "cn-mps", 0, 256)
    out = apply_batch(cn, "pk-moi", envelopes, now + timedelta(seconds=3))
    assert out.applied == 2 and out.stopped is None, out
    # An envelope claiming a time after the rotation but signed by the old key is refused.
    from exchange.envelope import Envelope

    forged_header = envelopes[0].header.replace(b'"seq":1', b'"seq":3')
    before = snapshot(cn.data_dir)
    bad = apply_batch(
        cn,
        "pk-moi",
        [Envelope(forged_header, envelopes[0].ciphertext, envelopes[0].signature)],
        now,
    )
    assert bad.stopped is not None and bad.applied == 0
    assert snapshot(cn.data_dir) == before


@pytest.mark.threat("P06")
def test_p06_signed_revocation_refuses_what_the_key_sealed_from_its_time(
    pair: tuple[Node, Node],
) -> None:
    """pk-moi seals two reports, rotates, and revokes its old key from a time between
    them. cn-mps applied the first before it learned the statement (as from GetCard);
    afterwards nothing new signed by the revoked key applies, whatever its created_at
    (ADR 0016): the second stops the batch."""
    pk, cn = pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    old_fp = pk.own_chain().latest.fingerprint
    outbox.submit(pk, [valid_report()], t0)
    outbox.submit(pk, [valid_report()], t0 + timedelta(seconds=10))
    chain = pk.rotate_identity(t0 + timedelta(seconds=20))
    # The second envelope is still queued: revoking from before it blocks it (warned).
    assert pk.pending_sealed_under(old_fp, t0 + timedelta(seconds=5)) == 1
    assert pk.pending_sealed_under(old_fp, t0 + timedelta(seconds=11)) == 0
    revocation, new = pk.revoke_own_key(old_fp, t0 + timedelta(seconds=5), "compromised", t0)
    assert new and revocation.fingerprint == old_fp
    statements = pk.own_revocations()
    assert len(statements) == 1
    later = t0 + timedelta(seconds=30)
    assert cn.refresh_peer_card("pk-moi", list(chain.signed), later)
    first = apply_batch(cn, "pk-moi", outbox.pending(pk, "cn-mps", 0, 1), later)
    assert first.applied == 1 and first.stopped is None
    # A tampered statement stores nothing.
    from exchange.revocation import SignedRevocation

    before = snapshot(cn.data_dir)
    bent = SignedRevocation(
        statements[0].statement.replace(b"compromised", b"retired"), statements[0].signature
    )
    with pytest.raises(PeerDataError):
        cn.apply_peer_revocations("pk-moi", [bent], later)
    assert snapshot(cn.data_dir) == before
    [learned] = cn.apply_peer_revocations("pk-moi", statements, later)
    assert learned.fingerprint == old_fp
    assert cn.apply_peer_revocations("pk-moi", statements, later) == []  # known: once
    peer_events = [parse_event_unverified(e) for _i, e in cn.log.leaves(0, 100_000)]
    [event] = [e for e in peer_events if e.kind == "peer.revoked"]
    assert event.attrs["revoked_key"] == old_fp and event.attrs["source"] == "statement"
    envelopes = outbox.pending(pk, "cn-mps", 0, 256)
    out = apply_batch(cn, "pk-moi", envelopes, later)
    assert out.applied == 0 and out.duplicates == 1 and out.stopped is not None
    assert out.stopped.code == "peer.revoked"
    assert cursor(cn, "pk-moi") == 1
    # Revoking the current key cuts the partner off from that time on.
    current = pk.own_chain().latest.fingerprint
    pk.revoke_own_key(current, later + timedelta(seconds=1), "compromised", later)
    cn.apply_peer_revocations("pk-moi", pk.own_revocations(), later)
    assert cn.trust_store().get("pk-moi").status == "revoked"
    with pytest.raises(PeerDataError, match="revoked"):
        cn.trust_store().trusted_chain("pk-moi", later + timedelta(seconds=1))


@pytest.mark.threat("P03")
def test_p03_partner_serving_the_same_checkpoint_is_frozen(pair: tuple[Node, Node]) -> None:
    """cn-mps witnesses pk-moi's log. pk-moi keeps acknowledging (its log must grow) but
    asks cn-mps to cosign the same checkpoint: after the window it is frozen (stale)."""
    from exchange.note import parse_verifier_key
    from keys.keyring import witness_name
    from node.rpc.officer_service import _frozen
    from node.services.witness import Witness

    pk, cn = pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    witness = Witness(cn.store, cn.keyring().witness_signer(), witness_name("cn-mps"))
    log_key = parse_verifier_key(pk.own_chain().latest.log_vkey)
    cp = pk.checkpoint(t0)
    witness.add_checkpoint(
        partner="pk-moi",
        origin="pk-moi.accord/log",
        log_key=log_key,
        old_size=0,
        proof=[],
        note=cp.note,
        now=t0,
    )
    # The same checkpoint again, 20 minutes later: held, but the log did not grow.
    later = t0 + timedelta(minutes=20)
    witness.add_checkpoint(
        partner="pk-moi",
        origin="pk-moi.accord/log",
        log_key=log_key,
        old_size=cp.size,
        proof=[],
        note=cp.note,
        now=later,
    )
    # pk-moi acknowledged something of ours at `later` (so its log grew by then).
    with sqlite_store(cn).transaction() as db:
        db.table("receipts").insert(
            {
                "peer": "pk-moi",
                "direction": "received",
                "first_seq": 1,
                "last_seq": 1,
                "statement": b"{}",
                "signature": b"",
                "digest": "sha256:0",
                "at": format_time(later),
            }
        )
    window = timedelta(minutes=15)
    assert _frozen(cn, "pk-moi", window)
    # pk-moi's log grows and is cosigned: no longer frozen.
    outbox.submit(pk, [valid_report()], later)
    grown = pk.checkpoint(later)
    proof = pk.log.consistency_proof(cp.size, grown.size)
    witness.add_checkpoint(
        partner="pk-moi",
        origin="pk-moi.accord/log",
        log_key=log_key,
        old_size=cp.size,
        proof=proof,
        note=grown.note,
        now=later,
    )
    assert not _frozen(cn, "pk-moi", window)


def test_policy_explain_shows_exactly_the_decision_submit_sends(pair: tuple[Node, Node]) -> None:
    """One builder serves both: the decision explained before sending is the one logged."""
    from node.services.policy import active_policy, decide_for

    pk, _cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    report = valid_report()
    explained = decide_for(pk, report.report, "cn-mps", now, active_policy(pk, now))
    [result] = outbox.submit(pk, [report], now)
    [release] = result.releases
    assert release.decision == explained
    assert release.decision.to_log_event() == explained.to_log_event()
    assert explained.released and explained.withheld  # a decision with something in each


def test_get_inbox_builds_only_the_form_asked_for(pair: tuple[Node, Node]) -> None:
    """inbox show asks for no derived form, an export for the one it writes; an older client
    that names none gets every form, as before the field existed."""
    from exchange.errors import InputError
    from node.rpc._pb.accord.v1 import officer_pb2
    from node.rpc.officer_service import ExchangeOfficerService

    pk, cn = pair
    now = datetime.now(UTC).replace(microsecond=0)
    outbox.submit(pk, [valid_report()], now)
    apply_batch(cn, "pk-moi", outbox.pending(pk, "cn-mps", 0, 256), now)
    [item] = list_inbox(cn)
    service = ExchangeOfficerService(cn, None, now=lambda: now)

    def body(form: str) -> dict[str, object]:
        request = officer_pb2.GetInboxRequest(envelope_id=item.envelope_id, form=form)
        shown: dict[str, object] = json.loads(asyncio.run(service.GetInbox(request, None)).report)
        return shown

    everything, plain, stix, cap = body(""), body("json"), body("stix"), body("cap")
    assert "stix" in everything and "cap" in everything
    assert "stix" not in plain and "cap" not in plain
    assert "stix" in stix and "cap" not in stix
    assert "cap" in cap and "stix" not in cap
    assert stix["stix"] == everything["stix"] and cap["cap"] == everything["cap"]
    assert plain["fields"] == everything["fields"]
    with pytest.raises(InputError) as e:
        body("xml")
    assert e.value.code == "inbox.bad_form"
