"""The envelope test world: three nodes' keys, cards, agreements, one sealed report, and
helpers that seal, open and reject envelopes. Shared by ``test_envelope.py`` and
``test_envelope_attacks.py`` (docs/DESIGN.md §7)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from exchange.agreement import (
    VerifiedAgreement,
    direction,
    propose,
    sign_agreement,
    verify_agreement,
)
from exchange.card import SUITE_HYBRID, SUITE_X25519, Card, EncryptionKey
from exchange.envelope import (
    INFO_PREFIX,
    Envelope,
    ReportRelease,
    RetractionRelease,
    VerifiedRelease,
    open_envelope,
    parse_header_unverified,
    seal_envelope,
)
from exchange.errors import PeerDataError
from exchange.sdjwt import SealedReport, seal
from exchange.sop import Report, SchemaRegistry
from keys.signers import Ed25519Signer, EncryptionKeyPair, hpke_public_key, suite_of
from sop import load_shipped_schemas

A, B, C = "pk-moi", "cn-mps", "zz-other"  # A sends to B; C is a third node
TA = "threat-alert@1"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
NOT_AFTER = "2027-01-01T00:00:00Z"
REPORT_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
ENV_ID = "01890a5d-ac96-774b-8cce-b302099a8001"
REGISTRY = SchemaRegistry.from_documents(load_shipped_schemas())
LABELS = REGISTRY.labels(TA)
SIGNERS = {n: Ed25519Signer(hashlib.sha256(n.encode()).digest()) for n in (A, B, C)}
KID = {SUITE_HYBRID: "cn-mps/enc/1", SUITE_X25519: "cn-mps/enc/x1"}


def _secret(label: str, n: int) -> bytes:
    return (hashlib.sha512(label.encode()).digest() + hashlib.sha256(label.encode()).digest())[:n]


PAIRS = {
    s: EncryptionKeyPair(KID[s], s, _secret(s, n), NOT_AFTER)
    for s, n in ((SUITE_HYBRID, 96), (SUITE_X25519, 32))
}
DECRYPTERS = {p.kid: p for p in PAIRS.values()}
KEYS = {s: EncryptionKey(p.kid, s, p.public, NOT_AFTER) for s, p in PAIRS.items()}


class HpkeEncryptor:
    """A real HPKE single-shot encryptor (cryptography's hpke), as keys/ would provide."""

    def encrypt(self, suite: str, recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
        return suite_of(suite).encrypt(
            plaintext, hpke_public_key(suite, recipient_public), info=info
        )


ENCRYPTOR = HpkeEncryptor()


def card(node: str, identity_key: bytes | None = None) -> Card:
    return Card(
        node=node,
        name=f"Agency {node}",
        endpoint="127.0.0.1:7443",
        identity_key=identity_key if identity_key is not None else SIGNERS[node].public_key,
        log_vkey="-",
        witness_vkey="-",
        encryption_keys=tuple(KEYS.values()),
        tls_ca_pem="-",
        version=1,
        issued_at="2026-01-01T00:00:00Z",
    )


CARD_A = card(A)


def agreement(
    suite: str, *, labels: tuple[str, ...] = ("operational", "public")
) -> VerifiedAgreement:
    terms = propose(
        agreement_id="moi-mps-2026",
        parties=[A, B],
        schemas={TA: REGISTRY.digest(TA)},
        ceiling=[
            direction(A, B, "amber", {TA: (["recommended_actions"], labels)}),
            direction(B, A, "green", {TA: ([], ["public"])}),
        ],
        suite=suite,
        not_before=datetime(2026, 1, 1, tzinfo=UTC),
        not_after=datetime(2027, 1, 1, tzinfo=UTC),
    )
    signed = sign_agreement(sign_agreement(terms, A, SIGNERS[A]), B, SIGNERS[B])
    return verify_agreement(signed, {n: SIGNERS[n].public_key for n in (A, B)}, NOW)


AGREEMENTS = {s: agreement(s) for s in (SUITE_HYBRID, SUITE_X25519)}
POLICY_DIGEST = "sha256:" + "cd" * 32


def counting_random(seed: str) -> Any:
    counter = iter(range(1, 1 << 30))

    def draw(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}/{next(counter)}".encode()).digest()
        return out[:n]

    return draw


def threat_fields() -> dict[str, Any]:
    """Every value distinct, so a search for one finds only that one."""
    return {
        "title": "TITLE-MARK planned attack on convoy route",
        "threat_type": "armed-attack",
        "severity": "high",
        "region": "REGION-MARK Balochistan",
        "site": "SITE-MARK port access road",
        "location": {"lat": 25.1264, "lon": 62.3225},
        "time_window": {"start": "2026-06-01T00:00:00Z", "end": "2026-06-07T23:59:59Z"},
        "summary": "SUMMARY-MARK what is known",
        "indicators": ["INDICATOR-MARK white pickup at the gate"],
        "recommended_actions": ["ACTION-MARK suspend road moves"],
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    }


def make_sealed(
    fields: dict[str, Any] | None = None,
    *,
    issuer: str = A,
    signer: str = A,
    tlp: str = "amber",
    sop: str = TA,
    report_id: str = REPORT_ID,
) -> SealedReport:
    report = Report(sop, tlp, fields if fields is not None else threat_fields())
    return seal(
        report,
        signer=SIGNERS[signer],
        kid=f"{signer}/identity/1",
        issuer=issuer,
        report_id=report_id,
        issued_at=1_780_000_000,
        version=1,
        supersedes=None,
        sop_digest=REGISTRY.digest(sop) if sop in REGISTRY else "sha256:" + "00" * 32,
        random_bytes=counting_random(f"{issuer}/{report_id}/{tlp}"),
    )


SEALED = make_sealed()
RELEASED = ("recommended_actions", "region", "severity", "threat_type", "time_window", "title")
DERIVED = (("location", "round:1", {"lat": 25.1, "lon": 62.3}),)
WITHHELD = ("indicators", "site", "source", "summary")


def content(
    released: tuple[str, ...] = RELEASED,
    derived: tuple[tuple[str, str, Any], ...] = DERIVED,
    *,
    sealed: SealedReport = SEALED,
    suite: str = SUITE_HYBRID,
) -> ReportRelease:
    return ReportRelease(sealed, released, derived, AGREEMENTS[suite].digest, POLICY_DIGEST)


def seal_env(
    what: ReportRelease | RetractionRelease | None = None,
    *,
    seq: int = 1,
    suite: str = SUITE_HYBRID,
    key_suite: str | None = None,
    sender: str = A,
    recipient: str = B,
    signer: str | None = None,
    envelope_id: str = ENV_ID,
) -> Envelope:
    return seal_envelope(
        what if what is not None else content(suite=suite),
        envelope_id=envelope_id,
        sender=sender,
        recipient=recipient,
        seq=seq,
        recipient_key=KEYS[key_suite or suite],
        suite=key_suite or suite,
        now=NOW,
        signer=SIGNERS[signer or sender],
        encryptor=ENCRYPTOR,
    )


def open_env(env: Envelope, *, suite: str = SUITE_HYBRID, **overrides: Any) -> VerifiedRelease:
    args: dict[str, Any] = {
        "me": B,
        "expected_sender": A,
        "sender_card": CARD_A,
        "last_applied_seq": 0,
        "decrypter_for": DECRYPTERS.get,
        "agreement": AGREEMENTS[suite],
        "registry": REGISTRY,
        "now": NOW,
    }
    args.update(overrides)
    return open_envelope(env, **args)


def decrypt(env: Envelope) -> bytes:
    kid = parse_header_unverified(env.header).kid
    return DECRYPTERS[kid].decrypt(env.ciphertext, INFO_PREFIX + env.header)


def reject_code(env: Envelope, **overrides: Any) -> str:
    with pytest.raises(PeerDataError) as info:
        open_env(env, **overrides)
    return info.value.code


# ---- round trips ---------------------------------------------------------------------------------
