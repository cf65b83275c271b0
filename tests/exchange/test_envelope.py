"""Envelopes (docs/DESIGN.md §7): round trips with real HPKE for both suites, the sequence rule,
duplicates and equivocation, retractions, sealing refusals, and the no-leak property.

Attack tables (docs/THREATS.md N02, N03, N06, P02, P09, P11, P14, L01) are in
``test_envelope_attacks.py``; both use the world in ``envelope_world.py``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import VerifyKey

from exchange.agreement import (
    ceiling_for,
)
from exchange.canonical import b64url_decode, canonical_json
from exchange.card import SUITE_HYBRID, SUITE_X25519, EncryptionKey
from exchange.envelope import (
    ContentRejected,
    Envelope,
    EnvelopeArgumentInvalid,
    EnvelopeDuplicate,
    EnvelopeEquivocation,
    ReportRelease,
    RetractionRelease,
    SeqOutcome,
    check_duplicate,
    check_seq,
    envelope_digest,
    seal_envelope,
)
from exchange.errors import PeerDataError
from exchange.policy import PeerStats, decide, parse_policy
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import Retraction, sign_retraction
from exchange.sop import Report, validate_report
from tests.exchange.envelope_world import (
    AGREEMENTS,
    DERIVED,
    ENCRYPTOR,
    ENV_ID,
    KEYS,
    KID,
    LABELS,
    NOW,
    PAIRS,
    POLICY_DIGEST,
    REGISTRY,
    RELEASED,
    REPORT_ID,
    SEALED,
    SIGNERS,
    TA,
    A,
    B,
    content,
    decrypt,
    make_sealed,
    open_env,
    seal_env,
    threat_fields,
)


@pytest.mark.parametrize("suite", [SUITE_HYBRID, SUITE_X25519], ids=["hybrid", "x25519"])
def test_round_trip_returns_exactly_the_released_fields(suite: str) -> None:
    validate_report(REGISTRY, Report(TA, "amber", threat_fields()))  # valid under the pack
    env = seal_env(suite=suite)
    got = open_env(env, suite=suite)
    original = threat_fields()
    assert dict(got.fields) == {name: original[name] for name in RELEASED}
    assert [(d.field, d.transform, d.value) for d in got.derived] == list(DERIVED)
    assert got.derived[0].source == SEALED.disclosure_digests()["location"]
    assert got.header.seq == 1 and got.header.sender == A and got.header.recipient == B
    assert got.header.suite == suite and got.header.kid == KID[suite]
    assert got.report is not None and got.report.issuer == A and got.retraction is None
    assert got.envelope_digest == envelope_digest(env)
    assert got.release.agreement_digest == AGREEMENTS[suite].digest
    signed = signed_message(Purpose.RELEASE, got.release_bytes)  # kept as evidence
    VerifyKey(SIGNERS[A].public_key).verify(signed, got.release_signature)


def test_header_is_exact_canonical_json_and_info_binds_it() -> None:
    env = seal_env()
    doc = json.loads(env.header)
    assert set(doc) == {"type", "id", "from", "to", "seq", "kind", "created_at", "suite", "kid"}
    assert doc["type"] == "accord.envelope/v1" and doc["kind"] == "report"
    assert doc["created_at"] == "2026-06-01T12:00:00Z"
    assert canonical_json(doc) == env.header
    with pytest.raises(PeerDataError, match="does not decrypt"):
        PAIRS[SUITE_HYBRID].decrypt(env.ciphertext, b"accord/v1/envelope\n")  # info matters
    assert json.loads(decrypt(env)).keys() == {"presentation", "release", "release_signature"}


def test_decision_from_the_real_policy_engine_round_trips() -> None:
    policy_text = f"""
