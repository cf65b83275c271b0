"""An officer's acknowledgement of a received report (docs/DESIGN.md §7a, ADR 0022); pure.

The receiving node signs, under its identity key and the purpose ``ack``, the exact JCS
bytes of::

    {"type": "accord.ack/v1", "from": "cn-mps", "to": "pk-moi",
     "report_id": "<UUIDv7>", "version": 1, "issuer_jwt_digest": "sha256:...",
     "envelope_id": "<UUIDv7 of the envelope that carried it>",
     "status": "accepted", "officer": "amina", "acked_at": "2026-12-01T10:05:00Z",
     "note": "..."}                                       # note: optional

``to`` is the report's issuer: an acknowledgement goes back to the originator only. The
statement travels encrypted inside an envelope of kind ``ack`` on the ordinary Pull path,
so it is exactly once, receipted and logged like every envelope. The ``note`` is free
text: it is a field like any other, stored encrypted and never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from exchange.canonical import canonical_json, parse_json_unverified
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import NODE_ID_RE
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import DIGEST_RE, UUID7_RE
from exchange.times import format_time, parse_time

ACK_TYPE: Final = "accord.ack/v1"
ACK_STATUSES: Final = ("received", "accepted", "actioned", "rejected")
MAX_ACK_BYTES: Final = 8192
MAX_NOTE_CHARS: Final = 2000
OFFICER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEYS: Final = frozenset(
    {"type", "from", "to", "report_id", "version", "issuer_jwt_digest", "envelope_id"}
    | {"status", "officer", "acked_at"}
)
# C0/C1 controls other than tab, LF and CR, DEL, and bidi overrides (docs/THREATS.md B03).
_BAD_CHARS: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c]"
)


class AckInvalid(PeerDataError):
    """A partner's acknowledgement that fails a rule (``peer.ack_invalid``)."""

    code = "peer.ack_invalid"
    default_next_step = "Nothing was stored. Ask the partner's operator to check its node."


class AckArgumentInvalid(InputError):
    """This node was asked to sign an acknowledgement that breaks a rule."""

    code = "input.ack"
    default_next_step = "Check the item id, the status and the note, then try again."


@dataclass(frozen=True)
class Acknowledgement:
    sender: str  # the acknowledging node ("from")
    recipient: str  # the report's issuer ("to")
    report_id: str
    version: int
    issuer_jwt_digest: str
    envelope_id: str
    status: str
    officer: str
    acked_at: str
    note: str | None = None

    def problems(self) -> list[str]:
        """Every rule the acknowledgement breaks (field and rule, never the value)."""
        checks = [
            (_full(NODE_ID_RE, self.sender), "from: a node id"),
            (_full(NODE_ID_RE, self.recipient), "to: a node id"),
            (self.sender != self.recipient, "from and to must differ"),
            (_full(UUID7_RE, self.report_id), "report_id: a UUIDv7"),
            (type(self.version) is int and 1 <= self.version <= 2**31 - 1, "version: 1..2^31-1"),
            (_full(DIGEST_RE, self.issuer_jwt_digest), "issuer_jwt_digest: sha256:<hex>"),
            (_full(UUID7_RE, self.envelope_id), "envelope_id: a UUIDv7"),
            (self.status in ACK_STATUSES, f"status: one of {', '.join(ACK_STATUSES)}"),
            (_full(OFFICER_RE, self.officer), "officer: 1-64 of A-Z a-z 0-9 . _ @ -"),
            (_is_time(self.acked_at), "acked_at: RFC 3339 UTC with whole seconds and Z"),
        ]
        out = [rule for ok, rule in checks if not ok]
        if self.note is not None:
            if not isinstance(self.note, str) or not self.note.strip():
                out.append("note: a non-empty string (or leave it out)")
            elif len(self.note) > MAX_NOTE_CHARS:
                out.append(f"note: at most {MAX_NOTE_CHARS} characters")
            elif _BAD_CHARS.search(self.note):
                out.append("note: control or bidi-override characters")
        return out

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": ACK_TYPE,
            "from": self.sender,
            "to": self.recipient,
            "report_id": self.report_id,
            "version": self.version,
            "issuer_jwt_digest": self.issuer_jwt_digest,
            "envelope_id": self.envelope_id,
            "status": self.status,
            "officer": self.officer,
            "acked_at": self.acked_at,
        }
        if self.note is not None:
            doc["note"] = self.note
        return doc

    def statement(self) -> bytes:
        """The canonical JSON bytes that are signed."""
        problems = self.problems()
        if problems:
            raise AckArgumentInvalid(f"acknowledgement: {'; '.join(problems)}")
        return canonical_json(self.to_json())


