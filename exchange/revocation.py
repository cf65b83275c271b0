"""Revocation statements (docs/DESIGN.md §3): a node's signed word that one of its own identity
keys is invalid from a given time on.

A statement is canonical JSON (RFC 8785)::

    {"type": "accord.revocation/v1", "node": "pk-moi",
     "identity_key": "<base64 of the revoked Ed25519 key>",
     "revoked_from": "2026-06-01T12:00:00Z", "reason": "compromised",
     "issued_at": "2026-06-02T08:00:00Z"}

signed as ``"accord/v1/revocation\\n" + statement`` by the revoked key itself or by a key
that came after it in the node's card chain (the key that made the statement is the newest
one the node holds; a thief of an old key can revoke only that key, never a newer one).

What a partner does with a verified statement (``node/`` applies it; ADR 0010):

- the revoked key is the card chain's latest: the partner is refused from ``revoked_from``
  on, as with a local ``accord peer revoke``;
- an older key: envelopes sealed under it with a signed ``created_at`` at or after
  ``revoked_from`` are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from exchange.canonical import b64, b64_decode, canonical_json, parse_canonical_json_unverified
from exchange.card import Card, VerifiedChain, fingerprint
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import check_node_id
from exchange.purpose import Purpose, signed_message
from exchange.times import parse_time

REVOCATION_TYPE: Final = "accord.revocation/v1"
MAX_REVOCATION_BYTES: Final = 4 * 1024
MAX_REVOCATIONS: Final = 256  # one per card version at most
REASONS: Final = ("compromised", "retired")
_KEYS: Final = frozenset({"type", "node", "identity_key", "revoked_from", "reason", "issued_at"})


@dataclass(frozen=True)
class Revocation:
    node: str
    identity_key: bytes
    revoked_from: str
    reason: str
    issued_at: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": REVOCATION_TYPE,
                "node": self.node,
                "identity_key": b64(self.identity_key),
                "revoked_from": self.revoked_from,
                "reason": self.reason,
                "issued_at": self.issued_at,
            }
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity_key)


@dataclass(frozen=True)
class SignedRevocation:
    """Exact statement bytes and their signature (not yet verified)."""

    statement: bytes
    signature: bytes


def _bad(message: str) -> PeerDataError:
    return PeerDataError(f"revocation: {message}", code="peer.revocation_invalid")


def sign_revocation(
    revocation: Revocation, signer: Signer, chain: VerifiedChain
) -> SignedRevocation:
    """Sign ``revocation`` of a key of ``chain`` (our own) with ``signer``, the chain's
    latest identity key. The result verifies with ``verify_revocation``."""
    if revocation.reason not in REASONS:
        raise InputError(f"revocation reason must be one of {', '.join(REASONS)}")
    if signer.public_key != chain.latest.identity_key:
        raise InputError("a revocation is signed by the node's current identity key")
    parse_time(revocation.revoked_from, field="revoked_from")
    parse_time(revocation.issued_at, field="issued_at")
    data = revocation.to_bytes()
    signed = SignedRevocation(data, signer.sign(signed_message(Purpose.REVOCATION, data)))
    verify_revocation(signed, chain)  # one rule for what verifies, on both sides
    return signed


def parse_revocation_unverified(data: bytes) -> Revocation:
    """Parse statement bytes strictly; the result is unverified."""
    try:
        doc = parse_canonical_json_unverified(
            data, what="revocation", max_bytes=MAX_REVOCATION_BYTES
        )
    except InputError as e:
        raise _bad(e.message) from e
    if not isinstance(doc, dict) or doc.get("type") != REVOCATION_TYPE:
        raise _bad(f"type is not {REVOCATION_TYPE}")
    if set(doc) != _KEYS:
        raise _bad(f"fields must be exactly {', '.join(sorted(_KEYS))}")
    if doc["reason"] not in REASONS:
        raise _bad(f"reason must be one of {', '.join(REASONS)}")
    try:
        key = b64_decode(doc["identity_key"], what="revocation identity_key")
        if len(key) != 32:
            raise InputError("identity_key is not a 32-byte Ed25519 key")
        node = check_node_id(doc["node"], field="revocation node")
        parse_time(doc["revoked_from"], field="revocation revoked_from")
        parse_time(doc["issued_at"], field="revocation issued_at")
    except (InputError, TypeError) as e:
        raise _bad(e.message if isinstance(e, InputError) else "a field has the wrong type") from e
    return Revocation(
        node=node,
        identity_key=key,
        revoked_from=str(doc["revoked_from"]),
        reason=str(doc["reason"]),
        issued_at=str(doc["issued_at"]),
    )


def verify_revocation(signed: SignedRevocation, chain: VerifiedChain) -> Revocation:
    """Verify a statement against the node's trusted card ``chain``: it names that node and
    one of its identity keys, and is signed by that key or a later one of the chain."""
    revocation = parse_revocation_unverified(signed.statement)
    if revocation.node != chain.latest.node:
        raise _bad("names another node than the card chain")
    keys = _identity_keys(chain.cards)
    try:
        position = keys.index(revocation.identity_key)
    except ValueError:
        raise _bad("names a key that is not in the node's card chain") from None
    message = signed_message(Purpose.REVOCATION, signed.statement)
    for key in keys[position:]:
        try:
            verify_ed25519(key, message, signed.signature, what="revocation signature")
        except PeerDataError:
            continue
        return revocation
    raise _bad("not signed by the revoked key or a later key of the card chain")


def _identity_keys(cards: Sequence[Card]) -> list[bytes]:
    """The chain's distinct identity keys, oldest first (an encryption-key rotation keeps
    the identity key, so one key can span several card versions)."""
    keys: list[bytes] = []
    for card in cards:
        if not keys or keys[-1] != card.identity_key:
            keys.append(card.identity_key)
    return keys
