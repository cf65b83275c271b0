"""Revocation statements for a node's other keys (ADR 0018, docs/DESIGN.md §3.5): its
signed word that a replaced **log**, **witness** or **TLS CA** key is invalid from a time on.

A statement is canonical JSON (RFC 8785)::

    {"type": "accord.key_revocation/v1", "node": "pk-moi", "kind": "log",
     "key": "pk-moi.accord/log+0a1b2c3d+AR...", "revoked_from": "2026-06-01T12:00:00Z",
     "reason": "compromised", "issued_at": "2026-06-02T08:00:00Z"}

``key`` names the revoked key exactly as the card did: for ``log`` and ``witness`` the
verifier key string of the card (``log_vkey`` / ``witness_vkey``); for ``tls`` the CA
certificate's ``sha256:<hex of its DER>``. It is signed as
``"accord/v1/key-revocation\\n" + statement`` (its own purpose label: an identity-key
revocation signature can never be replayed as one of these, nor the reverse) by an
identity key of the node's card chain from the first card version that carried the
revoked key on (the issuer signs with its current identity key).

Meaning (applied in ``node/`` and ``exchange/audit.py``):

- ``log``: a checkpoint signed by the key and dated at or after ``revoked_from`` is
  refused by the partner's witness and reported by ``audit verify``;
- ``witness``: a cosignature by the key with a timestamp at or after ``revoked_from`` is
  ignored by the cosigner and reported by ``audit verify``;
- ``tls``: a partner no longer accepts that CA (nor a cross certificate it issued).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from exchange.canonical import canonical_json, parse_canonical_json_unverified
from exchange.card import Card, VerifiedChain
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import check_node_id
from exchange.purpose import Purpose, signed_message
from exchange.revocation import REASONS, SignedRevocation
from exchange.times import parse_time

KEY_REVOCATION_TYPE: Final = "accord.key_revocation/v1"
MAX_KEY_REVOCATION_BYTES: Final = 4 * 1024
MAX_KEY_REVOCATIONS: Final = 256
KINDS: Final = ("log", "witness", "tls")
_KEYS: Final = frozenset({"type", "node", "kind", "key", "revoked_from", "reason", "issued_at"})


def tls_ca_id(pem: str) -> str:
    """How a statement names a TLS CA: ``sha256:`` and the hex SHA-256 of its DER."""
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    return "sha256:" + hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def card_key(card: Card, kind: str) -> str:
    """The key of ``kind`` that ``card`` carries, named as a statement names it."""
    if kind == "log":
        return card.log_vkey
    if kind == "witness":
        return card.witness_vkey
    if kind == "tls":
        return tls_ca_id(card.tls_ca_pem)
    raise InputError(f"key kind must be one of {', '.join(KINDS)}")


def matches(key: str, wanted: str) -> bool:
    """Whether an operator's ``wanted`` names ``key``: the whole string, or (log, witness)
    its ``<name>+<hex key id>`` label or hex key id, or (tls) the hex digest alone."""
    wanted = wanted.strip()
    if not wanted:
        return False
    if key == wanted:
        return True
    parts = key.split("+", 2)
    if len(parts) == 3:
        return wanted.lower() in (parts[1].lower(), f"{parts[0]}+{parts[1]}".lower())
    return key.startswith("sha256:") and key[len("sha256:") :] == wanted.lower()


@dataclass(frozen=True)
class KeyRevocationStatement:
    node: str
    kind: str
    key: str
    revoked_from: str
    reason: str
    issued_at: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": KEY_REVOCATION_TYPE,
                "node": self.node,
                "kind": self.kind,
                "key": self.key,
                "revoked_from": self.revoked_from,
                "reason": self.reason,
                "issued_at": self.issued_at,
            }
        )

    def revoked_at(self) -> datetime:
        return parse_time(self.revoked_from, field="revoked_from")


def _bad(message: str) -> PeerDataError:
    return PeerDataError(f"key revocation: {message}", code="peer.key_revocation_invalid")


def parse_key_revocation_unverified(data: bytes) -> KeyRevocationStatement:
    """Parse statement bytes strictly; the result is unverified."""
    try:
        doc = parse_canonical_json_unverified(
            data, what="key revocation", max_bytes=MAX_KEY_REVOCATION_BYTES
        )
    except InputError as e:
        raise _bad(e.message) from e
    if not isinstance(doc, dict) or doc.get("type") != KEY_REVOCATION_TYPE:
        raise _bad(f"type is not {KEY_REVOCATION_TYPE}")
    if set(doc) != _KEYS:
        raise _bad(f"fields must be exactly {', '.join(sorted(_KEYS))}")
    if doc["kind"] not in KINDS:
        raise _bad(f"kind must be one of {', '.join(KINDS)}")
    if doc["reason"] not in REASONS:
        raise _bad(f"reason must be one of {', '.join(REASONS)}")
    if not isinstance(doc["key"], str) or not 0 < len(doc["key"]) <= 512:
        raise _bad("key must be a non-empty string")
    try:
        node = check_node_id(doc["node"], field="key revocation node")
        parse_time(doc["revoked_from"], field="key revocation revoked_from")
        parse_time(doc["issued_at"], field="key revocation issued_at")
    except (InputError, TypeError) as e:
        raise _bad(e.message if isinstance(e, InputError) else "a field has the wrong type") from e
    return KeyRevocationStatement(
        node=node,
        kind=str(doc["kind"]),
        key=str(doc["key"]),
        revoked_from=str(doc["revoked_from"]),
        reason=str(doc["reason"]),
        issued_at=str(doc["issued_at"]),
    )


def verify_key_revocation(signed: SignedRevocation, chain: VerifiedChain) -> KeyRevocationStatement:
    """Verify a statement against the node's trusted card ``chain``: it names that node
    and a key of that kind one of its cards carried, and is signed by the identity key of
    the first card that carried it or of a later card."""
    statement = parse_key_revocation_unverified(signed.statement)
    if statement.node != chain.latest.node:
        raise _bad("names another node than the card chain")
    first = next(
        (i for i, c in enumerate(chain.cards) if card_key(c, statement.kind) == statement.key),
        None,
    )
    if first is None:
        raise _bad(f"names a {statement.kind} key that is not in the node's card chain")
    message = signed_message(Purpose.KEY_REVOCATION, signed.statement)
    for key in _distinct(c.identity_key for c in chain.cards[first:]):
        try:
            verify_ed25519(key, message, signed.signature, what="key revocation signature")
        except PeerDataError:
            continue
        return statement
    raise _bad("not signed by an identity key of the card chain from the revoked key on")


def sign_key_revocation(
    statement: KeyRevocationStatement, signer: Signer, chain: VerifiedChain
) -> SignedRevocation:
    """Sign a revocation of one of our own **replaced** keys with our current identity
    key. Revoking the key in force would stop the node: refused (rotate first)."""
    if statement.kind not in KINDS:
        raise InputError(f"key kind must be one of {', '.join(KINDS)}")
    if statement.reason not in REASONS:
        raise InputError(f"revocation reason must be one of {', '.join(REASONS)}")
    if signer.public_key != chain.latest.identity_key:
        raise InputError("a revocation is signed by the node's current identity key")
    if card_key(chain.latest, statement.kind) == statement.key:
        raise InputError(
            f"that is this node's current {statement.kind} key: revoking it would stop the node",
            code="input.current_key",
            next_step=f"Rotate first ('accord keys rotate --{statement.kind}'), then revoke "
            "the replaced key.",
        )
    parse_time(statement.revoked_from, field="revoked_from")
    parse_time(statement.issued_at, field="issued_at")
    data = statement.to_bytes()
    signed = SignedRevocation(data, signer.sign(signed_message(Purpose.KEY_REVOCATION, data)))
    verify_key_revocation(signed, chain)  # one rule for what verifies, on both sides
    return signed


def verify_all(
    statements: Sequence[SignedRevocation], chain: VerifiedChain
) -> list[KeyRevocationStatement]:
    """Verify every statement of one answer or raise: all verify or none is used."""
    if len(statements) > MAX_KEY_REVOCATIONS:
        raise _bad(f"more than {MAX_KEY_REVOCATIONS} statements")
    return [verify_key_revocation(s, chain) for s in statements]


def revoked_keys(statements: Iterable[KeyRevocationStatement], kind: str) -> dict[str, datetime]:
    """key -> the earliest time from which it is revoked, for one kind."""
    out: dict[str, datetime] = {}
    for s in statements:
        if s.kind == kind:
            at = s.revoked_at()
            out[s.key] = min(at, out.get(s.key, at))
    return out


def _distinct(keys: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for key in keys:
        if key not in out:
            out.append(key)
    return out
