"""Agreement terminations (docs/DESIGN.md §6.1): one party's signed word that an agreement
ends at a given time, which the other party verifies and records.

A statement is canonical JSON (RFC 8785)::

    {"type": "accord.agreement-termination/v1", "agreement": "sha256:<agreement digest>",
     "by": "pk-moi", "peer": "cn-mps", "effective_at": "2026-12-01T00:00:00Z",
     "reason": "replaced", "issued_at": "2026-11-30T09:00:00Z"}

signed as ``"accord/v1/agreement-termination\\n" + statement`` by the identity key of
``by``. The file handed to the partner is canonical JSON
``{"type": "accord.signed-agreement-termination/v1", "statement": b64, "signature": b64}``.
Either party may end an agreement alone (a treaty both signed can be denounced by one);
from ``effective_at`` on, neither node releases or accepts anything under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from exchange.canonical import b64, b64_decode, canonical_json, parse_canonical_json_unverified
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import check_node_id
from exchange.purpose import Purpose, signed_message
from exchange.times import parse_time

TERMINATION_TYPE: Final = "accord.agreement-termination/v1"
SIGNED_TYPE: Final = "accord.signed-agreement-termination/v1"
MAX_TERMINATION_BYTES: Final = 4 * 1024
REASONS: Final = ("replaced", "breach", "ended")
_KEYS = frozenset({"type", "agreement", "by", "peer", "effective_at", "reason", "issued_at"})


@dataclass(frozen=True)
class Termination:
    agreement: str  # the agreement digest, "sha256:<hex>"
    by: str  # the party that ends it
    peer: str  # the other party
    effective_at: str
    reason: str
    issued_at: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": TERMINATION_TYPE,
                "agreement": self.agreement,
                "by": self.by,
                "peer": self.peer,
                "effective_at": self.effective_at,
                "reason": self.reason,
                "issued_at": self.issued_at,
            }
        )


@dataclass(frozen=True)
class SignedTermination:
    statement: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": SIGNED_TYPE,
                "statement": b64(self.statement),
                "signature": b64(self.signature),
            }
        )


def _bad(why: str) -> PeerDataError:
    return PeerDataError(f"agreement termination refused: {why}", code="agreement.bad_termination")


def sign_termination(termination: Termination, signer: Signer) -> SignedTermination:
    statement = termination.to_bytes()
    parse_termination_unverified(statement)  # what we sign is what a partner accepts
    return SignedTermination(statement, signer.sign(signed_message(Purpose.TERMINATION, statement)))


def parse_signed_termination_unverified(data: bytes) -> SignedTermination:
    try:
        doc = parse_canonical_json_unverified(
            data, what="agreement termination", max_bytes=MAX_TERMINATION_BYTES
        )
    except InputError as e:
        raise _bad(e.message) from e
    if not isinstance(doc, dict) or doc.get("type") != SIGNED_TYPE:
        raise _bad(f"type is not {SIGNED_TYPE}")
    if set(doc) != {"type", "statement", "signature"}:
        raise _bad("fields must be exactly signature, statement, type")
    try:
        statement = b64_decode(doc["statement"], what="termination statement")
        signature = b64_decode(doc["signature"], what="termination signature")
    except InputError as e:
        raise _bad(e.message) from e
    return SignedTermination(statement, signature)


def parse_termination_unverified(data: bytes) -> Termination:
    try:
        doc = parse_canonical_json_unverified(
            data, what="termination statement", max_bytes=MAX_TERMINATION_BYTES
        )
    except InputError as e:
        raise _bad(e.message) from e
    if not isinstance(doc, dict) or doc.get("type") != TERMINATION_TYPE:
        raise _bad(f"type is not {TERMINATION_TYPE}")
    if set(doc) != _KEYS:
        raise _bad(f"fields must be exactly {', '.join(sorted(_KEYS))}")
    if doc["reason"] not in REASONS:
        raise _bad(f"reason must be one of {', '.join(REASONS)}")
    agreement = doc["agreement"]
    if not (
        isinstance(agreement, str) and agreement.startswith("sha256:") and len(agreement) == 71
    ):
        raise _bad("agreement is not a sha256 digest")
    try:
        by = check_node_id(doc["by"], field="termination by")
        peer = check_node_id(doc["peer"], field="termination peer")
        parse_time(doc["effective_at"], field="termination effective_at")
        parse_time(doc["issued_at"], field="termination issued_at")
    except (InputError, TypeError) as e:
        raise _bad(e.message if isinstance(e, InputError) else "a field has the wrong type") from e
    if by == peer:
        raise _bad("a party cannot end an agreement with itself")
    return Termination(
        agreement=agreement,
        by=by,
        peer=peer,
        effective_at=str(doc["effective_at"]),
        reason=str(doc["reason"]),
        issued_at=str(doc["issued_at"]),
    )


def verify_termination(signed: SignedTermination, issuer_key: bytes) -> Termination:
    """The statement, checked against the identity key of the party it names as ``by``."""
    termination = parse_termination_unverified(signed.statement)
    verify_ed25519(
        issuer_key,
        signed_message(Purpose.TERMINATION, signed.statement),
        signed.signature,
        what="agreement termination",
    )
    return termination
