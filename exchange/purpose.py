"""Domain separation: every Accord signature (outside SD-JWT and C2SP notes) signs
``"accord/v1/<purpose>\\n" + exact bytes`` so no signature can be replayed in another role.
"""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    CARD = "card"
    REVOCATION = "revocation"
    KEY_REVOCATION = "key-revocation"
    AGREEMENT = "agreement"
    RELEASE = "release"
    ENVELOPE = "envelope"
    RECEIPT = "receipt"
    RETRACTION = "retraction"
    TERMINATION = "agreement-termination"
    ACK = "ack"


def signed_message(purpose: Purpose, data: bytes) -> bytes:
    """The exact bytes signed for ``purpose`` over ``data``."""
    return b"accord/v1/" + purpose.value.encode("ascii") + b"\n" + data
