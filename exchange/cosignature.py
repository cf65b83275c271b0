"""Ed25519 witness cosignatures (c2sp.org/tlog-cosignature, ``cosignature/v1``, type 0x04).

A cosignature is a note signature line over the checkpoint text:
``— <witness name> base64(key id[4] || timestamp[8, big endian] || Ed25519 signature[64])``,
where the signed message is ``"cosignature/v1\\ntime <timestamp>\\n" + checkpoint text``.
Time is an input: the witness passes the timestamp it cosigns at.

Policy for a line whose (name, key id) match a known witness but whose signature blob is
not 76 bytes: reject (C2SP signed-note: a failing known-key signature SHOULD reject the
note). sigsum-go instead skips such a line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exchange.checkpoint import parse_checkpoint_unverified
from exchange.crypto import ED25519_SIGNATURE_LEN, Signer, verify_ed25519
from exchange.errors import AccordError, InputError, PeerDataError
from exchange.note import (
    MAX_NOTE_BYTES,
    SIG_COSIGNATURE_V1,
    NoteSignature,
    VerifierKey,
    index_verifier_keys,
    parse_note_unverified,
    parse_signature_line_unverified,
    verifier_key,
)

COSIGNATURE_HEADER = b"cosignature/v1\n"
MAX_TIMESTAMP = 2**63 - 1
_TIMESTAMP_LEN = 8
_BODY_LEN = _TIMESTAMP_LEN + ED25519_SIGNATURE_LEN


@dataclass(frozen=True)
class Cosignature:
    """One cosignature/v1 line: witness name, key id, timestamp and Ed25519 signature."""

    name: str
    key_id: bytes
    timestamp: int
    signature: bytes

    def note_signature(self) -> NoteSignature:
        stamp = self.timestamp.to_bytes(_TIMESTAMP_LEN, "big")
        return NoteSignature(self.name, self.key_id, stamp + self.signature)

    @property
    def line(self) -> str:
        """The signature line to append to the checkpoint note (no final newline)."""
        return self.note_signature().line


@dataclass(frozen=True)
class VerifiedCosignature:
    """A witness's cosignature that verified over ``checkpoint_text`` at ``timestamp``."""

    witness: VerifierKey
    timestamp: int
    checkpoint_text: str
    cosignature: Cosignature


def _check_timestamp(value: object, error: type[AccordError]) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise error("cosignature timestamp must be an integer from 0 to 2**63-1")
    return value


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The exact bytes a cosignature/v1 signs."""
    _check_timestamp(timestamp, InputError)
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + checkpoint_text.encode("utf-8")


def cosign_checkpoint(
    checkpoint_text: str, name: str, signer: Signer, timestamp: int
) -> Cosignature:
    """Cosign the exact checkpoint text as witness ``name`` at ``timestamp`` (POSIX seconds).

    The text must be a well-formed checkpoint (``PeerDataError`` otherwise): a witness
    cosigns only what it has parsed and checked for consistency, never arbitrary text.
    """
    parse_checkpoint_unverified(checkpoint_text)
    key = verifier_key(name, signer.public_key, SIG_COSIGNATURE_V1)
    signature = signer.sign(cosigned_message(checkpoint_text, timestamp))
    return Cosignature(name, key.key_id, timestamp, signature)


def parse_cosignature_unverified(sig: NoteSignature) -> Cosignature:
    """Read the timestamp and signature out of a note signature line; nothing is verified."""
    if len(sig.signature) != _BODY_LEN:
        raise PeerDataError(
            f"cosignature by {sig.name}+{sig.key_id.hex()}: signature is "
            f"{len(sig.key_id) + len(sig.signature)} bytes, not {4 + _BODY_LEN}"
        )
    timestamp = int.from_bytes(sig.signature[:_TIMESTAMP_LEN], "big")
    _check_timestamp(timestamp, PeerDataError)
    return Cosignature(sig.name, sig.key_id, timestamp, sig.signature[_TIMESTAMP_LEN:])


def _verify(checkpoint_text: str, sig: NoteSignature, witness: VerifierKey) -> VerifiedCosignature:
    cosig = parse_cosignature_unverified(sig)
    verify_ed25519(
        witness.public_key,
        cosigned_message(checkpoint_text, cosig.timestamp),
        cosig.signature,
        what=f"cosignature by witness {witness.label}",
    )
    return VerifiedCosignature(witness, cosig.timestamp, checkpoint_text, cosig)


def _check_witness(witness: VerifierKey) -> VerifierKey:
    index_verifier_keys([witness], SIG_COSIGNATURE_V1)
    return witness


def verify_cosignature(
    checkpoint_text: str, line: str, witness: VerifierKey
) -> VerifiedCosignature:
    """Verify one cosignature line (no final newline) from ``witness`` over the checkpoint.

    Raises ``PeerDataError`` when the text is not a checkpoint, the line is not from this
    witness (name and key id), is malformed, or its signature does not verify.
    """
    _check_witness(witness)
    parse_checkpoint_unverified(checkpoint_text)
    sig = parse_signature_line_unverified(line)
    if (sig.name, sig.key_id) != (witness.name, witness.key_id):
        raise PeerDataError(
            f"cosignature line is not from witness {witness.label}", code="peer.unknown_witness"
        )
    return _verify(checkpoint_text, sig, witness)


def verify_cosignatures(
    note: bytes, witnesses: Iterable[VerifierKey], *, max_bytes: int = MAX_NOTE_BYTES
) -> tuple[VerifiedCosignature, ...]:
    """Verify the cosignatures in a cosigned checkpoint note from any of ``witnesses``.

    Lines from other keys (the log's own signature, unknown witnesses) are ignored; verify
    the log's signature with ``open_checkpoint``. A line from a known witness that fails
    rejects the note. Returns one cosignature per witness that cosigned (the first line),
    and raises ``PeerDataError`` when none did: the caller applies its quorum.
    """
    known = index_verifier_keys(witnesses, SIG_COSIGNATURE_V1)
    parsed = parse_note_unverified(note, max_bytes=max_bytes)
    parse_checkpoint_unverified(parsed.text)
    found: dict[tuple[str, bytes], VerifiedCosignature] = {}
    for sig in parsed.signatures:
        witness = known.get((sig.name, sig.key_id))
        if witness is None:
            continue
        verified = _verify(parsed.text, sig, witness)
        found.setdefault((sig.name, sig.key_id), verified)
    if not found:
        raise PeerDataError(
            "checkpoint has no cosignature from any given witness", code="peer.not_cosigned"
        )
    return tuple(found.values())
