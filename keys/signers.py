"""Signer and decrypter objects: the only way the rest of Accord uses private keys."""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from nacl.signing import SigningKey

from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.errors import KeyringError, PeerDataError


class Ed25519Signer:
    """Implements ``exchange.crypto.Signer``; the seed never leaves this object."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyringError("an Ed25519 seed is 32 bytes")
        self._key = SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def __repr__(self) -> str:
        return f"Ed25519Signer(public={self._public.hex()[:16]}…)"


def suite_of(name: str) -> hpke.Suite:
    if name == SUITE_HYBRID:
        return hpke.Suite(
            hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
        )
    if name == SUITE_X25519:
        return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    raise PeerDataError(f"unknown HPKE suite {name[:80]!r}", code="peer.suite")


def hpke_public_key(
    suite: str, public: bytes
) -> hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey:
    """Parse a card's encryption public key (hybrid = ML-KEM-768 ek || X25519)."""
    try:
        if suite == SUITE_HYBRID:
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(public[:1184]),
                x25519.X25519PublicKey.from_public_bytes(public[1184:]),
            )
        if suite == SUITE_X25519:
            return x25519.X25519PublicKey.from_public_bytes(public)
    except ValueError as e:
        raise PeerDataError("encryption public key is malformed", code="peer.bad_key") from e
    raise PeerDataError("unknown HPKE suite", code="peer.suite")


class EncryptionKeyPair:
    """One epoch's HPKE key pair. ``decrypt`` is the only use of the private half."""

    __slots__ = ("_private", "kid", "not_after", "public", "suite")

    def __init__(self, kid: str, suite: str, secret: bytes, not_after: str) -> None:
        self.kid = kid
        self.suite = suite
        self.not_after = not_after
        if suite == SUITE_HYBRID:
            if len(secret) != 64 + 32:
                raise KeyringError("a hybrid HPKE secret is 96 bytes")
            mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:64])
            xk = x25519.X25519PrivateKey.from_private_bytes(secret[64:])
            self._private: hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey = (
                hpke.MLKEM768X25519PrivateKey(mk, xk)
            )
            self.public = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        elif suite == SUITE_X25519:
            xk = x25519.X25519PrivateKey.from_private_bytes(secret)
            self._private = xk
            self.public = xk.public_key().public_bytes_raw()
        else:
            raise KeyringError(f"unknown HPKE suite {suite!r}")

    def decrypt(self, ciphertext: bytes, info: bytes) -> bytes:
        try:
            return suite_of(self.suite).decrypt(ciphertext, self._private, info=info)
        except Exception as e:  # cryptography raises several types for bad ciphertexts
            raise PeerDataError("envelope does not decrypt", code="peer.decrypt") from e

    def __repr__(self) -> str:
        return f"EncryptionKeyPair(kid={self.kid!r}, suite={self.suite!r})"


class HpkeEncryptor:
    """``exchange.envelope.Encryptor``: HPKE single-shot to a partner's public key (the
    ephemeral key comes from cryptography's CSPRNG, inside this call)."""

    def encrypt(self, suite: str, recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
        return suite_of(suite).encrypt(
            plaintext, _parsed_public_key(suite, recipient_public), info=info
        )


# Partners' public keys recur on every envelope; parsing an ML-KEM key is not free.
_parsed_public_key = lru_cache(maxsize=64)(hpke_public_key)
