"""The warning loop in process (ADR 0022): a critical alert with a response rule, the
receiver's signed acknowledgement back to the originator, deadlines on both sides, one
``ack.overdue`` per missed step, replies, and the attacks on acknowledgements (P18)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.ack import Acknowledgement, SignedAck, make_ack
from exchange.canonical import b64_decode
from exchange.deadlines import procedure, sender_grace
from exchange.envelope import AckRelease, Envelope, seal_envelope
from exchange.events import Event, parse_event_unverified
from exchange.times import format_time
from node.home import Node
from node.services import outbox, warning
from node.services.agreements import current_agreement
from node.services.inbox import apply_batch, cursor, list_inbox, received_acks
from tests.builders import CRITICAL_ALERT, loop_terms, reply, sqlite_store, valid_report
from tests.conftest import PASSPHRASE, POLICY, TERMS, Result, exchange_cards

Accord = Callable[..., Result]
NOTE = "note-marker-7731"


@pytest.fixture
def loop_pair(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    pk, cn = make_node("pk-moi", 7441), make_node("cn-mps", 7442)
    exchange_cards(accord, pk, cn, tmp_path)
    terms = tmp_path / "terms.toml"
    terms.write_text(loop_terms(TERMS.read_text(), acknowledge="PT1M", respond="PT1H"))
    file = tmp_path / "agreement.json"
    r = accord("--data", pk, "agreement", "propose", "--peer", "cn-mps", "--terms", terms,
               "--out", file)  # fmt: skip
    assert r.code == 0, r.err
    for side in (cn, pk):
        assert accord("--data", side, "agreement", "sign", file, "--yes").code == 0
    assert accord("--data", pk, "policy", "apply", POLICY).code == 0
    replies = POLICY.parent / "example-replies.toml"
    assert accord("--data", cn, "policy", "apply", replies).code == 0
    a, b = Node.open(pk, lambda: PASSPHRASE), Node.open(cn, lambda: PASSPHRASE)
    yield a, b
    a.close()
    b.close()


def _events(node: Node) -> list[Event]:
    return [parse_event_unverified(e) for _i, e in node.log.leaves(0, 100_000)]


def _kinds(node: Node, kind: str) -> list[Event]:
    return [e for e in _events(node) if e.kind == kind]


def _deliver(src: Node, dst: Node, now: datetime) -> None:
    """What a pull does: dst applies src's pending envelopes; src accepts the receipt."""
    peer_of_dst, peer_of_src = dst.config.node, src.config.node
    envelopes = outbox.pending(src, peer_of_dst, cursor(dst, peer_of_src), 256)
    out = apply_batch(dst, peer_of_src, envelopes, now)
    assert out.stopped is None and not out.rejected, (out.stopped, out.rejected)
    if out.receipt is not None:
        outbox.accept_receipt(src, peer_of_dst, out.receipt.statement, out.receipt.signature, now)


def _alert(pk: Node, cn: Node, now: datetime) -> str:
    """A critical alert from pk-moi applied at cn-mps; its inbox envelope id."""
    outbox.submit(pk, [valid_report(CRITICAL_ALERT)], now)
    _deliver(pk, cn, now + timedelta(seconds=1))
    return list_inbox(cn)[0].envelope_id