[peer.{B}]
max_tlp = "amber"
[peer.{B}.schema."{TA}"]
release_labels = ["public", "operational"]
release = ["recommended_actions"]
withhold_labels = ["sensitive-source"]
transform = {{ location = "round:1", site = "pseudonym" }}
"""
    ag = AGREEMENTS[SUITE_HYBRID]
    ceiling = ceiling_for(ag, A, B, TA, LABELS, REGISTRY.digest(TA))
    policy = parse_policy(policy_text, {TA: LABELS}, ceilings={B: {TA: ceiling}})
    decision = decide(
        threat_fields(), "amber", TA, LABELS, policy, ceiling, B, PeerStats(), NOW, b"k" * 32
    )
    got = open_env(seal_env(ReportRelease.from_decision(SEALED, decision)))
    assert set(got.fields) == set(decision.released)
    assert {d.field: d.transform for d in got.derived} == {
        "location": "round:1",
        "site": "pseudonym",
    }
    assert not set(got.fields) & set(decision.withheld)


def test_retraction_round_trip() -> None:
    retraction = Retraction(A, REPORT_ID, 1, SEALED.issuer_jwt_digest, "erroneous", 1_780_000_100)
    signed = sign_retraction(retraction, SIGNERS[A])
    what = RetractionRelease(retraction, signed, AGREEMENTS[SUITE_HYBRID].digest, POLICY_DIGEST)
    env = seal_env(what)
    got = open_env(env)
    assert got.header.kind == "retraction" and got.retraction == retraction
    assert got.retraction_signed == signed and got.report is None and dict(got.fields) == {}
    assert got.release.disclosed == () and got.release.derived == ()


# ---- the sequence rule, duplicates, equivocation (docs/THREATS.md P02, P07, P08) ------------------------


@pytest.mark.parametrize(
    ("seq", "last", "expected"),
    [
        (1, 0, SeqOutcome.APPLY),
        (6, 5, SeqOutcome.APPLY),
        (5, 5, SeqOutcome.DUPLICATE),
        (1, 5, SeqOutcome.DUPLICATE),
        (7, 5, "peer.seq_jump"),  # P08: 5, 7, 6 -- 7 waits for a resend
        (2**63 - 1, 5, "peer.seq_jump"),  # P02
        (5 + 10**9, 5, "peer.seq_jump"),  # P02
        (0, 0, "peer.envelope.bad_header"),
        (-1, 0, "peer.envelope.bad_header"),
    ],
)
def test_check_seq(seq: int, last: int, expected: SeqOutcome | str) -> None:
    if isinstance(expected, SeqOutcome):
        assert check_seq(seq, last) is expected
    else:
        with pytest.raises(PeerDataError) as info:
            check_seq(seq, last)
        assert info.value.code == expected


@pytest.mark.threat("P07")
def test_p07_exact_replay_is_a_duplicate_to_acknowledge_again() -> None:
    env = seal_env(seq=3)
    applied = open_env(env, last_applied_seq=2)
    with pytest.raises(EnvelopeDuplicate) as info:
        open_env(env, last_applied_seq=3)
    assert info.value.code == "peer.duplicate" and info.value.header.seq == 3
    assert info.value.envelope_digest == applied.envelope_digest
    check_duplicate(env, Envelope(env.header, env.ciphertext, env.signature))  # same bytes


@pytest.mark.threat("P07")
def test_p07_same_seq_other_bytes_is_equivocation_with_both_digests() -> None:
    held = seal_env(seq=3)
    other = seal_env(content(RELEASED[:2]), seq=3)  # signed by the partner, different bytes
    with pytest.raises(EnvelopeDuplicate):
        open_env(other, last_applied_seq=3)  # authentic: the signature verified first
    with pytest.raises(EnvelopeEquivocation) as info:
        check_duplicate(held, other)
    assert info.value.code == "peer.equivocation"
    assert {info.value.held_digest, info.value.incoming_digest} == {
        envelope_digest(held),
        envelope_digest(other),
    }


def test_content_rejection_names_the_authentic_seq() -> None:
    env = seal_env(seq=4)
    with pytest.raises(ContentRejected) as info:
        open_env(env, last_applied_seq=3, decrypter_for=lambda kid: None)
    assert info.value.code == "peer.decrypt" and info.value.header.seq == 4
    assert info.value.envelope_digest == envelope_digest(env)


# ---- sealing refuses what must never leave ----------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "kwargs", "rule"),
    [
        (content(sealed=make_sealed(issuer=B, signer=B)), {}, "only reports it issued"),
        (content((), ()), {}, "nothing to release"),
        (content(("location",)), {}, "both released and derived"),
        (content(("nonexistent",), ()), {}, "not in the report"),
        (content(RELEASED, (("location", "ROUND 1", 1),)), {}, "transform"),
        (None, {"key_suite": SUITE_X25519}, "suite is not the agreement"),
        (None, {"seq": 0}, "seq"),
        (None, {"recipient": A}, "differ"),
        (None, {"envelope_id": "not-a-uuid"}, "UUIDv7"),
    ],
)
def test_sealing_refuses(what: ReportRelease | None, kwargs: dict[str, Any], rule: str) -> None:
    if kwargs.get("key_suite"):
        with pytest.raises(EnvelopeArgumentInvalid, match=rule):
            seal_envelope(
                what or content(),
                envelope_id=ENV_ID,
                sender=A,
                recipient=B,
                seq=1,
                recipient_key=KEYS[SUITE_X25519],
                suite=SUITE_HYBRID,
                now=NOW,
                signer=SIGNERS[A],
                encryptor=ENCRYPTOR,
            )
        return
    with pytest.raises(EnvelopeArgumentInvalid, match=rule):
        seal_env(what, **kwargs)


def test_sealing_refuses_an_expired_recipient_key() -> None:
    old = EncryptionKey(
        KID[SUITE_HYBRID], SUITE_HYBRID, PAIRS[SUITE_HYBRID].public, "2026-01-01T00:00:00Z"
    )
    with pytest.raises(EnvelopeArgumentInvalid, match="expired"):
        seal_envelope(
            content(),
            envelope_id=ENV_ID,
            sender=A,
            recipient=B,
            seq=1,
            recipient_key=old,
            suite=SUITE_HYBRID,
            now=NOW,
            signer=SIGNERS[A],
            encryptor=ENCRYPTOR,
        )


# ---- invariant 1: nothing withheld leaves (docs/DESIGN.md §13) ----------------------------------------------

PUBLIC_OR_OPERATIONAL = (f for f, label in LABELS.items() if label in ("public", "operational"))
ALLOWED = [*sorted(PUBLIC_OR_OPERATIONAL), "recommended_actions"]


def _visible_to_partner(env: Envelope) -> bytes:
    """Everything the partner can read: header, plaintext, release, decoded disclosures."""
    plaintext = decrypt(env)
    body = json.loads(plaintext)
    disclosures = body["presentation"].split("~")[1:-1]
    decoded = b"".join(b64url_decode(d, what="disclosure") for d in disclosures)
    release = base64.b64decode(body["release"])
    return env.header + env.ciphertext + plaintext + release + decoded


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    released=st.sets(st.sampled_from(ALLOWED), min_size=1),
    derive_location=st.booleans(),
)
def test_withheld_values_never_leave_and_open_returns_exactly_the_released(
    released: set[str], derive_location: bool
) -> None:
    derived = DERIVED if derive_location and "location" not in released else ()
    what = content(tuple(sorted(released)), derived, suite=SUITE_X25519)
    env = seal_env(what, suite=SUITE_X25519)
    got = open_env(env, suite=SUITE_X25519)
    original = threat_fields()
    assert dict(got.fields) == {name: original[name] for name in released}
    assert [d.field for d in got.derived] == [d[0] for d in derived]
    visible = _visible_to_partner(env)
    for name, value in original.items():
        if name in released:
            continue
        assert canonical_json(value) not in visible, name
        assert SEALED.disclosures[name].encode() not in visible, name
