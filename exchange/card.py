"""Node cards: who a partner node is, which keys it holds, signed as a version chain.

A card is canonical JSON (RFC 8785). A *signed card* carries the exact card bytes and
two signatures over ``"accord/v1/card\\n" + card bytes``:

- ``signature`` by the card's own identity key (possession of the new key), and
- ``previous_signature`` by the identity key of the previous version (absent only for
  version 1), so a rotation must be approved by the key it replaces.

A *card chain* is every signed card from version 1 to the latest; a partner verifies the
whole chain, and pins the latest identity key by its fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.canonical import (
    b64,
    b64_decode,
    canonical_json,
    parse_json_unverified,
)
from exchange.checkpoint import log_origin
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import check_display_name, check_endpoint, check_node_id
from exchange.note import SIG_COSIGNATURE_V1, SIG_ED25519, parse_verifier_key
from exchange.purpose import Purpose, signed_message
from exchange.times import parse_time

CARD_TYPE = "accord.node-card/v1"
CHAIN_TYPE = "accord.card-chain/v1"
MAX_CARD_BYTES = 64 * 1024
MAX_CHAIN_BYTES = 4 * 1024 * 1024
MAX_CHAIN_LENGTH = 256
MAX_ENCRYPTION_KEYS = 8

SUITE_HYBRID = "MLKEM768_X25519/HKDF_SHA256/CHACHA20_POLY1305"
SUITE_X25519 = "X25519/HKDF_SHA256/CHACHA20_POLY1305"
SUITE_PUBLIC_KEY_LEN = {SUITE_HYBRID: 1184 + 32, SUITE_X25519: 32}

_CARD_KEYS = frozenset(
    {
        "type",
        "node",
        "name",
        "endpoint",
        "identity_key",
        "log_vkey",
        "witness_vkey",
        "encryption_keys",
        "tls_ca",
        "version",
        "issued_at",
    }
)


def witness_name(node: str) -> str:
    """The one witness key name a node may use: ``<node>.accord/witness``."""
    return f"{node}.accord/witness"


def fingerprint(identity_key: bytes) -> str:
    """Base32 of SHA-256 of the identity key: 24 characters in groups of 4 (``ABCD-EFGH-…``)."""
    text = base64.b32encode(hashlib.sha256(identity_key).digest()).decode("ascii")[:24]
    return "-".join(text[i : i + 4] for i in range(0, 24, 4))


def normalise_fingerprint(text: str) -> str:
    raw = "".join(ch for ch in text.upper() if ch not in " -")
    if len(raw) != 24 or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for ch in raw):
        raise InputError(
            "fingerprint must be 24 base32 characters (groups of 4 may be separated by '-')",
            next_step="Copy the fingerprint exactly as the partner read it out.",
        )
    return "-".join(raw[i : i + 4] for i in range(0, 24, 4))


def fingerprints_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(normalise_fingerprint(a).encode(), normalise_fingerprint(b).encode())


@dataclass(frozen=True)
class EncryptionKey:
    kid: str
    suite: str
    public: bytes
    not_after: str

    def to_json(self) -> dict[str, str]:
        return {
            "kid": self.kid,
            "suite": self.suite,
            "public": b64(self.public),
            "not_after": self.not_after,
        }


@dataclass(frozen=True)
class Card:
    """A node card's content. Build with ``Card(...)``; get one from bytes only by verifying."""

    node: str
    name: str
    endpoint: str
    identity_key: bytes
    log_vkey: str
    witness_vkey: str
    encryption_keys: tuple[EncryptionKey, ...]
    tls_ca_pem: str
    version: int
    issued_at: str

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "type": CARD_TYPE,
                "node": self.node,
                "name": self.name,
                "endpoint": self.endpoint,
                "identity_key": b64(self.identity_key),
                "log_vkey": self.log_vkey,
                "witness_vkey": self.witness_vkey,
                "encryption_keys": [k.to_json() for k in self.encryption_keys],
                "tls_ca": self.tls_ca_pem,
                "version": self.version,
                "issued_at": self.issued_at,
            }
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity_key)


@dataclass(frozen=True)
class SignedCard:
    """Exact card bytes with their signatures (not yet verified)."""

    card_bytes: bytes
    signature: bytes
    previous_signature: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "card": b64(self.card_bytes),
            "signature": b64(self.signature),
            "previous_signature": None
            if self.previous_signature is None
            else b64(self.previous_signature),
        }


@dataclass(frozen=True)
class VerifiedChain:
    """A card chain whose every link verified. ``latest`` is the card in force."""

    cards: tuple[Card, ...]
    signed: tuple[SignedCard, ...]

    @property
    def latest(self) -> Card:
        return self.cards[-1]

    def to_bytes(self) -> bytes:
        return chain_bytes(self.signed)