@pytest.mark.threat("W01")
def test_acknowledged_alert_meets_its_deadline_and_a_missed_one_is_reported_once(
    loop_pair: tuple[Node, Node],
) -> None:
    pk, cn = loop_pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    first = _alert(pk, cn, t0)
    [due] = warning.deadlines(cn, incoming=True)
    assert due.started_at == t0 + timedelta(seconds=1)  # when cn applied it, not created_at
    assert due.summary(t0 + timedelta(seconds=2)) == "DUE"
    [received] = _kinds(cn, "envelope.received")
    assert received.attrs["acknowledge_by"] == format_time(t0 + timedelta(seconds=61))

    sent = warning.acknowledge(cn, first, "accepted", "amina", NOTE, t0 + timedelta(seconds=10))
    assert sent.peer == "pk-moi" and sent.ack.officer == "amina"
    _deliver(cn, pk, t0 + timedelta(seconds=11))
    [ack] = received_acks(pk)
    assert (ack.ack.status, ack.ack.officer, ack.ack.note) == ("accepted", "amina", NOTE)
    [out] = warning.deadlines(pk, incoming=False)
    assert (
        out.summary(t0 + timedelta(hours=2)) != "OVERDUE" or out.state("acknowledge", t0) == "met"
    )
    assert out.state("acknowledge", t0 + timedelta(hours=2)) == "met"
    [ack_sent] = _kinds(cn, "ack.sent")
    assert ack_sent.attrs["status"] == "accepted" and ack_sent.attrs["item_envelope_id"] == first
    assert [e.attrs["status"] for e in _kinds(pk, "ack.received")] == ["accepted"]

    # A second alert nobody acknowledges: overdue once on each side, never twice.
    t1 = t0 + timedelta(seconds=30)
    outbox.submit(pk, [valid_report(CRITICAL_ALERT)], t1)
    _deliver(pk, cn, t1 + timedelta(seconds=1))
    late = t1 + timedelta(seconds=62)
    found = warning.check_overdue(cn, late)
    assert [(o.step, o.deadline.incoming) for o in found] == [("acknowledge", True)]
    assert warning.check_overdue(cn, late + timedelta(seconds=5)) == []
    assert len(_kinds(cn, "ack.overdue")) == 1
    assert warning.check_overdue(pk, late) == []  # the sender allows for its partner's clock
    found = warning.check_overdue(pk, late + sender_grace(timedelta(minutes=1)))
    assert [(o.step, o.deadline.incoming) for o in found] == [("acknowledge", False)]
    assert len(_kinds(pk, "ack.overdue")) == 1
    for node in (pk, cn):  # no note and no field value ever enters a log
        for _i, leaf in node.log.leaves(0, 100_000):
            assert NOTE.encode() not in leaf and b"Critical convoy" not in leaf

    # Offline, from the two logs alone: one deadline met, one missed.
    report = procedure("pk-moi", _events(pk), "cn-mps", _events(cn))
    outcomes = sorted(line.acknowledge for line in report.lines)
    assert outcomes == ["met", "missed"] and report.breaches == 1


@pytest.mark.threat("W02")
def test_clock_steps_around_a_deadline_report_it_exactly_once(
    loop_pair: tuple[Node, Node],
) -> None:
    pk, cn = loop_pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    _alert(pk, cn, t0)
    assert warning.check_overdue(cn, t0 + timedelta(seconds=59)) == []
    assert len(warning.check_overdue(cn, t0 + timedelta(days=3))) == 2  # both steps, at once
    assert warning.check_overdue(cn, t0) == []  # stepped back: nothing un-reported
    assert warning.check_overdue(cn, t0 + timedelta(days=4)) == []  # forward again: not twice
    assert sorted(e.attrs["step"] for e in _kinds(cn, "ack.overdue")) == ["acknowledge", "respond"]


