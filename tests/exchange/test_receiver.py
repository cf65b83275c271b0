"""The pure receiver (exchange/receiver.py, ADR 0016): the key era, revocation and the key
floor without a node, a database or a clock. Node-level rows: tests/adversarial/
test_receive_rules.py."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest

from exchange.card import VerifiedChain
from exchange.envelope import Envelope, seal_envelope
from exchange.receiver import (
    Accepted,
    Outcome,
    Receiver,
    Refused,
    Replay,
    Stop,
    TrustedState,
    key_version,
)
from keys.signers import Ed25519Signer
from tests.exchange.envelope_world import (
    AGREEMENTS,
    CARD_A,
    DECRYPTERS,
    ENCRYPTOR,
    KEYS,
    NOW,
    REGISTRY,
    SIGNERS,
    A,
    B,
    content,
    make_sealed,
)

SUITE = "MLKEM768_X25519/HKDF_SHA256/CHACHA20_POLY1305"
NEW = Ed25519Signer(hashlib.sha256(b"pk-moi/identity/2").digest())
ROTATED_AT = NOW - timedelta(minutes=1)
CARD_A2 = dataclasses.replace(
    CARD_A, identity_key=NEW.public_key, version=2, issued_at="2026-06-01T11:59:00Z"
)
CHAIN = VerifiedChain((CARD_A, CARD_A2), ())  # as the trust store hands it over
BEFORE = NOW - timedelta(minutes=2)  # in the old key's era


def env(seq: int, signer: Ed25519Signer, at: datetime, report_id: str | None = None) -> Envelope:
    sealed = make_sealed(report_id=report_id or f"01890a5d-ac96-774b-bcce-b30209900{seq:03d}")
    return seal_envelope(
        content(sealed=sealed),
        envelope_id=f"01890a5d-ac96-774b-8cce-b30209900{seq:03d}",
        sender=A,
        recipient=B,
        seq=seq,
        recipient_key=KEYS[SUITE],
        suite=SUITE,
        now=at,
        signer=signer,
        encryptor=ENCRYPTOR,
    )


def receiver(
    *,
    last: int = 0,
    last_envelope: Envelope | None = None,
    revoked: Mapping[bytes, datetime] | None = None,
    held: Mapping[int, Envelope] | None = None,
) -> Receiver:
    state = TrustedState(B, A, CHAIN, revoked or {}, last, last_envelope, AGREEMENTS[SUITE])
    return Receiver(
        state,
        decrypter_for=DECRYPTERS.get,
        registry=REGISTRY,
        now=NOW,
        held_envelope=(held or {}).get,
        held_version=lambda _issuer, _report_id: None,
        own_report=lambda _report_id: False,
    )


def code(outcome: Outcome) -> str:
    if isinstance(outcome, Stop):
        return outcome.error.code
    assert isinstance(outcome, Refused), outcome
    return outcome.code


OLD = SIGNERS[A]


@pytest.mark.threat("P15")
def test_p15_backlog_arrives_then_the_old_key_is_below_the_floor() -> None:
    r = receiver()
    assert isinstance(r.receive(env(1, OLD, BEFORE)), Accepted)  # queued before the rotation
    assert isinstance(r.receive(env(2, NEW, NOW)), Accepted) and r.key_floor == 2
    assert code(r.receive(env(3, OLD, BEFORE))) == "peer.key_superseded"
    assert r.last_applied == 2
    # The floor is read back from the envelope stored at the last applied seq.
    later = receiver(last=2, last_envelope=env(2, NEW, NOW))
    assert later.key_floor == 2
    assert code(later.receive(env(3, OLD, BEFORE))) == "peer.key_superseded"


@pytest.mark.threat("P15")
def test_p15_revoked_key_signs_no_new_seq_whatever_its_created_at() -> None:
    revoked = {OLD.public_key: NOW}  # revoked from after the claimed time
    first = env(1, OLD, BEFORE)
    assert code(receiver(revoked=revoked).receive(first)) == "peer.revoked"
    # An applied seq can still be compared: the exact copy is a replay.
    r = receiver(last=1, last_envelope=first, revoked=revoked, held={1: first})
    assert isinstance(r.receive(first), Replay)
    # ... but the old key signs nothing beyond it.
    assert code(r.receive(env(2, OLD, BEFORE))) == "peer.revoked"


@pytest.mark.threat("P15")
def test_p15_revoked_key_is_no_sdjwt_issuer() -> None:
    carrier = env(1, NEW, NOW)  # signed by the current key; the SD-JWT by the old one
    assert isinstance(receiver().receive(carrier), Accepted)
    assert code(receiver(revoked={OLD.public_key: NOW}).receive(carrier)) == "peer.bad_signature"


def test_key_version_names_the_signing_card() -> None:
    assert key_version(CHAIN, env(1, OLD, BEFORE)) == 1
    assert key_version(CHAIN, env(1, NEW, NOW)) == 2
    assert key_version(CHAIN, env(1, SIGNERS[B], NOW)) is None
