"""Every byte sealing signs or stores, pinned (issue 19): with fixed keys, fixed randomness
and a deterministic stand-in for HPKE (it records what it is given), the SD-JWT, every
disclosure, the release statement, the plaintext handed to HPKE, the envelope header and
the outer signature hash to the digests the code produced before the submit path was made
faster. A change to any of them is a format change, not an optimisation."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.envelope import Envelope, ReportRelease, seal_envelope
from tests.exchange.envelope_world import (
    AGREEMENTS,
    KEYS,
    NOW,
    POLICY_DIGEST,
    SIGNERS,
    A,
    B,
    make_sealed,
    threat_fields,
)


class RecordingEncryptor:
    """Deterministic: the 'ciphertext' is a digest of what it was given, which it keeps."""

    def __init__(self) -> None:
        self.given: list[tuple[str, bytes, bytes, bytes]] = []

    def encrypt(self, suite: str, recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
        self.given.append((suite, recipient_public, plaintext, info))
        return hashlib.sha512(suite.encode() + recipient_public + plaintext + info).digest()


def _fields(case: str) -> dict[str, Any]:
    fields = threat_fields()
    if case == "unicode":
        fields["title"] = (
            "Convoi \u00e9vit\u00e9 \u2014 \u0645\u0648\u0627\u0635\u0644\u0627\u062a \U0001f6a7"
        )
        fields["indicators"] = ["\u00fc" * 40, 'a\\b"c\n\t']
    if case == "numbers":
        fields["location"] = {"lat": 25.0, "lon": -0.000123}
        fields["source"] = {"kind": "sigint", "reliability": "A", "credibility": 1}
    return fields


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()


def _seal_case(case: str, suite: str, seq: int) -> str:
    sealed = make_sealed(_fields(case), report_id=f"01890a5d-ac96-774b-bcce-b302{seq % 10**8:08d}")
    derived: tuple[tuple[str, str, Any], ...] = (
        ("location", "round:1", {"lat": 25.1, "lon": 62.3}),
        ("site", "pseudonym", "p-" + "ab" * 8),
    )
    released = ("recommended_actions", "region", "severity", "threat_type", "time_window", "title")
    encryptor = RecordingEncryptor()
    envelopes: list[Envelope] = []
    for n, recipient in enumerate((B, "gb-fco")):
        content = ReportRelease(sealed, released, derived, AGREEMENTS[suite].digest, POLICY_DIGEST)
        envelopes.append(
            seal_envelope(
                content,
                envelope_id=f"01890a5d-ac96-774b-8cce-b302{seq % 10**6:06d}{n:02d}",
                sender=A,
                recipient=recipient,
                seq=seq + n,
                recipient_key=KEYS[suite],
                suite=suite,
                now=NOW,
                signer=SIGNERS[A],
                encryptor=encryptor,
            )
        )
    parts = [sealed.issuer_jwt.encode(), sealed.full_presentation().encode()]
    parts += [f"{k}={v}".encode() for k, v in sorted(sealed.disclosure_digests().items())]
    parts.append(sealed.issuer_jwt_digest.encode())
    for env in envelopes:
        parts += [env.header, env.ciphertext, env.signature]
    for suite_name, public, plaintext, info in encryptor.given:
        parts += [suite_name.encode(), public, plaintext, info]
    return _digest(parts)


GOLDEN = {
    ("plain", SUITE_HYBRID, 1): "c676c66b201bb147f8285c8e7f1829c1849735c1690c76f4870175809d16f104",
    ("plain", SUITE_X25519, 7): "631ccd75ac1f8187d329a2f46a9979c7995db867d352fe45d13fa0a8dca272d0",
    (
        "unicode",
        SUITE_HYBRID,
        300,
    ): "19e78ec5a881cbfd27f29b81c8dfff2be3441d333c9300f93d906499c2b17a00",
    ("numbers", SUITE_X25519, 9_007_199_254_740_990): (
        "804ee05c6fd7e449c9d30fff4dc97b5293e253726ec600bf5d4de1da01422113"
    ),
}


@pytest.mark.parametrize(("case", "suite", "seq"), sorted(GOLDEN))
def test_sealed_bytes_are_the_pinned_ones(case: str, suite: str, seq: int) -> None:
    assert _seal_case(case, suite, seq) == GOLDEN[(case, suite, seq)]
