"""A node's private keys, generated, sealed, loaded and rotated here and nowhere else.

Other packages receive ``Signer`` and ``EncryptionKeyPair`` objects, the storage cipher,
and public material (cards, certificates); never a seed.
"""

from __future__ import annotations

import hmac
import secrets
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from exchange.canonical import b64, b64_decode, b64url, sha256
from exchange.card import SUITE_HYBRID, SUITE_X25519, Card, EncryptionKey
from exchange.card import witness_name as card_witness_name
from exchange.errors import InputError, KeyringError, StoreError
from exchange.note import SIG_COSIGNATURE_V1, verifier_key
from exchange.times import format_time, parse_time
from keys.keyfile import open_keyfile, seal_keyfile, write_private_file
from keys.rowauth import LEAF_PURPOSE, LeafAuthenticator, RowAuthenticator
from keys.signers import Ed25519Signer, EncryptionKeyPair
from keys.tls import (
    CERT_RENEW_BEFORE,
    TlsMaterial,
    certificate_not_after,
    cross_certify,
    feed_server_context,
    generate_tls,
    issue_client_certificate,
    pem_fingerprint,
    renew_node_certificate,
)

SECRETS_VERSION = 1
EPOCH = timedelta(days=30)
RETENTION = timedelta(days=7)
# A serving node starts the next epoch of a suite when its newest key of that suite has
# less than RENEW_BEFORE left: half an epoch, more than the 14-day expiry warning of
# 'accord status', so a healthy node never warns about its own keys (ADR 0017).
RENEW_BEFORE = EPOCH / 2


def witness_name(node: str) -> str:
    return card_witness_name(node)


@dataclass(frozen=True)
class _EncSecret:
    kid: str
    suite: str
    secret: bytes
    not_after: str


class StorageCipher:
    """ChaCha20-Poly1305 under the node's storage key, for report plaintext at rest.

    ``aad`` binds a ciphertext to its row (e.g. the report id), so rows cannot be swapped.
    """

    __slots__ = ("_aead",)
    NONCE_LEN = 12

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(self.NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[: self.NONCE_LEN], blob[self.NONCE_LEN :], aad)
        except (InvalidTag, ValueError) as e:
            raise StoreError(
                "stored ciphertext does not decrypt: the row was edited or moved",
                code="store.tampered",
                next_step="Run 'accord audit verify' and restore the database from a backup.",
            ) from e


