"""docs/THREATS.md P and N rows at the NODE level: a real partner (tests/adversarial/hostile.py)
serves crafted envelopes over mutual TLS; the victim pulls with the real Puller. Every row
asserts the victim's stored state afterwards:

- refused before the seq check (forged, misaddressed, reflected, jumped): ``snapshot()``
  unchanged, cursor unmoved, no receipt;
- authentic and next in sequence but refused (ceiling, splice, rollback, rewrite,
  downgrade): only the documented rejection rows (``inbound`` row, ``envelope.rejected``
  event, cursor, signed receipt naming the item); the inbox and reports unchanged;
- equivocation: both envelopes kept as evidence, one alarm event.

Pure-level rows of the same cases are in tests/exchange/test_envelope_attacks.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from exchange.card import SUITE_X25519
from exchange.envelope import MAX_SEQ, Envelope, RetractionRelease
from exchange.purpose import Purpose, signed_message
from exchange.receipt import verify_receipt
from exchange.revocation import Revocation
from exchange.sdjwt import Retraction, SealedReport, sign_retraction
from exchange.times import format_time
from node.rpc._pb.accord.v1 import card_pb2
from node.services import outbox
from node.services.inbox import cursor
from tests.adversarial.hostile import (
    HOSTILE,
    LOG_TABLES,
    REJECTION_TABLES,
    VICTIM,
    Forge,
    World,
    assert_only,
    integrity_ok,
    log_events,
    pull,
    rows,
    valid,
)
from tests.conftest import snapshot

pytestmark = pytest.mark.timeout(60)


def _received(w: World, *envelopes: Envelope) -> None:
    """Honest prefix: the victim applies ``envelopes``."""
    p = pull(w, list(envelopes))
    assert p.error is None and p.applied == len(envelopes), p.error


def _refused_unchanged(w: World, env_batches: list[list[Envelope]], code: str) -> None:
    """Refused before the seq check: nothing stored, cursor unmoved, no receipt."""
    before, at = snapshot(w.victim.data_dir), cursor(w.victim, HOSTILE)
    p = pull(w, *env_batches)
    assert p.code == code, p.error
    assert p.state.last_error_code == code
    assert p.peer.receipts == []
    assert cursor(w.victim, HOSTILE) == at
    assert snapshot(w.victim.data_dir) == before


def _rejected_and_recorded(w: World, env: Envelope, code: str) -> None:
    """Authentic and in sequence, content refused: recorded, never silent, nothing kept."""
    before, at = snapshot(w.victim.data_dir), cursor(w.victim, HOSTILE)
    inbox = rows(w.victim, "SELECT * FROM inbox")
    size = w.victim.log.size()
    p = pull(w, [env])
    assert p.error is None and p.applied == 0
    seq = at + 1
    assert cursor(w.victim, HOSTILE) == seq
    assert rows(w.victim, "SELECT * FROM inbox") == inbox
    assert rows(w.victim, "SELECT status, code FROM inbound WHERE seq = ?", seq) == [
        ("rejected", code)
    ]
    [event] = [e for e in log_events(w.victim, size) if e["kind"] == "envelope.rejected"]
    assert event["code"] == code and event["seq"] == seq
    [(statement, _signature)] = p.peer.receipts
    items = json.loads(statement)["items"]
    assert items == [{"seq": seq, "code": code}]
    assert_only(before, snapshot(w.victim.data_dir), REJECTION_TABLES)


# ---- P07 replay and equivocation -----------------------------------------------------------------


@pytest.mark.threat("P07")
def test_p07_exact_replay_is_idempotent(world: World) -> None:
    [e1] = Forge(world).submit()
    _received(world, e1)
    first = pull(world, [e1])  # noqa: F841  (the first pull's receipt is resent below)
    before = snapshot(world.victim.data_dir)
    again = pull(world, [e1], [e1, e1])
    assert again.error is None and again.applied == 0
    assert snapshot(world.victim.data_dir) == before
    # Acknowledged again: the receipt we signed for seq 1, byte for byte, once per batch.
    [(original, _sig)] = rows(world.victim, "SELECT statement, signature FROM receipts")
    assert [bytes(s) for s, _ in again.peer.receipts] == [bytes(original)] * 2


@pytest.mark.threat("P07")
def test_p07_whole_stream_replayed_adds_no_row_and_no_leaf(world: World) -> None:
    envelopes = Forge(world).submit(valid(), valid(), valid())
    _received(world, *envelopes)
    before, size = snapshot(world.victim.data_dir), world.victim.log.size()
    p = pull(world, envelopes[:2], envelopes)
    assert p.error is None and p.applied == 0
    assert world.victim.log.size() == size
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("P07")
def test_p07_equivocation_keeps_both_as_evidence(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    _received(world, e1)
    other = forge.seal_report(valid(title="another text"))
    twin = forge.seal(forge.content(other), seq=1)  # same seq, other bytes, properly signed
    before = snapshot(world.victim.data_dir)
    size = world.victim.log.size()
    p = pull(world, [twin])
    assert p.applied == 0 and cursor(world.victim, HOSTILE) == 1
    [(peer, kind, seq, held, incoming, blob)] = rows(
        world.victim,
        "SELECT peer, kind, seq, held_digest, incoming_digest, incoming FROM evidence",
    )
    [(stored_digest, stored_header)] = rows(
        world.victim, "SELECT digest, header FROM inbound WHERE seq = 1"
    )
    assert (peer, kind, seq, held) == (HOSTILE, "equivocation", 1, stored_digest)
    assert bytes(stored_header) == e1.header  # the first envelope stays as applied
    kept = json.loads(blob)  # the second is kept whole
    assert incoming != held and set(kept) == {"header", "ciphertext", "signature"}
    alarms = [e for e in log_events(world.victim, size) if e["kind"] == "envelope.rejected"]
    assert [a["code"] for a in alarms] == ["peer.equivocation"]
    assert_only(before, snapshot(world.victim.data_dir), {"evidence"} | LOG_TABLES)
    # The same equivocation replayed: no second evidence row, no second alarm (rate limit).
    before = snapshot(world.victim.data_dir)
    pull(world, [twin], [twin])
    assert snapshot(world.victim.data_dir) == before


# ---- P02 jumps, P08 reordering -------------------------------------------------------------------


@pytest.mark.parametrize("seq", [MAX_SEQ, 1 + 10**9, 2], ids=["2^53-1", "+10^9", "+1"])
@pytest.mark.threat("P02")
def test_p02_seq_jump_keeps_cursor(world: World, seq: int) -> None:
    forge = Forge(world)
    forge.submit()
    jumped = forge.seal(forge.content(forge.sealed(forge.report_ids()[0])), seq=seq)
    _refused_unchanged(world, [[jumped]], "peer.seq_jump")


@pytest.mark.threat("P02")
def test_p02_seq_2_63_minus_1_is_refused_unchanged(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    header = json.loads(e1.header)
    header["seq"] = 2**63 - 1
    huge = forge.resign(e1, header_bytes=json.dumps(header, separators=(",", ":")).encode())
    _refused_unchanged(world, [[huge]], "peer.envelope.bad_header")


@pytest.mark.threat("P02")
def test_p02_version_jump_is_a_recorded_rejection(world: World) -> None:
    forge = Forge(world)
    forge.submit()
    report_id = forge.report_ids()[0]
    from exchange.sdjwt import seal

    v1 = forge.sealed(report_id)
    jumped = seal(
        valid().report,
        signer=forge.signer,
        kid=world.hostile_card.fingerprint,
        issuer=HOSTILE,
        report_id=report_id,
        issued_at=int(world.now.timestamp()),
        version=1 + 10**9 if 1 + 10**9 < 2**31 else 2**31 - 1,
        supersedes=v1.issuer_jwt_digest,
        sop_digest=valid().sop_digest,
        random_bytes=__import__("os").urandom,
    )
    _rejected_and_recorded(world, forge.seal(forge.content(jumped), seq=1), "peer.version_jump")


@pytest.mark.threat("P08")
def test_p08_reordering(world: World) -> None:
    """(5, 7, 6): only seq = last + 1 applies; 7 stops the batch; the resend completes."""
    envelopes = Forge(world).submit(*(valid() for _ in range(7)))
    _received(world, *envelopes[:4])
    e5, e6, e7 = envelopes[4:]
    p = pull(world, [e5, e7, e6])
    assert p.applied == 1 and p.code == "peer.seq_jump"
    assert cursor(world.victim, HOSTILE) == 5
    assert rows(world.victim, "SELECT max(seq) FROM inbox") == [(5,)]
    [(statement, _)] = p.peer.receipts  # the receipt names only what was applied
    assert json.loads(statement)["last_seq"] == 5
    p = pull(world, [e6, e7])
    assert p.error is None and p.applied == 2 and cursor(world.victim, HOSTILE) == 7
    assert p.peer.pulls[-1].after_seq == 5  # the victim asked to resume from its cursor


# ---- P01 rollback, P04 mix-and-match, P14 ceiling, P11 rewriting ---------------------------------


@pytest.mark.threat("P01")
def test_p01_rollback(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    report_id = forge.report_ids()[0]
    [e2] = forge.amend(report_id, valid(severity="critical"))
    _received(world, e1, e2)
    old = forge.seal(forge.content(forge.sealed(report_id, 1)), seq=3)
    _rejected_and_recorded(world, old, "peer.rollback")
    newest = rows(world.victim, "SELECT max(version) FROM inbox WHERE report_id = ?", report_id)
    assert newest == [(2,)]


@pytest.mark.threat("P04")
def test_p04_mix_and_match_versions(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    report_id = forge.report_ids()[0]
    forge.amend(report_id, valid(severity="critical"))
    _received(world, e1)
    v1, v2 = forge.sealed(report_id, 1), forge.sealed(report_id, 2)
    mixed = SealedReport(v2.issuer_jwt, v1.disclosures, HOSTILE, report_id, 2)
    code = _content_code(world, forge.seal(forge.content(mixed), seq=2))
    assert code.startswith("peer.sdjwt.") or code == "peer.release.disclosures"


@pytest.mark.threat("P04")
def test_p04_disclosures_spliced_from_another_report(world: World) -> None:
    forge = Forge(world)
    a = forge.seal_report(valid())
    b = forge.seal_report(valid(title="second report"))
    spliced = SealedReport(
        a.issuer_jwt, {**a.disclosures, "title": b.disclosures["title"]}, HOSTILE, a.report_id, 1
    )
    code = _content_code(world, forge.seal(forge.content(spliced), seq=1))
    assert code.startswith("peer.sdjwt.") or code == "peer.release.disclosures"


def _content_code(world: World, env: Envelope) -> str:
    """Run ``_rejected_and_recorded`` for whatever content code the victim chose."""
    before = snapshot(world.victim.data_dir)
    p = pull(world, [env])
    assert p.error is None and p.applied == 0
    seq = cursor(world.victim, HOSTILE)
    [(status, code)] = rows(world.victim, "SELECT status, code FROM inbound WHERE seq = ?", seq)
    assert status == "rejected"
    assert rows(world.victim, "SELECT count(*) FROM inbox WHERE seq = ?", seq) == [(0,)]
    assert json.loads(p.peer.receipts[0][0])["items"] == [{"seq": seq, "code": code}]
    assert_only(before, snapshot(world.victim.data_dir), REJECTION_TABLES)
    return str(code)


@pytest.mark.parametrize("what", ["sensitive-field", "tlp-red"])
@pytest.mark.threat("P14")
def test_p14_above_ceiling(world: World, what: str) -> None:
    forge = Forge(world)
    report = valid() if what == "sensitive-field" else valid({**_alert(), "tlp": "red"})
    sealed = forge.seal_report(report)
    everything = forge.content(sealed, released=sorted(sealed.disclosures))
    _rejected_and_recorded(world, forge.seal(everything, seq=1), "peer.above_ceiling")


def _alert() -> dict[str, Any]:
    from tests.builders import ALERT

    return copy.deepcopy(ALERT)


def _own_report(world: World) -> str:
    """cn-mps seals one report of its own (it releases nothing: it has no policy)."""
    [done] = outbox.submit(world.victim, [valid()], world.now)
    return done.report_id


@pytest.mark.threat("P11")
def test_p11_partner_rewrites_our_report(world: World) -> None:
    ours = _own_report(world)
    forge = Forge(world)
    collision = forge.seal_report(valid(title="rewritten"), report_id=ours)
    reports = rows(world.victim, "SELECT * FROM reports")
    _rejected_and_recorded(
        world, forge.seal(forge.content(collision), seq=1), "peer.report_id_collision"
    )
    assert rows(world.victim, "SELECT * FROM reports") == reports


@pytest.mark.threat("P11")
def test_p11_partner_retracts_our_report(world: World) -> None:
    ours = _own_report(world)
    [(digest, version)] = rows(
        world.victim, "SELECT issuer_jwt_digest, version FROM reports WHERE report_id = ?", ours
    )
    forge = Forge(world)
    # pk-moi signs a retraction of cn-mps's report under its own name (it cannot sign as us).
    retraction = Retraction(HOSTILE, ours, version, digest, "erroneous", int(world.now.timestamp()))
    content = forge.content(forge.seal_report(valid()))
    release = RetractionRelease(
        retraction,
        sign_retraction(retraction, forge.signer),
        content.agreement_digest,
        content.policy_digest,
    )
    from exchange.envelope import seal_envelope
    from node.ids import uuid7
    from tests.adversarial.hostile import ENCRYPTOR

    key = forge.recipient_key()
    env = seal_envelope(
        release,
        envelope_id=uuid7(),
        sender=HOSTILE,
        recipient=VICTIM,
        seq=1,
        recipient_key=key,
        suite=key.suite,
        now=world.now,
        signer=forge.signer,
        encryptor=ENCRYPTOR,
    )
    _rejected_and_recorded(world, env, "peer.report_id_collision")
    assert rows(world.victim, "SELECT retracted_at FROM reports WHERE report_id = ?", ours) == [
        (None,)
    ]


# ---- P09 cross-context reuse, N02 the wrong signer on a valid session ----------------------------


@pytest.mark.threat("P09")
def test_p09_reflected_signature(world: World) -> None:
    """One of our own envelopes, signed by us, reflected back by the partner."""
    [e1] = Forge(world).submit()
    ours = world.victim.keyring().identity_signer()
    reflected = Forge(world).resign(e1, header=lambda h: h.update({"from": VICTIM}), signer=ours)
    _refused_unchanged(world, [[reflected]], "peer.envelope.reflected")


@pytest.mark.threat("P09")
def test_p09_receipt_replayed_as_envelope(world: World) -> None:
    [e1] = Forge(world).submit()
    first = pull(world, [e1])
    [(statement, signature)] = first.peer.receipts  # signed by cn-mps under accord/v1/receipt
    as_envelope = Envelope(statement, b"", signature)
    _refused_unchanged(world, [[as_envelope]], "peer.envelope.bad_header")
    # And pk-moi's receipt-purpose signature over a real envelope is no envelope signature.
    [e2] = Forge(world).submit()
    wrong_purpose = Forge(world).resign(e2, purpose=Purpose.RECEIPT)
    _refused_unchanged(world, [[wrong_purpose]], "peer.bad_signature")


@pytest.mark.threat("P09")
def test_p09_envelope_for_another_recipient(world: World) -> None:
    forge = Forge(world)
    sealed = forge.seal_report(valid())
    meant_for_de = forge.seal(forge.content(sealed), seq=1, recipient="de-bka")
    _refused_unchanged(world, [[meant_for_de]], "peer.envelope.wrong_recipient")


@pytest.mark.threat("N02")
def test_n02_session_of_a_carrying_an_envelope_signed_by_b(world: World) -> None:
    from keys.signers import Ed25519Signer

    [e1] = Forge(world).submit()
    b = Ed25519Signer(bytes(range(32)))
    by_b = Forge(world).resign(e1, signer=b)  # claims pk-moi, signed by another key
    _refused_unchanged(world, [[by_b]], "peer.bad_signature")
    as_b = Forge(world).resign(e1, header=lambda h: h.update({"from": "de-bka"}), signer=b)
    _refused_unchanged(world, [[as_b]], "peer.envelope.wrong_sender")


@pytest.mark.threat("N02")
def test_n02_session_of_a_carrying_an_envelope_signed_by_ourselves(world: World) -> None:
    [e1] = Forge(world).submit()
    by_us = Forge(world).resign(e1, signer=world.victim.keyring().identity_signer())
    _refused_unchanged(world, [[by_us]], "peer.bad_signature")


# ---- P05 forged content on the pull path, N03 bit flips, N06 downgrade ---------------------------


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.threat("P05")
def test_p05_forged_on_pull(world: World) -> None:
    [e1] = Forge(world).submit()
    forged = Envelope(e1.header, e1.ciphertext, _flip(e1.signature, 7))
    _refused_unchanged(world, [[forged]], "peer.bad_signature")
    unsigned = Envelope(e1.header, e1.ciphertext, b"")
    _refused_unchanged(world, [[unsigned]], "peer.bad_signature")
    _received(world, e1)  # the genuine envelope still applies afterwards


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda e: Envelope(_flip(e.header, 10), e.ciphertext, e.signature), None),
        (lambda e: Envelope(e.header, _flip(e.ciphertext, 100), e.signature), "peer.bad_signature"),
        (lambda e: Envelope(e.header, e.ciphertext, _flip(e.signature, 63)), "peer.bad_signature"),
        (lambda e: Envelope(e.header[:-3], e.ciphertext, e.signature), "peer.envelope.bad_header"),
        (lambda e: Envelope(e.header, e.ciphertext[:50], e.signature), "peer.bad_signature"),
        (lambda e: Envelope(e.header, e.ciphertext, e.signature[:40]), "peer.bad_signature"),
    ],
    ids=["header-bit", "ciphertext-bit", "signature-bit", "header-cut", "ct-cut", "sig-cut"],
)
@pytest.mark.threat("N03")
def test_n03_flipped_or_truncated_in_transit(world: World, mutate: Any, code: str | None) -> None:
    [e1] = Forge(world).submit()
    bad = mutate(e1)
    before = snapshot(world.victim.data_dir)
    p = pull(world, [bad])
    assert p.error is not None and p.code and p.code.startswith("peer.")
    if code is not None:
        assert p.code == code
    assert snapshot(world.victim.data_dir) == before and p.peer.receipts == []


@pytest.mark.threat("N03")
def test_n03_flipped_ciphertext_signed_by_the_partner_is_recorded(world: World) -> None:
    [e1] = Forge(world).submit()
    forge = Forge(world)
    broken = forge.resign(Envelope(e1.header, _flip(e1.ciphertext, 200), e1.signature))
    _rejected_and_recorded(world, broken, "peer.decrypt")


@pytest.mark.threat("N06")
def test_n06_downgrade_signed_by_the_partner_is_recorded(world: World) -> None:
    [e1] = Forge(world).submit()
    downgraded = Forge(world).resign(e1, header=lambda h: h.update({"suite": SUITE_X25519}))
    _rejected_and_recorded(world, downgraded, "peer.suite_downgrade")


@pytest.mark.threat("N06")
def test_n06_suite_altered_or_stripped_in_transit(world: World) -> None:
    [e1] = Forge(world).submit()
    header = json.loads(e1.header)
    altered = json.dumps({**header, "suite": SUITE_X25519}, separators=(",", ":")).encode()
    stripped = json.dumps(
        {k: v for k, v in header.items() if k != "suite"}, separators=(",", ":"), sort_keys=True
    ).encode()
    _refused_unchanged(
        world, [[Envelope(altered, e1.ciphertext, e1.signature)]], "peer.bad_signature"
    )
    resigned = Forge(world).resign(e1, header_bytes=stripped)
    _refused_unchanged(world, [[resigned]], "peer.envelope.bad_header")


# ---- N04 a stream cut in the middle of a batch ---------------------------------------------------


@pytest.mark.threat("N04")
def test_n04_stream_cut_mid_batch_applies_nothing_partial(world: World) -> None:
    envelopes = Forge(world).submit(*(valid() for _ in range(5)))
    p = pull(world, envelopes[:2], envelopes[2:], cut_after=1)
    assert p.code == "UNAVAILABLE"
    # The first batch arrived whole and was applied in one transaction; of the second,
    # nothing: the cut batch is never half-stored.
    assert cursor(world.victim, HOSTILE) == 2
    assert rows(world.victim, "SELECT seq FROM inbox ORDER BY seq") == [(1,), (2,)]
    assert rows(world.victim, "SELECT max(seq) FROM inbound") == [(2,)]
    p = pull(world, envelopes[2:])
    assert p.peer.pulls[0].after_seq == 2  # resumes from the stored cursor
    assert p.error is None and p.applied == 3 and cursor(world.victim, HOSTILE) == 5


# ---- P12 never silent --------------------------------------------------------------------------


@pytest.mark.threat("P12")
def test_p12_receipt_names_each_rejected_item_and_verifies(world: World) -> None:
    forge = Forge(world)
    good = forge.submit(valid(), valid())
    sealed = forge.seal_report(valid())
    above = forge.seal(forge.content(sealed, released=sorted(sealed.disclosures)), seq=3)
    p = pull(world, [*good, above])
    assert p.error is None and p.applied == 2
    [(statement, signature)] = p.peer.receipts
    from exchange.envelope import envelope_digest

    sent = {1: envelope_digest(good[0]), 2: envelope_digest(good[1]), 3: envelope_digest(above)}
    receipt = verify_receipt(
        statement,
        signature,
        signer_key=world.victim_card.identity_key,
        expected_from=VICTIM,
        expected_to=HOSTILE,
        digests_for_range=lambda a, b: [sent[s] for s in range(a, b + 1)],
    )
    assert [(r.seq, r.code) for r in receipt.rejections] == [(3, "peer.above_ceiling")]
    assert p.state.rejected == 1


# ---- P06 revocations served with the card -------------------------------------------------------


def _statement(w: World, **changes: Any) -> card_pb2.Revocation:
    """A revocation of pk-moi's current key, signed by it, with ``changes`` applied."""
    key = w.hostile.own_chain().latest.identity_key
    fields: dict[str, Any] = {
        "node": HOSTILE,
        "identity_key": key,
        "revoked_from": format_time(w.now),
        "reason": "compromised",
        "issued_at": format_time(w.now),
    }
    fields.update(changes)
    data = Revocation(**fields).to_bytes()
    signature = w.hostile.keyring().identity_signer().sign(signed_message(Purpose.REVOCATION, data))
    return card_pb2.Revocation(statement=data, signature=signature)


