"""Batch receipts (docs/DESIGN.md §8): the receiver's signed word on what it did with a batch.

A receipt statement is canonical JSON (RFC 8785)::

    {"type": "accord.receipt/v1", "from": <receiver>, "to": <sender>,
     "first_seq": 1, "last_seq": 3,
     "envelopes_digest": "sha256:<hex of SHA-256(h1 || h2 || h3)>",
     "items": [{"seq": 2, "code": "peer.above_ceiling"}],
     "received_at": "2026-06-01T12:00:00Z"}

``h1 .. hn`` are the raw 32-byte ``exchange.envelope.envelope_hash`` values of the envelopes
first_seq .. last_seq, in seq order; ``items`` lists every rejected envelope with its code
(everything else in the range was applied or was an exact duplicate). The receiver signs
``"accord/v1/receipt\\n" + statement`` with its identity key. The sender verifies it against
the digests of what it actually sent (``verify_receipt``), so a receipt can acknowledge
only bytes the sender holds.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from exchange.canonical import canonical_json, parse_canonical_json_unverified, sha256_digest
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError
from exchange.names import NODE_ID_RE
from exchange.purpose import Purpose, signed_message
from exchange.sop import MAX_SAFE_INTEGER
from exchange.times import format_time, parse_time

RECEIPT_TYPE: Final = "accord.receipt/v1"
MAX_RECEIPT_BYTES: Final = 64 * 1024
MAX_RECEIPT_RANGE: Final = 256  # one Pull batch (docs/DESIGN.md §8)
RECEIPT_KEYS: Final = frozenset(
    {"type", "from", "to", "first_seq", "last_seq", "envelopes_digest", "items", "received_at"}
)
DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
CODE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){1,3}")


class ReceiptArgumentInvalid(InputError):
    code = "input.receipt_argument"
    default_next_step = "Build receipts from the batch just applied, in seq order."


@dataclass(frozen=True, order=True)
class ItemRejection:
    """One envelope of the range that was refused, with the stable code of the check."""

    seq: int
    code: str


@dataclass(frozen=True)
class SignedReceipt:
    """Exact statement bytes and the receiver's signature (as on the wire)."""

    statement: bytes
    signature: bytes

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the statement bytes (what both logs record)."""
        return sha256_digest(self.statement)


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt whose signature, parties and envelope digests all verified."""

    sender: str  # "from": the node that received the envelopes and signed the receipt
    recipient: str  # "to": the node that sent the envelopes
    first_seq: int
    last_seq: int
    envelopes_digest: str
    rejections: tuple[ItemRejection, ...]
    received_at: str
    statement: bytes
    signature: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.statement)


def _fail(code: str, message: str) -> PeerDataError:
    return PeerDataError(message, code=code)


def envelopes_digest(envelope_digests: Sequence[str]) -> str:
    """``sha256:`` of the concatenated raw envelope hashes, in the order given."""
    if not envelope_digests or not all(
        isinstance(d, str) and DIGEST_RE.fullmatch(d) for d in envelope_digests
    ):
        raise InputError("envelope digests must be a non-empty list of sha256:<hex> strings")
    return sha256_digest(b"".join(bytes.fromhex(d[7:]) for d in envelope_digests))


def _within(seq: object, first: object, last: object) -> bool:
    return type(seq) is int and type(first) is int and type(last) is int and first <= seq <= last


def _problems(
    sender: object, recipient: object, first: object, last: object, items: Sequence[Any]
) -> list[str]:
    range_ok = (
        type(first) is int
        and type(last) is int
        and 1 <= first <= last <= MAX_SAFE_INTEGER
        and last - first < MAX_RECEIPT_RANGE
    )
    checks = [
        (isinstance(sender, str) and NODE_ID_RE.fullmatch(sender) is not None, "from: node id"),
        (isinstance(recipient, str) and NODE_ID_RE.fullmatch(recipient) is not None, "to"),
        (sender != recipient, "from and to must differ"),
        (range_ok, f"first_seq..last_seq: 1 <= first <= last, at most {MAX_RECEIPT_RANGE}"),
    ]
    problems = [rule for ok, rule in checks if not ok]
    for item in items:
        seq_ok = range_ok and _within(item.seq, first, last)
        if not seq_ok or not isinstance(item.code, str) or not CODE_RE.fullmatch(item.code):
            return [*problems, "items: each seq inside the range, each code a stable error code"]
    seqs = [item.seq for item in items]
    if seqs != sorted(set(seqs)):
        problems.append("items: one per seq, in seq order")
    return problems


