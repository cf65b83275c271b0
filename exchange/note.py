"""C2SP signed notes (c2sp.org/signed-note v1.0.0) with Ed25519 keys, and verifier keys.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> base64(key id[4] || signature)``. The text and the signatures are split at
the LAST blank line. Signature lines whose (name, key id) match no known key are ignored;
a known key whose signature fails rejects the whole note; at least one known key must
verify. Like golang.org/x/mod/sumdb/note, more than 100 signature lines is malformed.

Stricter than the Go reference, on purpose: base64 must be canonical (the one encoding of
its bytes), key ids in verifier keys are lowercase hex, and every line from a known key is
verified (Go skips a repeated line from the same key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from exchange.canonical import b64, b64_decode, sha256
from exchange.crypto import ED25519_PUBLIC_KEY_LEN, Signer, verify_ed25519
from exchange.errors import AccordError, InputError, PeerDataError

SIG_ED25519 = 0x01
"""Signature type of plain Ed25519 note signatures."""
SIG_COSIGNATURE_V1 = 0x04
"""Signature type of Ed25519 tlog-cosignature/v1 witness cosignatures."""

KEY_ID_LEN = 4
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 64 * 1024
MAX_KEY_NAME_LEN = 256

_ED25519_TYPES = frozenset({SIG_ED25519, SIG_COSIGNATURE_V1})
_SIG_PREFIX = "\u2014 "  # em dash (3 UTF-8 bytes) and a space
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}")


@dataclass(frozen=True)
class VerifierKey:
    """A public key with its note name, key id and signature type (0x01 or 0x04)."""

    name: str
    key_id: bytes
    sig_type: int
    public_key: bytes

    def encode(self) -> str:
        """The C2SP verifier key string ``<name>+<hex key id>+base64(type || key)``."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.sig_type]) + self.public_key)}"

    @property
    def label(self) -> str:
        """``<name>+<hex key id>``: how errors and logs name this key."""
        return f"{self.name}+{self.key_id.hex()}"


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line. ``signature`` is the bytes after the 4-byte key id."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        """The signature line without its final newline."""
        return f"{_SIG_PREFIX}{self.name} {b64(self.key_id + self.signature)}"


@dataclass(frozen=True)
class UnverifiedNote:
    """A note split into text and signature lines; nothing about it has been checked."""

    text: str
    signatures: tuple[NoteSignature, ...]


@dataclass(frozen=True)
class VerifiedNote:
    """A note whose ``signatures`` all verified under known keys (at least one).

    ``unverified_signatures`` are the lines from keys the caller did not name (for example
    witness cosignatures); they were not checked.
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified_signatures: tuple[NoteSignature, ...]

    @property
    def signed_by(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.signatures)


# ---------------------------------------------------------------------------- keys


def check_key_name(name: object, *, error: type[AccordError] = InputError) -> str:
    """A note key name: non-empty, no Unicode space, no '+', no control character."""
    if not isinstance(name, str) or not name:
        raise error("note key name must be a non-empty string")
    if len(name) > MAX_KEY_NAME_LEN:
        raise error(f"note key name is longer than {MAX_KEY_NAME_LEN} characters")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 for c in name):
        raise error("note key name must not contain spaces, '+' or control characters")
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            raise error("note key name is not valid Unicode text") from e
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4] (signed-note, tlog-cosignature)."""
    return sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key)[:KEY_ID_LEN]


def verifier_key(name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> VerifierKey:
    """The verifier key for an Ed25519 ``public_key`` under ``name`` and ``sig_type``."""
    check_key_name(name)
    if sig_type not in _ED25519_TYPES:
        raise InputError(f"signature type {sig_type:#04x} is not an Ed25519 note type")
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_LEN:
        raise InputError("verifier key: Ed25519 public key must be 32 bytes")
    return VerifierKey(name, key_id(name, sig_type, public_key), sig_type, public_key)


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse ``<name>+<hex key id>+base64(type || key)``, splitting on the first two '+'.

    Accepts Ed25519 types 0x01 (note signatures) and 0x04 (cosignatures); the key id must
    match the key. Raises ``PeerDataError`` naming the rule that failed.
    """
    if not isinstance(vkey, str):
        raise PeerDataError("verifier key must be a string")
    name, sep1, rest = vkey.partition("+")
    hex_id, sep2, key_b64 = rest.partition("+")
    if not (sep1 and sep2):
        raise PeerDataError("verifier key must have the form <name>+<key id>+<key>")
    check_key_name(name, error=PeerDataError)
    if _KEY_ID_RE.fullmatch(hex_id) is None:
        raise PeerDataError("verifier key: key id must be 8 lowercase hex digits")
    raw = _strict_b64(key_b64, "verifier key: key")
    if not raw or raw[0] not in _ED25519_TYPES:
        shown = f"{raw[0]:#04x}" if raw else "missing"
        raise PeerDataError(f"verifier key: signature type {shown} is not supported")
    if len(raw) != 1 + ED25519_PUBLIC_KEY_LEN:
        raise PeerDataError("verifier key: Ed25519 public key must be 32 bytes")
    sig_type, public_key = raw[0], raw[1:]
    if key_id(name, sig_type, public_key) != bytes.fromhex(hex_id):
        raise PeerDataError(f"verifier key {name}+{hex_id}: key id does not match the key")
    return VerifierKey(name, bytes.fromhex(hex_id), sig_type, public_key)