@pytest.mark.parametrize(
    "bend",
    [
        lambda m: card_pb2.Revocation(statement=m.statement, signature=_flip(m.signature, 5)),
        lambda m: card_pb2.Revocation(statement=m.statement + b" ", signature=m.signature),
        lambda m: card_pb2.Revocation(statement=m.statement, signature=b""),
    ],
    ids=["signature-bit", "trailing-byte", "unsigned"],
)
@pytest.mark.threat("P06")
def test_p06_forged_revocation_on_get_card(world: World, bend: Any) -> None:
    [e1] = Forge(world).submit()
    before, at = snapshot(world.victim.data_dir), cursor(world.victim, HOSTILE)
    p = pull(world, [e1], revocations=[bend(_statement(world))])
    assert p.code == "peer.revocation_invalid", p.error
    assert p.applied == 0 and p.peer.pulls == [] and p.peer.receipts == []
    assert cursor(world.victim, HOSTILE) == at
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.parametrize(
    "changes",
    [{"node": VICTIM}, {"identity_key": bytes(32)}],
    ids=["another-node", "key-not-in-chain"],
)
@pytest.mark.threat("P06")
def test_p06_revocation_of_what_is_not_its_key(world: World, changes: dict[str, Any]) -> None:
    before = snapshot(world.victim.data_dir)
    p = pull(world, revocations=[_statement(world, **changes)])
    assert p.code == "peer.revocation_invalid", p.error
    assert snapshot(world.victim.data_dir) == before


@pytest.mark.threat("P06")
def test_p06_genuine_revocation_stops_everything_after_it(world: World) -> None:
    forge = Forge(world)
    [e1] = forge.submit()
    _received(world, e1)
    fp = world.hostile.own_chain().latest.fingerprint
    world.hostile.revoke_own_key(fp, world.now, "compromised", world.now)
    [e2] = forge.submit()
    p = pull(world, [e2])
    assert p.code == "peer.revoked", p.error
    assert p.applied == 0 and cursor(world.victim, HOSTILE) == 1
    assert world.victim.trust_store().get(HOSTILE).status == "revoked"
    [event] = [e for e in log_events(world.victim) if e["kind"] == "peer.revoked"]
    assert event["revoked_key"] == fp and event["source"] == "statement"
    integrity_ok(world.victim)
