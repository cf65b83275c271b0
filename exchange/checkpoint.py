"""C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint v1.0.0): the signed head of a log.

The note text is the origin line, the tree size in decimal (no leading zeros), the base64
RFC 6962 root hash, then optional non-empty extension lines, each ending in a newline.
Parsing is strict, so a parsed checkpoint formats back to exactly the bytes it came from.
An Accord node's log origin is ``<node-id>.accord/log`` unless configured otherwise.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from exchange.canonical import b64
from exchange.crypto import Signer
from exchange.errors import AccordError, InputError, PeerDataError
from exchange.merkle import HASH_LEN, MAX_TREE_SIZE
from exchange.names import check_node_id
from exchange.note import (
    MAX_NOTE_BYTES,
    VerifiedNote,
    VerifierKey,
    open_note,
    sign_note,
)

MAX_ORIGIN_LEN = 256
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_B64_HASH_RE = re.compile(r"[A-Za-z0-9+/]{43}=")


def log_origin(node_id: str) -> str:
    """The default checkpoint origin of a node's log: ``<node-id>.accord/log``."""
    return f"{check_node_id(node_id)}.accord/log"


def _check_line(value: object, what: str, error: type[AccordError]) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"checkpoint {what} must be a non-empty line")
    if any(ord(c) < 0x20 for c in value):
        raise error(f"checkpoint {what} must not contain a newline or control character")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A log's origin, tree size and root hash (and rarely, extension lines)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin", InputError)
        if len(self.origin) > MAX_ORIGIN_LEN:
            raise InputError(f"checkpoint origin is longer than {MAX_ORIGIN_LEN} characters")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise InputError("checkpoint size must be an integer from 0 to 2**64-1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_LEN:
            raise InputError(f"checkpoint root hash must be {HASH_LEN} bytes")
        if not isinstance(self.extensions, tuple):
            raise InputError("checkpoint extensions must be a tuple of lines")
        for ext in self.extensions:
            _check_line(ext, "extension line", InputError)

    def text(self) -> str:
        """The checkpoint note text (what the log signs and witnesses cosign)."""
        lines = [self.origin, str(self.size), b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint from a note that verified under the log's key, with that note."""

    checkpoint: Checkpoint
    note: VerifiedNote

    @property
    def text(self) -> str:
        """The exact signed checkpoint text (cosign this, never a re-serialisation)."""
        return self.note.text


def parse_checkpoint_unverified(text: str) -> Checkpoint:
    """Parse checkpoint note text strictly; raise ``PeerDataError`` naming the rule.

    The result is *unverified* unless ``text`` came from a ``VerifiedNote``.
    """
    if not isinstance(text, str) or not text.endswith("\n"):
        raise PeerDataError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise PeerDataError("checkpoint needs origin, size and root hash lines")
    origin, size_line, root_line, *extensions = lines
    _check_line(origin, "origin", PeerDataError)
    if len(origin) > MAX_ORIGIN_LEN:
        raise PeerDataError(f"checkpoint origin is longer than {MAX_ORIGIN_LEN} characters")
    if _SIZE_RE.fullmatch(size_line) is None or int(size_line) > MAX_TREE_SIZE:
        raise PeerDataError("checkpoint size must be a decimal from 0 to 2**64-1, no leading 0")
    if _B64_HASH_RE.fullmatch(root_line) is None:
        raise PeerDataError("checkpoint root hash must be the base64 of 32 bytes")
    root_hash = base64.b64decode(root_line, validate=True)
    if b64(root_hash) != root_line:
        raise PeerDataError("checkpoint root hash is not canonical base64")
    for ext in extensions:
        _check_line(ext, "extension line", PeerDataError)
    return Checkpoint(origin, int(size_line), root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, name: str, signer: Signer) -> bytes:
    """The checkpoint as a C2SP signed note by the log key ``name``."""
    return sign_note(checkpoint.text(), name, signer)


def open_checkpoint(
    note: bytes,
    log_keys: Iterable[VerifierKey],
    *,
    origin: str,
    max_bytes: int = MAX_NOTE_BYTES,
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint from the log with ``origin`` under its key(s).

    The key name may differ from the origin (sum.golang.org signs ``go.sum database tree``);
    the origin line must equal ``origin``. Cosignature lines are ignored here: check them
    with ``exchange.cosignature.verify_cosignatures``.
    """
    verified = open_note(note, log_keys, max_bytes=max_bytes)
    checkpoint = parse_checkpoint_unverified(verified.text)
    if checkpoint.origin != origin:
        raise PeerDataError(
            "checkpoint origin does not match the expected log origin",
            code="peer.wrong_origin",
        )
    return VerifiedCheckpoint(checkpoint, verified)
