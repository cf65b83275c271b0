"""Authentication of rows the node itself wrote (ADR 0012).

An insider holding ``node.db`` but not the passphrase can write any row with correct
hashes; what they cannot do is compute an HMAC under a key derived from the keyring. Each
purpose (``"log.leaf"``, ``"inbox.row"``, ...) gets its own key, derived with HKDF-SHA256
from the storage key with the purpose in ``info``, so a tag made for one kind of row never
verifies for another. The key stays inside these objects: they expose ``tag`` and
``verify`` only.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.errors import InputError

TAG_LEN = 32
_INFO = b"accord/v1/row-authenticator\n"
_PURPOSE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
LEAF_PURPOSE = "log.leaf"


def derive_row_key(secret: bytes, purpose: str) -> bytes:
    """The HMAC-SHA256 key for ``purpose``: HKDF-SHA256(secret, info = label + purpose)."""
    if not _PURPOSE.match(purpose):
        raise InputError("row authenticator purpose must be 1-64 of [a-z0-9_.-]")
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + purpose.encode("ascii")
    ).derive(secret)


class RowAuthenticator:
    """HMAC-SHA256 over a purpose label and length-prefixed fields.

    ``tag(*fields)`` -> 32 bytes; ``verify(tag, *fields)`` compares in constant time. The
    encoding is unambiguous: each field is preceded by its length (8 bytes, big-endian)."""

    __slots__ = ("_key", "purpose")

    def __init__(self, secret: bytes, purpose: str) -> None:
        self._key = derive_row_key(secret, purpose)
        self.purpose = purpose

    def __repr__(self) -> str:
        return f"RowAuthenticator(purpose={self.purpose!r})"

    def _message(self, fields: tuple[bytes, ...]) -> bytes:
        parts = [self.purpose.encode("ascii"), b"\n"]
        for f in fields:
            parts.append(len(f).to_bytes(8, "big"))
            parts.append(bytes(f))
        return b"".join(parts)

    def tag(self, *fields: bytes) -> bytes:
        return hmac.new(self._key, self._message(fields), hashlib.sha256).digest()

    def verify(self, tag: bytes | None, *fields: bytes) -> bool:
        if tag is None or len(tag) != TAG_LEN:
            return False
        return hmac.compare_digest(self.tag(*fields), bytes(tag))


class LeafAuthenticator:
    """Tags for log leaves: HMAC over (purpose ``log.leaf``, index, leaf hash)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: RowAuthenticator) -> None:
        if rows.purpose != LEAF_PURPOSE:
            raise InputError(f"a leaf authenticator needs purpose {LEAF_PURPOSE!r}")
        self._rows = rows

    def __repr__(self) -> str:
        return "LeafAuthenticator()"

    @staticmethod
    def _index(index: int) -> bytes:
        if not 0 <= index < 2**64:
            raise InputError("leaf index out of range")
        return index.to_bytes(8, "big")

    def tag(self, index: int, leaf_hash: bytes) -> bytes:
        return self._rows.tag(self._index(index), leaf_hash)

    def verify(self, index: int, leaf_hash: bytes, tag: bytes | None) -> bool:
        return self._rows.verify(tag, self._index(index), leaf_hash)