# ---------------------------------------------------------------------------- parsing


def _strict_b64(text: str, what: str) -> bytes:
    try:
        raw = b64_decode(text, what=what)
    except InputError as e:
        raise PeerDataError(e.message) from e
    if b64(raw) != text:
        raise PeerDataError(f"{what}: not canonical base64")
    return raw


def _check_text_chars(text: str, what: str, error: type[AccordError]) -> None:
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise error(f"{what}: contains control character {ord(c):#04x}")


def parse_signature_line_unverified(line: str) -> NoteSignature:
    """Parse one ``— <name> <base64>`` line (no final newline); nothing is verified."""
    if not line.startswith(_SIG_PREFIX):
        raise PeerDataError("malformed note: signature line does not start with '\u2014 '")
    name, sep, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not sig_b64:
        raise PeerDataError("malformed note: signature line has no signature")
    check_key_name(name, error=PeerDataError)
    raw = _strict_b64(sig_b64, "malformed note: signature")
    if len(raw) <= KEY_ID_LEN:
        raise PeerDataError("malformed note: signature is shorter than a key id")
    return NoteSignature(name, raw[:KEY_ID_LEN], raw[KEY_ID_LEN:])


def parse_note_unverified(note: bytes, *, max_bytes: int = MAX_NOTE_BYTES) -> UnverifiedNote:
    """Split a signed note into text and signature lines, checking only its form."""
    if len(note) > max_bytes:
        raise PeerDataError(f"malformed note: {len(note)} bytes exceeds the limit {max_bytes}")
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PeerDataError(f"malformed note: not valid UTF-8 (byte {e.start})") from e
    _check_text_chars(text, "malformed note", PeerDataError)
    split = text.rfind("\n\n")
    if split < 0:
        raise PeerDataError("malformed note: no blank line before the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block or not block.endswith("\n"):
        raise PeerDataError("malformed note: signature block is empty or lacks a final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise PeerDataError(f"malformed note: more than {MAX_SIGNATURES} signature lines")
    return UnverifiedNote(body, tuple(parse_signature_line_unverified(ln) for ln in lines))


# ---------------------------------------------------------------------------- sign, open


def check_note_text(text: object) -> str:
    """Note text we sign: UTF-8, ends with a newline, no control character but newline."""
    if not isinstance(text, str) or not text.endswith("\n"):
        raise InputError("note text must be a string ending with a newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError("note text is not encodable as UTF-8") from e
    _check_text_chars(text, "note text", InputError)
    return text


def sign_note(text: str, name: str, signer: Signer) -> bytes:
    """A signed note: ``text``, a blank line and one Ed25519 signature line by ``name``."""
    check_note_text(text)
    key = verifier_key(name, signer.public_key, SIG_ED25519)
    message = text.encode("utf-8")
    sig = NoteSignature(name, key.key_id, signer.sign(message))
    return message + b"\n" + sig.line.encode("utf-8") + b"\n"


def index_verifier_keys(
    verifiers: Iterable[VerifierKey], sig_type: int
) -> dict[tuple[str, bytes], VerifierKey]:
    known: dict[tuple[str, bytes], VerifierKey] = {}
    for v in verifiers:
        if not isinstance(v, VerifierKey) or v.sig_type != sig_type:
            raise InputError(f"verifier keys here must have signature type {sig_type:#04x}")
        if known.setdefault((v.name, v.key_id), v) != v:
            raise InputError(f"two different verifier keys are named {v.label}")
    if not known:
        raise InputError("no verifier keys given: a note cannot be trusted without one")
    return known


def open_note(
    note: bytes, verifiers: Iterable[VerifierKey], *, max_bytes: int = MAX_NOTE_BYTES
) -> VerifiedNote:
    """Verify a signed note against Ed25519 (type 0x01) verifier keys.

    Returns the text with the signatures that verified. Raises ``PeerDataError`` when the
    note is malformed, when a known key's signature fails, or when no known key signed.
    """
    known = index_verifier_keys(verifiers, SIG_ED25519)
    parsed = parse_note_unverified(note, max_bytes=max_bytes)
    message = parsed.text.encode("utf-8")
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    unknown: list[NoteSignature] = []
    for sig in parsed.signatures:
        key = known.get((sig.name, sig.key_id))
        if key is None:
            if sig not in unknown:
                unknown.append(sig)
            continue
        verify_ed25519(
            key.public_key, message, sig.signature, what=f"note signature by key {key.label}"
        )
        verified.setdefault((sig.name, sig.key_id), sig)
    if not verified:
        raise PeerDataError(
            "note has no verifiable signatures: no line is from a known key",
            code="peer.unverified_note",
        )
    return VerifiedNote(parsed.text, tuple(verified.values()), tuple(unknown))
