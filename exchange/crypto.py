"""The only cryptographic interfaces the pure core sees.

Private keys live in ``keys/``; the core receives a ``Signer`` (or an HPKE decrypter)
and public key bytes. Verification helpers raise ``PeerDataError`` naming what failed.
"""

from __future__ import annotations

from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from exchange.errors import PeerDataError

ED25519_PUBLIC_KEY_LEN = 32
ED25519_SIGNATURE_LEN = 64


class Signer(Protocol):
    """Signs exact bytes with an Ed25519 key it never reveals."""

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``message``."""
        ...


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes, *, what: str) -> bytes:
    """Verify an Ed25519 signature; return ``message`` when it is valid.

    Raises ``PeerDataError`` naming ``what`` on a wrong-length key or signature, or a
    signature that does not verify.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_LEN:
        raise PeerDataError(f"{what}: public key is {len(public_key)} bytes, not 32")
    if len(signature) != ED25519_SIGNATURE_LEN:
        raise PeerDataError(f"{what}: signature is {len(signature)} bytes, not 64")
    try:
        return VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError) as e:
        raise PeerDataError(f"{what}: signature does not verify", code="peer.bad_signature") from e