def _ack_envelope(
    cn: Node,
    pk: Node,
    now: datetime,
    *,
    report_id: str,
    version: int,
    jwt: str,
    item: str,
    acked_at: datetime,
    replay: tuple[Acknowledgement, SignedAck] | None = None,
) -> Envelope:
    """An acknowledgement envelope cn-mps signs with its real keys, at pk's next seq."""
    from node.ids import uuid7

    agreement = current_agreement(cn, "pk-moi", now)
    assert agreement is not None
    ack, good = make_ack(
        sender="cn-mps",
        recipient="pk-moi",
        report_id=report_id,
        version=version,
        issuer_jwt_digest=jwt,
        envelope_id=item,
        status="accepted",
        officer="mallory",
        now=acked_at,
        note=None,
        signer=cn.keyring().identity_signer(),
    )
    card = cn.trust_store().trusted_chain("pk-moi", now).latest
    envelope_id, seq = uuid7(), outbox.next_seq(cn, "pk-moi")
    env = seal_envelope(
        AckRelease(*(replay or (ack, good)), agreement.digest, "sha256:" + "0" * 64),
        envelope_id=envelope_id,
        sender="cn-mps",
        recipient="pk-moi",
        seq=seq,
        recipient_key=outbox.recipient_key(card, agreement.agreement.suite, now),
        suite=agreement.agreement.suite,
        now=now,
        signer=cn.keyring().identity_signer(),
        encryptor=outbox.ENCRYPTOR,
    )
    with cn.store.transaction() as db:  # queued like any envelope, so seqs stay gap-free
        outbox.store_envelope(cn, db, "pk-moi", seq, envelope_id, "ack", report_id, 1, env, now)
    return env


@pytest.mark.threat("P18")
def test_forged_replayed_and_misdated_acknowledgements_are_refused(
    loop_pair: tuple[Node, Node],
) -> None:
    pk, cn = loop_pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    item = _alert(pk, cn, t0)
    row = (
        sqlite_store(cn)
        .conn.execute(
            "SELECT report_id, version, issuer_jwt_digest FROM inbox WHERE envelope_id = ?", (item,)
        )
        .fetchone()
    )
    report_id, version, jwt = str(row[0]), int(row[1]), str(row[2])
    now = t0 + timedelta(seconds=5)

    def refused(env: Envelope, code: str) -> None:
        out = apply_batch(pk, "cn-mps", [env], now)
        assert [r.code for r in out.rejected] == [code]
        [d] = warning.deadlines(pk, incoming=False)
        assert d.acked_at is None  # the sender's view of the deadline is unchanged
        assert received_acks(pk) == [] and _kinds(pk, "ack.received") == []

    other = "01890a5d-ac96-774b-bcce-b302099a8057"
    refused(
        _ack_envelope(cn, pk, now, report_id=other, version=1, jwt=jwt, item=item, acked_at=now),
        "peer.ack.unknown_report",  # a report pk-moi never sent cn-mps
    )
    refused(
        _ack_envelope(
            cn,
            pk,
            now,
            report_id=report_id,
            version=version,
            jwt=jwt,
            item=item,
            acked_at=t0 - timedelta(hours=1),
        ),
        "peer.ack.bad_time",  # back-dated before the release
    )
    refused(
        _ack_envelope(
            cn,
            pk,
            now,
            report_id=report_id,
            version=version,
            jwt=jwt,
            item=item,
            acked_at=now + timedelta(hours=1),
        ),
        "peer.ack.bad_time",  # from the future
    )
    # The real acknowledgement, then the same signed statement again in a new envelope.
    warning.acknowledge(cn, item, "accepted", "amina", None, now)
    _deliver(cn, pk, now)
    [held] = received_acks(pk)
    sent_row = (
        sqlite_store(cn).conn.execute("SELECT sealed, ack_envelope_id FROM acks_sent").fetchone()
    )
    [mine] = warning.sent_acks(cn)
    record = json.loads(
        cn.keyring().storage_cipher().decrypt(bytes(sent_row[0]), warning._ack_aad(sent_row[1]))
    )
    again = SignedAck(
        b64_decode(record["statement"], what="s"), b64_decode(record["signature"], what="s")
    )
    env = _ack_envelope(cn, pk, now, report_id=report_id, version=version, jwt=jwt, item=item,
                        acked_at=now, replay=(mine.ack, again))  # fmt: skip
    out = apply_batch(pk, "cn-mps", [env], now)
    assert [r.code for r in out.rejected] == ["peer.ack.replayed"]
    assert [a.digest for a in received_acks(pk)] == [held.digest]
    assert len(_kinds(pk, "ack.received")) == 1