def sign_card(card: Card, signer: Signer, previous_signer: Signer | None) -> SignedCard:
    """Sign ``card`` with its own identity key and, from version 2 on, the previous key."""
    if signer.public_key != card.identity_key:
        raise InputError("the signer is not the card's identity key")
    if (card.version == 1) != (previous_signer is None):
        raise InputError("version 1 has no previous signature; every later version needs one")
    data = card.to_bytes()
    message = signed_message(Purpose.CARD, data)
    previous = None if previous_signer is None else previous_signer.sign(message)
    return SignedCard(card_bytes=data, signature=signer.sign(message), previous_signature=previous)


def chain_bytes(signed: Sequence[SignedCard]) -> bytes:
    return canonical_json({"type": CHAIN_TYPE, "cards": [s.to_json() for s in signed]})


def _parse_card_unverified(data: bytes) -> Card:
    doc = parse_json_unverified(data, what="card", max_bytes=MAX_CARD_BYTES)
    if not isinstance(doc, dict) or doc.get("type") != CARD_TYPE:
        raise PeerDataError(f"card: type is not {CARD_TYPE}", code="peer.card_invalid")
    if set(doc) != _CARD_KEYS:
        missing = sorted(_CARD_KEYS - set(doc))
        extra = sorted(set(doc) - _CARD_KEYS)
        raise PeerDataError(
            f"card: fields missing {missing} or unknown {extra[:5]}", code="peer.card_invalid"
        )
    if canonical_json(doc) != data:
        raise PeerDataError(
            "card: bytes are not canonical JSON (RFC 8785)", code="peer.card_invalid"
        )
    try:
        keys_raw = doc["encryption_keys"]
        if not isinstance(keys_raw, list) or not 1 <= len(keys_raw) <= MAX_ENCRYPTION_KEYS:
            raise InputError(f"card: encryption_keys must list 1 to {MAX_ENCRYPTION_KEYS} keys")
        enc = tuple(_parse_encryption_key(k) for k in keys_raw)
        version = doc["version"]
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 2**31:
            raise InputError("card: version must be an integer from 1")
        identity_key = b64_decode(doc["identity_key"], what="card identity_key")
        if len(identity_key) != 32:
            raise InputError("card: identity_key is not a 32-byte Ed25519 key")
        card = Card(
            node=check_node_id(doc["node"], field="card node"),
            name=check_display_name(doc["name"], field="card name"),
            endpoint=check_endpoint(doc["endpoint"], field="card endpoint"),
            identity_key=identity_key,
            log_vkey=_check_vkey(doc["log_vkey"], "card log_vkey", SIG_ED25519),
            witness_vkey=_check_vkey(doc["witness_vkey"], "card witness_vkey", SIG_COSIGNATURE_V1),
            encryption_keys=enc,
            tls_ca_pem=_check_tls_ca(doc["tls_ca"]),
            version=version,
            issued_at=doc["issued_at"],
        )
        parse_time(card.issued_at, field="card issued_at")
    except InputError as e:
        raise PeerDataError(e.message, code="peer.card_invalid") from e
    _check_own_names(card)
    return card


def _check_own_names(card: Card) -> None:
    """A card's log and witness keys must carry its own node's names (docs/THREATS.md P16):
    witnesses key what they hold by origin, so a card naming another node's log could
    write the state kept for that node."""
    for vkey, expected, what in (
        (card.log_vkey, log_origin(card.node), "log key"),
        (card.witness_vkey, witness_name(card.node), "witness key"),
    ):
        if parse_verifier_key(vkey).name != expected:
            raise PeerDataError(
                f"card of {card.node}: the {what} is not named {expected}",
                code="card.origin_mismatch",
                next_step="Refuse this card: a node may only name its own log and witness. "
                "Ask the partner's operator why their card names another node.",
            )


def _parse_encryption_key(raw: object) -> EncryptionKey:
    if not isinstance(raw, dict) or set(raw) != {"kid", "suite", "public", "not_after"}:
        raise InputError("card: each encryption key needs exactly kid, suite, public, not_after")
    suite = raw["suite"]
    if not isinstance(suite, str) or suite not in SUITE_PUBLIC_KEY_LEN:
        raise InputError("card: encryption key has an unknown suite")
    public = b64_decode(raw["public"], what="card encryption key")
    if len(public) != SUITE_PUBLIC_KEY_LEN[suite]:
        raise InputError(
            f"card: encryption key is {len(public)} bytes, not {SUITE_PUBLIC_KEY_LEN[suite]}"
        )
    kid = raw["kid"]
    if (
        not isinstance(kid, str)
        or not 1 <= len(kid) <= 64
        or not kid.isascii()
        or not kid.isprintable()
    ):
        raise InputError("card: encryption key id must be 1-64 printable ASCII characters")
    parse_time(raw["not_after"], field="card encryption key not_after")
    return EncryptionKey(kid=kid, suite=suite, public=public, not_after=raw["not_after"])