@dataclass(frozen=True)
class SignedAck:
    statement: bytes
    signature: bytes


def _full(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_time(value: object) -> bool:
    try:
        parse_time(value, field="acked_at")
    except InputError:
        return False
    return isinstance(value, str)


def make_ack(
    *,
    sender: str,
    recipient: str,
    report_id: str,
    version: int,
    issuer_jwt_digest: str,
    envelope_id: str,
    status: str,
    officer: str,
    now: datetime,
    note: str | None,
    signer: Signer,
) -> tuple[Acknowledgement, SignedAck]:
    """Build and sign an acknowledgement; raises ``AckArgumentInvalid`` naming each rule."""
    ack = Acknowledgement(
        sender,
        recipient,
        report_id,
        version,
        issuer_jwt_digest,
        envelope_id,
        status,
        officer,
        format_time(now),
        note,
    )
    statement = ack.statement()
    return ack, SignedAck(statement, signer.sign(signed_message(Purpose.ACK, statement)))


def parse_ack_unverified(statement: bytes) -> Acknowledgement:
    """Read a statement without checking a signature: only for bytes whose origin is
    proven otherwise (a record this node sealed at rest under its storage key)."""
    try:
        data = parse_json_unverified(statement, what="acknowledgement", max_bytes=MAX_ACK_BYTES)
    except InputError as e:
        raise AckInvalid(e.message) from e
    return _from_json(data, statement)


def _from_json(data: object, statement: bytes) -> Acknowledgement:
    if not isinstance(data, dict) or not _KEYS <= set(data) <= _KEYS | {"note"}:
        raise AckInvalid("acknowledgement: fields must be exactly those of accord.ack/v1")
    if data["type"] != ACK_TYPE:
        raise AckInvalid(f"acknowledgement: type must be {ACK_TYPE}")
    ack = Acknowledgement(
        data["from"],
        data["to"],
        data["report_id"],
        data["version"],
        data["issuer_jwt_digest"],
        data["envelope_id"],
        data["status"],
        data["officer"],
        data["acked_at"],
        data.get("note"),
    )
    problems = ack.problems()
    if problems:
        raise AckInvalid(f"acknowledgement: {'; '.join(problems)}")
    if canonical_json(ack.to_json()) != statement:
        raise AckInvalid("acknowledgement: statement is not in canonical JSON form")
    return ack


def verify_ack(
    statement: bytes,
    signature: bytes,
    public_key: bytes,
    *,
    expected_sender: str,
    expected_recipient: str,
) -> Acknowledgement:
    """Verify the signature over the exact bytes first, then read the statement."""
    if len(statement) > MAX_ACK_BYTES:
        raise AckInvalid(f"acknowledgement exceeds {MAX_ACK_BYTES} bytes")
    try:
        verify_ed25519(public_key, signed_message(Purpose.ACK, statement), signature, what="ack")
    except PeerDataError as e:
        raise PeerDataError(e.message, code="peer.bad_signature") from e
    ack = parse_ack_unverified(statement)
    if ack.sender != expected_sender:
        raise AckInvalid("acknowledgement: from is not the sending node")
    if ack.recipient != expected_recipient:
        raise AckInvalid("acknowledgement: to is not this node")
    return ack


__all__ = [
    "ACK_STATUSES",
    "ACK_TYPE",
    "AckArgumentInvalid",
    "AckInvalid",
    "Acknowledgement",
    "SignedAck",
    "make_ack",
    "parse_ack_unverified",
    "verify_ack",
]
