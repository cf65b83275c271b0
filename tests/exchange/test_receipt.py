"""Batch receipts (docs/DESIGN.md §8): signed by the receiver, checked by the sender against the
digests of what it actually sent; docs/THREATS.md P05, P09, P12, N03."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from exchange.canonical import canonical_json, sha256
from exchange.envelope import Envelope, envelope_digest, envelope_hash
from exchange.errors import InputError, PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.receipt import (
    MAX_RECEIPT_RANGE,
    ItemRejection,
    ReceiptArgumentInvalid,
    SignedReceipt,
    VerifiedReceipt,
    envelopes_digest,
    make_receipt,
    verify_receipt,
)
from keys.signers import Ed25519Signer

A, B, C = "pk-moi", "cn-mps", "zz-other"  # A sent envelopes to B; B signs the receipt
SIGNERS = {n: Ed25519Signer(hashlib.sha256(n.encode()).digest()) for n in (A, B, C)}
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
OUTBOX = {  # what A sent to B, by seq
    seq: Envelope(f"header {seq}".encode(), f"ct {seq}".encode(), bytes([seq]) * 64)
    for seq in range(1, 11)
}
DIGESTS = {seq: envelope_digest(env) for seq, env in OUTBOX.items()}


def sent(first: int, last: int) -> Sequence[str]:
    return [DIGESTS[s] for s in range(first, last + 1) if s in DIGESTS]


def receipt(first: int = 3, last: int = 5, **kw: Any) -> SignedReceipt:
    args: dict[str, Any] = {
        "sender": B,
        "recipient": A,
        "first_seq": first,
        "last_seq": last,
        "envelope_digests": sent(first, last),
        "rejections": [ItemRejection(4, "peer.above_ceiling")],
        "received_at": NOW,
        "signer": SIGNERS[B],
    }
    args.update(kw)
    return make_receipt(**args)


def verify(statement: bytes, signature: bytes, **kw: Any) -> VerifiedReceipt:
    args: dict[str, Any] = {
        "signer_key": SIGNERS[B].public_key,
        "expected_from": B,
        "expected_to": A,
        "digests_for_range": sent,
    }
    args.update(kw)
    return verify_receipt(statement, signature, **args)


def code_of(statement: bytes, signature: bytes, **kw: Any) -> str:
    with pytest.raises(PeerDataError) as info:
        verify(statement, signature, **kw)
    return info.value.code


def resigned(
    doc: dict[str, Any], signer: str = B, purpose: Purpose = Purpose.RECEIPT
) -> tuple[bytes, bytes]:
    data = canonical_json(doc)
    return data, SIGNERS[signer].sign(signed_message(purpose, data))


GOOD = receipt()
GOOD_DOC = json.loads(GOOD.statement)


# ---- round trip --------------------------------------------------------------------------------------


def test_receipt_round_trip_names_every_rejection() -> None:
    got = verify(GOOD.statement, GOOD.signature)
    assert (got.sender, got.recipient, got.first_seq, got.last_seq) == (B, A, 3, 5)
    assert got.rejections == (ItemRejection(4, "peer.above_ceiling"),)  # P12: never silent
    assert got.received_at == "2026-06-01T12:00:00Z"
    assert got.digest == GOOD.digest and got.statement == GOOD.statement


def test_statement_format() -> None:
    assert {
        "type": "accord.receipt/v1",
        "from": B,
        "to": A,
        "first_seq": 3,
        "last_seq": 5,
        "envelopes_digest": GOOD_DOC["envelopes_digest"],
        "items": [{"seq": 4, "code": "peer.above_ceiling"}],
        "received_at": "2026-06-01T12:00:00Z",
    } == GOOD_DOC
    assert canonical_json(GOOD_DOC) == GOOD.statement
    raw = b"".join(envelope_hash(OUTBOX[s]) for s in (3, 4, 5))
    assert GOOD_DOC["envelopes_digest"] == "sha256:" + sha256(raw).hex()
    assert envelopes_digest(sent(3, 5)) == GOOD_DOC["envelopes_digest"]


# ---- what the sender checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"signer_key": SIGNERS[C].public_key}, "peer.bad_signature"),
        ({"signer_key": b"\0" * 31}, "peer.bad_signature"),  # N03: wrong-length key
        ({"expected_from": C, "signer_key": SIGNERS[B].public_key}, "peer.receipt.wrong_sender"),
        ({"expected_to": C}, "peer.receipt.wrong_recipient"),
        ({"digests_for_range": lambda f, last: sent(f, last)[:-1]}, "peer.receipt.unknown_range"),
        (
            {"digests_for_range": lambda f, last: sent(f, last)[::-1]},
            "peer.receipt.digest_mismatch",
        ),
        (
            {"digests_for_range": lambda f, last: sent(f + 1, last + 1)},
            "peer.receipt.digest_mismatch",
        ),
    ],
    ids=["other-key", "short-key", "wrong-from", "wrong-to", "never-sent", "reordered", "shifted"],
)
def test_sender_checks(kw: dict[str, Any], code: str) -> None:
    assert code_of(GOOD.statement, GOOD.signature, **kw) == code


def test_receipt_for_envelopes_never_sent() -> None:
    forged = receipt(9, 12, envelope_digests=["sha256:" + "ab" * 32] * 4, rejections=[])
    assert code_of(forged.statement, forged.signature) == "peer.receipt.unknown_range"


@pytest.mark.threat("N03")
def test_n03_flipped_bit_in_statement_or_signature() -> None:
    for bit in range(0, len(GOOD.statement) * 8, 7):
        bad = bytearray(GOOD.statement)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert code_of(bytes(bad), GOOD.signature) == "peer.bad_signature", bit
    for bit in range(512):
        bad = bytearray(GOOD.signature)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert code_of(GOOD.statement, bytes(bad)) == "peer.bad_signature", bit
    assert code_of(GOOD.statement, GOOD.signature[:63]) == "peer.bad_signature"
    assert code_of(GOOD.statement[:-1], GOOD.signature) == "peer.bad_signature"


@pytest.mark.parametrize("purpose", [Purpose.ENVELOPE, Purpose.RELEASE, Purpose.AGREEMENT])
@pytest.mark.threat("P09")
def test_p09_signature_of_another_purpose_is_not_a_receipt(purpose: Purpose) -> None:
    assert code_of(*resigned(GOOD_DOC, purpose=purpose)) == "peer.bad_signature"


@pytest.mark.threat("P09")
def test_p09_our_own_receipt_reflected_back() -> None:
    ours = receipt(sender=A, recipient=B, signer=SIGNERS[A])
    assert code_of(ours.statement, ours.signature, signer_key=SIGNERS[A].public_key) == (
        "peer.receipt.wrong_sender"
    )


@pytest.mark.threat("L01")
def test_l01_oversized_statement() -> None:
    doc = GOOD_DOC | {"items": [{"seq": 4, "code": "peer.x" + "y" * 70_000}]}
    assert code_of(*resigned(doc)) == "peer.receipt.too_large"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"type": "accord.envelope/v1"}, "type"),
        ({"extra": 1}, "extra key"),
        ({"from": A}, "from == to"),
        ({"from": "../x"}, "from not a node id"),
        ({"first_seq": 6}, "first > last"),
        ({"first_seq": 0}, "seq 0"),
        ({"first_seq": True}, "bool seq"),
        ({"last_seq": 3 + MAX_RECEIPT_RANGE}, "range over the batch limit"),
        ({"envelopes_digest": "sha256:abc"}, "digest"),
        ({"received_at": "now"}, "time"),
        ({"items": [{"seq": 9, "code": "peer.schema"}]}, "item outside the range"),
        (
            {"items": [{"seq": 5, "code": "peer.decrypt"}, {"seq": 4, "code": "peer.schema"}]},
            "item order",
        ),
        ({"items": [{"seq": 4, "code": "peer.schema"}] * 2}, "item twice"),
        ({"items": [{"seq": 4, "code": "Peer Schema!"}]}, "code"),
        ({"items": [{"seq": "4", "code": "peer.schema"}]}, "string seq"),
        ({"items": [{"seq": 4}]}, "item keys"),
        ({"items": {}}, "items type"),
    ],
)
def test_malformed_statements_signed_by_the_partner(change: dict[str, Any], why: str) -> None:
    assert code_of(*resigned(GOOD_DOC | change)) == "peer.receipt.malformed", why


def test_non_canonical_statement() -> None:
    data = json.dumps(GOOD_DOC, indent=1).encode()
    signature = SIGNERS[B].sign(signed_message(Purpose.RECEIPT, data))
    assert code_of(data, signature) == "peer.receipt.malformed"


# ---- what the receiver may sign -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"first": 5, "last": 3},
        {"first": 1, "last": MAX_RECEIPT_RANGE + 1},
        {"recipient": B},
        {"envelope_digests": sent(3, 4)},
        {"rejections": [ItemRejection(9, "peer.schema")]},
        {"rejections": [ItemRejection(4, "not a code")]},
        {"rejections": [ItemRejection(4, "peer.schema"), ItemRejection(4, "peer.decrypt")]},
    ],
)
def test_make_receipt_refuses(kw: dict[str, Any]) -> None:
    first, last = kw.pop("first", 3), kw.pop("last", 5)
    with pytest.raises(ReceiptArgumentInvalid):
        receipt(first, last, **kw)


def test_envelopes_digest_refuses_non_digests() -> None:
    with pytest.raises(InputError, match="sha256"):
        envelopes_digest(["md5:00"])