def test_reply_threads_on_both_sides(loop_pair: tuple[Node, Node]) -> None:
    pk, cn = loop_pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    item = _alert(pk, cn, t0)
    report_id = list_inbox(cn)[0].report_id
    [answered] = outbox.submit(cn, [reply(report_id)], t0 + timedelta(seconds=20))
    assert [r.peer for r in answered.releases if r.envelope_id] == ["pk-moi"]
    _deliver(cn, pk, t0 + timedelta(seconds=21))
    [theirs] = warning.replies(pk, in_reply_to=report_id)
    [ours] = warning.replies(cn, in_reply_to=report_id)
    assert (theirs["direction"], theirs["report_id"]) == ("received", answered.report_id)
    assert (ours["direction"], ours["report_id"]) == ("sent", answered.report_id)
    [mine] = warning.deadlines(cn, incoming=True, envelope_id=item)
    assert mine.state("respond", t0 + timedelta(days=1)) == "met"
    [partner] = warning.deadlines(pk, incoming=False)
    assert partner.state("respond", t0 + timedelta(days=1)) == "met"
    [sealed] = [e for e in _kinds(cn, "report.sealed") if e.attrs["sop"] == "response@1"]
    assert sealed.attrs["in_reply_to"] == report_id


def test_reply_to_a_report_never_received_is_refused_and_stores_nothing(
    loop_pair: tuple[Node, Node],
) -> None:
    from exchange.errors import InputError

    _pk, cn = loop_pair
    before = len(_events(cn))
    with pytest.raises(InputError) as e:
        outbox.submit(cn, [reply("01890a5d-ac96-774b-bcce-b302099a8057")], datetime.now(UTC))
    assert e.value.code == "report.reply_unknown"
    assert len(_events(cn)) == before
    assert sqlite_store(cn).conn.execute("SELECT count(*) FROM reports").fetchone()[0] == 0


def test_the_officer_api_shows_the_thread_and_exports_our_ack_as_valid_cap(
    loop_pair: tuple[Node, Node],
) -> None:
    import asyncio

    from lxml import etree

    from node.rpc._pb.accord.v1 import officer_pb2
    from node.rpc.officer_service import ExchangeOfficerService

    pk, cn = loop_pair
    t0 = datetime.now(UTC).replace(microsecond=0)
    item = _alert(pk, cn, t0)
    service = ExchangeOfficerService(cn, None, now=lambda: t0 + timedelta(seconds=5))
    listed = asyncio.run(service.ListInbox(officer_pb2.ListInboxRequest(), None))
    [row] = listed.items
    assert (row.due_state, row.unread, row.ack_status) == ("DUE", True, "")
    asyncio.run(
        service.AckInbox(
            officer_pb2.AckInboxRequest(
                envelope_id=item[:13], status="actioned", officer="amina", note=NOTE
            ),
            None,
        )
    )
    shown = asyncio.run(
        service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=item, mark_read=True), None)
    )
    [ack] = shown.thread.acks
    assert (ack.status, ack.officer, ack.note, ack.direction) == ("actioned", "amina", NOTE, "sent")
    assert shown.item.ack_status == "actioned" and shown.item.due_state != "OVERDUE"
    body = json.loads(shown.report)
    xsd = etree.XMLSchema(
        etree.parse(str(Path(__file__).parents[1] / "vectors" / "cap" / "CAP-v1.2.xsd"))
    )
    doc = etree.fromstring(body["cap_acks"][-1].encode())
    assert xsd.validate(doc), xsd.error_log
    ns = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert doc.findtext("cap:msgType", namespaces=ns) == "Ack"
    assert "actioned by officer amina" in (doc.findtext("cap:note", namespaces=ns) or "")
    again = asyncio.run(service.ListInbox(officer_pb2.ListInboxRequest(), None))
    assert again.items[0].unread is False  # shown once: read