def make_receipt(
    *,
    sender: str,
    recipient: str,
    first_seq: int,
    last_seq: int,
    envelope_digests: Sequence[str],
    rejections: Iterable[ItemRejection],
    received_at: datetime,
    signer: Signer,
) -> SignedReceipt:
    """Sign a receipt for envelopes ``first_seq..last_seq`` received from ``recipient``.

    ``sender`` is this (receiving) node; ``envelope_digests`` are ``envelope_digest`` values
    of the batch in seq order, one per seq; ``rejections`` the refused items.
    """
    items = sorted(rejections)
    problems = _problems(sender, recipient, first_seq, last_seq, items)
    if not problems and len(envelope_digests) != last_seq - first_seq + 1:
        problems.append("envelope_digests: one digest per seq of the range")
    if problems:
        raise ReceiptArgumentInvalid(f"cannot make receipt: {problems[0]}")
    statement = canonical_json(
        {
            "type": RECEIPT_TYPE,
            "from": sender,
            "to": recipient,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "envelopes_digest": envelopes_digest(envelope_digests),
            "items": [{"seq": i.seq, "code": i.code} for i in items],
            "received_at": format_time(received_at),
        }
    )
    return SignedReceipt(statement, signer.sign(signed_message(Purpose.RECEIPT, statement)))


def verify_receipt(
    statement: bytes,
    signature: bytes,
    *,
    signer_key: bytes,
    expected_from: str,
    expected_to: str,
    digests_for_range: Callable[[int, int], Sequence[str]],
) -> VerifiedReceipt:
    """Verify a partner's receipt; return it only when every check passed.

    Order: size; the signature by ``signer_key`` (the identity key of ``expected_from``,
    the mTLS peer) over the exact bytes; strict parse; ``from``/``to``; then the
    envelope digests: ``digests_for_range(first, last)`` must return the digests of the
    envelopes this node sent to ``expected_from`` at those seqs (fewer when it holds fewer).
    Codes: ``peer.receipt.too_large``, ``peer.bad_signature``, ``peer.receipt.malformed``,
    ``peer.receipt.wrong_sender``, ``peer.receipt.wrong_recipient``,
    ``peer.receipt.unknown_range``, ``peer.receipt.digest_mismatch``.
    """
    if len(statement) > MAX_RECEIPT_BYTES:
        raise _fail("peer.receipt.too_large", f"receipt exceeds {MAX_RECEIPT_BYTES} bytes")
    try:
        verify_ed25519(
            signer_key, signed_message(Purpose.RECEIPT, statement), signature, what="receipt"
        )
    except PeerDataError as e:
        raise _fail("peer.bad_signature", e.message) from e
    doc = _parse(statement)
    if doc["from"] != expected_from:
        raise _fail("peer.receipt.wrong_sender", "receipt is not from the connected peer")
    if doc["to"] != expected_to:
        raise _fail("peer.receipt.wrong_recipient", "receipt is addressed to another node")
    first, last = doc["first_seq"], doc["last_seq"]
    held = list(digests_for_range(first, last))
    if len(held) != last - first + 1:
        raise _fail("peer.receipt.unknown_range", "receipt names envelopes this node never sent")
    if not hmac.compare_digest(envelopes_digest(held), doc["envelopes_digest"]):
        raise _fail(
            "peer.receipt.digest_mismatch", "receipt acknowledges other envelopes than those sent"
        )
    return VerifiedReceipt(
        sender=doc["from"],
        recipient=doc["to"],
        first_seq=first,
        last_seq=last,
        envelopes_digest=doc["envelopes_digest"],
        rejections=tuple(ItemRejection(i["seq"], i["code"]) for i in doc["items"]),
        received_at=doc["received_at"],
        statement=statement,
        signature=signature,
    )


def _parse(statement: bytes) -> dict[str, Any]:
    """Strict reading of signed receipt bytes: exact keys, canonical form, every rule."""
    code = "peer.receipt.malformed"
    try:
        doc = parse_canonical_json_unverified(
            statement, what="receipt", max_bytes=MAX_RECEIPT_BYTES
        )
    except InputError as e:
        raise _fail(code, e.message) from e
    if not isinstance(doc, dict) or set(doc) != RECEIPT_KEYS or doc["type"] != RECEIPT_TYPE:
        raise _fail(code, f"receipt: not an {RECEIPT_TYPE} statement with exactly its fields")
    raw_items = doc["items"]
    if not isinstance(raw_items, list) or len(raw_items) > MAX_RECEIPT_RANGE:
        raise _fail(code, "receipt: items must be a list of at most one per seq")
    if not all(isinstance(i, dict) and set(i) == {"seq", "code"} for i in raw_items):
        raise _fail(code, "receipt: each item needs exactly seq and code")
    items = [ItemRejection(i["seq"], i["code"]) for i in raw_items]
    problems = _problems(doc["from"], doc["to"], doc["first_seq"], doc["last_seq"], items)
    if not isinstance(doc["envelopes_digest"], str) or not DIGEST_RE.fullmatch(
        doc["envelopes_digest"]
    ):
        problems.append("envelopes_digest: sha256:<64 hex>")
    try:
        parse_time(doc["received_at"], field="receipt received_at")
    except InputError as e:
        problems.append(e.message)
    if problems:
        raise _fail(code, f"receipt: {problems[0]}")
    return doc


__all__ = [
    "MAX_RECEIPT_RANGE",
    "RECEIPT_TYPE",
    "ItemRejection",
    "ReceiptArgumentInvalid",
    "SignedReceipt",
    "VerifiedReceipt",
    "envelopes_digest",
    "make_receipt",
    "verify_receipt",
]