def _check_vkey(value: object, field: str, sig_type: int) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise InputError(f"{field} is not a C2SP verifier key")
    try:
        key = parse_verifier_key(value)
    except PeerDataError as e:
        raise InputError(f"{field}: {e.message}") from e
    if key.sig_type != sig_type:
        raise InputError(f"{field} has signature type {key.sig_type:#04x}, not {sig_type:#04x}")
    return value


def _check_tls_ca(value: object) -> str:
    if not isinstance(value, str) or len(value) > 8192:
        raise InputError("card tls_ca must be a PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(value.encode("ascii"))
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        public_key = cert.public_key()  # an unknown curve or algorithm raises here
    except Exception as e:  # hostile DER raises ValueError, InvalidVersion,
        # UnsupportedAlgorithm, ExtensionNotFound, ...: all mean "not a certificate we use"
        raise InputError("card tls_ca is not a PEM CA certificate we can use") from e
    if not basic.ca or not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InputError("card tls_ca is not an ECDSA CA certificate")
    return value


def parse_signed_card_unverified(raw: object) -> SignedCard:
    if not isinstance(raw, dict) or set(raw) != {"card", "signature", "previous_signature"}:
        raise PeerDataError("card chain: each entry needs card, signature, previous_signature")
    prev = raw["previous_signature"]
    try:
        return SignedCard(
            card_bytes=b64_decode(raw["card"], what="card"),
            signature=b64_decode(raw["signature"], what="card signature"),
            previous_signature=None
            if prev is None
            else b64_decode(prev, what="card previous_signature"),
        )
    except InputError as e:
        raise PeerDataError(e.message, code="peer.card_invalid") from e


def verify_next(previous: Card | None, signed: SignedCard) -> Card:
    """Verify one link: ``signed`` must be version ``previous.version + 1`` (or 1), of the
    same node, signed by its own key and by the previous identity key."""
    card = _parse_card_unverified(signed.card_bytes)
    message = signed_message(Purpose.CARD, signed.card_bytes)
    verify_ed25519(
        card.identity_key, message, signed.signature, what=f"card v{card.version} self-signature"
    )
    if previous is None:
        if card.version != 1:
            raise PeerDataError(
                f"card chain starts at version {card.version}, not 1", code="peer.card_chain"
            )
        if signed.previous_signature is not None:
            raise PeerDataError(
                "card v1 must not carry a previous signature", code="peer.card_chain"
            )
        return card
    if card.node != previous.node:
        raise PeerDataError("card chain changes node id", code="peer.card_chain")
    if card.version != previous.version + 1:
        raise PeerDataError(
            f"card chain skips from version {previous.version} to {card.version}",
            code="peer.card_chain",
        )
    if signed.previous_signature is None:
        raise PeerDataError(
            f"card v{card.version} is not signed by the identity key of v{previous.version}",
            code="peer.card_chain",
        )
    verify_ed25519(
        previous.identity_key,
        message,
        signed.previous_signature,
        what=f"card v{card.version} signature by the v{previous.version} identity key",
    )
    return card


def verify_chain_bytes(data: bytes) -> VerifiedChain:
    """Verify a whole exported card chain, version 1 to the latest."""
    doc = parse_json_unverified(data, what="card chain", max_bytes=MAX_CHAIN_BYTES)
    if not isinstance(doc, dict) or doc.get("type") != CHAIN_TYPE or set(doc) != {"type", "cards"}:
        raise PeerDataError(f"card chain: not an {CHAIN_TYPE} document", code="peer.card_invalid")
    entries = doc["cards"]
    if not isinstance(entries, list) or not entries:
        raise PeerDataError("card chain: no cards", code="peer.card_invalid")
    if len(entries) > MAX_CHAIN_LENGTH:
        raise PeerDataError(
            f"card chain: {len(entries)} versions exceeds the limit of {MAX_CHAIN_LENGTH}",
            code="peer.card_chain",
        )
    signed = [parse_signed_card_unverified(e) for e in entries]
    return extend_chain(None, signed)


def extend_chain(known: VerifiedChain | None, new: Sequence[SignedCard]) -> VerifiedChain:
    """Verify ``new`` as the continuation of ``known`` (or from version 1)."""
    cards = list(known.cards) if known else []
    signed_all = list(known.signed) if known else []
    if len(cards) + len(new) > MAX_CHAIN_LENGTH:
        raise PeerDataError(
            f"card chain longer than {MAX_CHAIN_LENGTH} versions", code="peer.card_chain"
        )
    for s in new:
        cards.append(verify_next(cards[-1] if cards else None, s))
        signed_all.append(s)
    return VerifiedChain(cards=tuple(cards), signed=tuple(signed_all))