class BatchDecrypter:
    """The HPKE private keys of the epochs that one batch of envelopes names, and no other
    key: what a worker process is given to open that batch (docs/adr/0027). It pickles to
    those epochs' secrets only; the key pairs are derived, on first use, in the process
    that decrypts. Call it with a kid: ``exchange.envelope.open_envelope``'s
    ``decrypter_for``, answering as ``Keyring.decrypter`` answers for those kids."""

    __slots__ = ("_pairs", "_secrets")

    def __init__(self, secrets: tuple[_EncSecret, ...]) -> None:
        self._secrets = secrets
        self._pairs: dict[str, EncryptionKeyPair | None] = {}

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(e.kid for e in self._secrets)

    def __call__(self, kid: str) -> EncryptionKeyPair | None:
        if kid not in self._pairs:
            found = next((e for e in self._secrets if e.kid == kid), None)
            self._pairs[kid] = (
                None
                if found is None
                else EncryptionKeyPair(found.kid, found.suite, found.secret, found.not_after)
            )
        return self._pairs[kid]

    def __reduce__(self) -> tuple[type[BatchDecrypter], tuple[tuple[_EncSecret, ...]]]:
        return (BatchDecrypter, (self._secrets,))

    def __eq__(self, other: object) -> bool:
        """The same epochs with the same secrets (compared in constant time)."""
        if not isinstance(other, BatchDecrypter) or len(other._secrets) != len(self._secrets):
            return False
        return all(
            (a.kid, a.suite, a.not_after) == (b.kid, b.suite, b.not_after)
            and hmac.compare_digest(a.secret, b.secret)
            for a, b in zip(self._secrets, other._secrets, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BatchDecrypter(kids={list(self.kids)!r})"


@dataclass(frozen=True)
class Keyring:
    node: str
    log_origin: str
    identity_seed: bytes
    log_seed: bytes
    witness_seed: bytes
    storage_key: bytes
    encryption: tuple[_EncSecret, ...]
    tls: TlsMaterial

    def __repr__(self) -> str:
        return f"Keyring(node={self.node!r})"

    # -- what the rest of the node gets -------------------------------------------------
    # Built once per keyring (a rotation makes a new Keyring): an ML-KEM key pair is
    # derived from its seed, an Ed25519 key expanded, on every construction.
    @cached_property
    def _identity_signer(self) -> Ed25519Signer:
        return Ed25519Signer(self.identity_seed)

    @cached_property
    def _encryption_keys(self) -> tuple[EncryptionKeyPair, ...]:
        return tuple(
            EncryptionKeyPair(e.kid, e.suite, e.secret, e.not_after) for e in self.encryption
        )

    def identity_signer(self) -> Ed25519Signer:
        return self._identity_signer

    def log_signer(self) -> Ed25519Signer:
        return Ed25519Signer(self.log_seed)

    def witness_signer(self) -> Ed25519Signer:
        return Ed25519Signer(self.witness_seed)

    def storage_cipher(self) -> StorageCipher:
        return StorageCipher(self.storage_key)

    def row_authenticator(self, purpose: str) -> RowAuthenticator:
        """HMAC-SHA256 tags for rows this node writes, under a key derived (HKDF) from the
        storage key for ``purpose`` only (ADR 0012). The key never leaves the object."""
        return RowAuthenticator(self.storage_key, purpose)

    @cached_property
    def _leaf_authenticator(self) -> LeafAuthenticator:
        return LeafAuthenticator(self.row_authenticator(LEAF_PURPOSE))

    def leaf_authenticator(self) -> LeafAuthenticator:
        """Tags proving a log leaf was written by this node (purpose ``log.leaf``)."""
        return self._leaf_authenticator

    def pseudonym_key(self, peer: str) -> bytes:
        """The keyed-HMAC pseudonym key for one partner, derived from the storage key:
        stable across restarts, different per partner, useless without this node."""
        return hmac.new(
            self.storage_key, b"accord/v1/pseudonym\n" + peer.encode(), "sha256"
        ).digest()

    def encryption_keys(self) -> list[EncryptionKeyPair]:
        return list(self._encryption_keys)

    def decrypter(self, kid: str) -> EncryptionKeyPair | None:
        for key in self.encryption_keys():
            if key.kid == kid:
                return key
        return None

    def batch_decrypter(self, kids: Iterable[str]) -> BatchDecrypter:
        """A decrypter holding only the epoch keys among ``kids`` that this keyring has
        (for a worker process that opens one batch: docs/adr/0027)."""
        wanted = set(kids)
        return BatchDecrypter(tuple(e for e in self.encryption if e.kid in wanted))

    def issue_feed_credentials(self, name: str, out: Path, now: datetime) -> str:
        """Issue a TAXII feed consumer's client certificate from the node CA and write
        ``out/client.pem``, ``out/client.key`` (0600) and ``out/ca.pem``; none may exist yet.
        The CA key and the consumer's key stay in keys/; returns the certificate's
        fingerprint (``sha256:<hex>`` of its DER), by which the feed recognises it."""
        cert_pem, key_pem = issue_client_certificate(
            self.tls.ca_cert_pem, self.tls.ca_key_pem, name, now
        )
        for file in ("client.pem", "client.key", "ca.pem"):
            if (out / file).exists():
                raise InputError(f"{out / file} exists", next_step="Choose another --out.")
        write_private_file(out / "client.key", key_pem, replace=False)
        write_private_file(out / "client.pem", cert_pem, replace=False)
        write_private_file(out / "ca.pem", self.tls.ca_cert_pem, replace=False)
        return pem_fingerprint(cert_pem)

    def feed_tls_context(self) -> ssl.SSLContext:
        """The TAXII feed's server TLS context (keys/tls.py ``feed_server_context``)."""
        return feed_server_context(self.tls.chain_pem, self.tls.key_pem, self.tls.ca_cert_pem)

    def tls_server_material(self) -> tuple[bytes, bytes]:
        """(certificate chain PEM, private key PEM) for the gRPC transport only."""
        return self.tls.chain_pem, self.tls.key_pem

    # -- public material ------------------------------------------------------------------
    def card(self, *, name: str, endpoint: str, version: int, issued_at: datetime) -> Card:
        return Card(
            node=self.node,
            name=name,
            endpoint=endpoint,
            identity_key=self.identity_signer().public_key,
            log_vkey=verifier_key(self.log_origin, self.log_signer().public_key).encode(),
            witness_vkey=verifier_key(
                witness_name(self.node), self.witness_signer().public_key, SIG_COSIGNATURE_V1
            ).encode(),
            encryption_keys=tuple(
                EncryptionKey(kid=k.kid, suite=k.suite, public=k.public, not_after=k.not_after)
                for k in self.encryption_keys()
            ),
            tls_ca_pem=self.tls.ca_cert_pem.decode("ascii"),
            version=version,
            issued_at=format_time(issued_at),
        )

    # -- rotation -------------------------------------------------------------------------
    def with_new_identity(self) -> Keyring:
        return replace(self, identity_seed=secrets.token_bytes(32))

    def with_new_log_key(self) -> Keyring:
        """A new log key: checkpoints from the next one on are signed by it (ADR 0017)."""
        return replace(self, log_seed=secrets.token_bytes(32))

    def with_new_witness_key(self) -> Keyring:
        return replace(self, witness_seed=secrets.token_bytes(32))

    def with_new_tls(self, endpoint_host: str, now: datetime) -> Keyring:
        """A new TLS CA and node certificate; the old CA key certifies the new CA once
        (the cross certificate) and is then destroyed with the rest of the old material."""
        generation = _ca_generation(self.tls) + 1
        new = generate_tls(self.node, endpoint_host, now, generation=generation)
        return replace(self, tls=replace(new, cross_pem=cross_certify(self.tls, new, now)))

    def with_new_encryption_epoch(self, now: datetime, suite: str) -> Keyring:
        """Add a key for the next epoch; destroy keys retired longer than the retention."""
        kept = tuple(
            e
            for e in self.encryption
            if parse_time(e.not_after, field="encryption key not_after") + RETENTION > now
        )
        return replace(self, encryption=(*kept, _new_encryption_secret(suite, now)))

    def encryption_suites_due(self, now: datetime) -> tuple[str, ...]:
        """The suites whose newest key has less than ``RENEW_BEFORE`` left at ``now``
        (or has expired): each needs a new epoch. Sorted, so the order is stable."""
        newest: dict[str, datetime] = {}
        for e in self.encryption:
            at = parse_time(e.not_after, field="encryption key not_after")
            newest[e.suite] = max(at, newest.get(e.suite, at))
        return tuple(sorted(s for s, at in newest.items() if at - RENEW_BEFORE <= now))

    def with_renewed_epochs(self, now: datetime) -> Keyring | None:
        """A new epoch for every suite that is due (``encryption_suites_due``), retired
        keys past retention destroyed; None when no suite is due."""
        suites = self.encryption_suites_due(now)
        if not suites:
            return None
        renewed = self
        for suite in suites:
            renewed = renewed.with_new_encryption_epoch(now, suite)
        return renewed

    def certificate_not_after(self) -> datetime:
        """When the node certificate (mutual TLS) ends."""
        return certificate_not_after(self.tls)

    def with_renewed_certificate(self, endpoint_host: str, now: datetime) -> Keyring | None:
        """A new node certificate from the same CA when the current one has less than
        ``CERT_RENEW_BEFORE`` left; None otherwise."""
        if self.certificate_not_after() - CERT_RENEW_BEFORE > now:
            return None
        return replace(self, tls=renew_node_certificate(self.tls, self.node, endpoint_host, now))

    # -- serialisation (only to the key file) ----------------------------------------------
    def _to_secrets(self) -> dict[str, Any]:
        return {
            "version": SECRETS_VERSION,
            "node": self.node,
            "log_origin": self.log_origin,
            "identity": b64(self.identity_seed),
            "log": b64(self.log_seed),
            "witness": b64(self.witness_seed),
            "storage": b64(self.storage_key),
            "encryption": [
                {"kid": e.kid, "suite": e.suite, "secret": b64(e.secret), "not_after": e.not_after}
                for e in self.encryption
            ],
            "tls": {
                "ca_cert": self.tls.ca_cert_pem.decode("ascii"),
                "ca_key": self.tls.ca_key_pem.decode("ascii"),
                "cert": self.tls.cert_pem.decode("ascii"),
                "key": self.tls.key_pem.decode("ascii"),
                **({"cross": self.tls.cross_pem.decode("ascii")} if self.tls.cross_pem else {}),
            },
        }

    @classmethod
    def _from_secrets(cls, doc: dict[str, Any]) -> Keyring:
        try:
            if doc["version"] != SECRETS_VERSION:
                raise KeyringError(f"key file format version {doc['version']} is not supported")
            tls = doc["tls"]
            return cls(
                node=doc["node"],
                log_origin=doc["log_origin"],
                identity_seed=b64_decode(doc["identity"], what="identity key"),
                log_seed=b64_decode(doc["log"], what="log key"),
                witness_seed=b64_decode(doc["witness"], what="witness key"),
                storage_key=b64_decode(doc["storage"], what="storage key"),
                encryption=tuple(
                    _EncSecret(
                        kid=e["kid"],
                        suite=e["suite"],
                        secret=b64_decode(e["secret"], what="encryption key"),
                        not_after=e["not_after"],
                    )
                    for e in doc["encryption"]
                ),
                tls=TlsMaterial(
                    ca_cert_pem=tls["ca_cert"].encode("ascii"),
                    ca_key_pem=tls["ca_key"].encode("ascii"),
                    cert_pem=tls["cert"].encode("ascii"),
                    key_pem=tls["key"].encode("ascii"),
                    cross_pem=tls.get("cross", "").encode("ascii"),
                ),
            )
        except (KeyError, TypeError, AttributeError, InputError) as e:
            raise KeyringError(f"key file content is incomplete ({type(e).__name__})") from e


def _ca_generation(tls: TlsMaterial) -> int:
    """n of a CA named ``<node> Accord CA n`` (0 for the first CA)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ca = x509.load_pem_x509_certificate(tls.ca_cert_pem)
    names = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    last = str(names[0].value).rsplit(" ", 1)[-1] if names else ""
    return int(last) if last.isdigit() else 0


def _new_encryption_secret(suite: str, now: datetime) -> _EncSecret:
    if suite == SUITE_HYBRID:
        secret = secrets.token_bytes(64 + 32)
    elif suite == SUITE_X25519:
        secret = secrets.token_bytes(32)
    else:
        raise InputError(f"unknown HPKE suite {suite!r}; use {SUITE_HYBRID} or {SUITE_X25519}")
    public = EncryptionKeyPair("-", suite, secret, "-").public
    kid = "ek-" + b64url(sha256(suite.encode("ascii") + b"\n" + public))[:16]
    return _EncSecret(kid=kid, suite=suite, secret=secret, not_after=format_time(now + EPOCH))


def generate_keyring(
    node: str, log_origin: str, endpoint_host: str, now: datetime, suite: str = SUITE_HYBRID
) -> Keyring:
    return Keyring(
        node=node,
        log_origin=log_origin,
        identity_seed=secrets.token_bytes(32),
        log_seed=secrets.token_bytes(32),
        witness_seed=secrets.token_bytes(32),
        storage_key=secrets.token_bytes(32),
        encryption=(_new_encryption_secret(suite, now),),
        tls=generate_tls(node, endpoint_host, now),
    )


def save_keyring(path: Path, keyring: Keyring, passphrase: str | None, *, replace: bool) -> None:
    write_private_file(
        path, seal_keyfile(keyring.node, keyring._to_secrets(), passphrase), replace=replace
    )


def load_keyring(
    path: Path, passphrase: Callable[[], str], *, on_unencrypted: Callable[[], None]
) -> Keyring:
    return Keyring._from_secrets(open_keyfile(path, passphrase, unencrypted_ok=on_unencrypted))
