"""Canonical JSON (RFC 8785), digests and base64url: the byte forms everything signs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from typing import Any

import rfc8785

from exchange.errors import InputError

MAX_JSON_DEPTH = 32


_SAFE_INT = 2**53 - 1
_SPACE = re.compile(r"\s")  # str.isspace(), in C: the same characters


def _plain(value: Any) -> bool:
    """True when ``json.dumps`` already writes the JCS bytes of ``value``: integers inside
    JCS's domain; floats only where Python's shortest repr is ECMAScript's (finite, not
    integral, 1e-4 <= |x| < 1e16: no exponent either way); ASCII keys (so code point order
    is UTF-16 order); and only the exact JSON container and scalar types."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is float:
        return bool(math.isfinite(value) and 1e-4 <= abs(value) < 1e16 and not value.is_integer())
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) canonical bytes of a JSON value.

    Values ``_plain`` accepts go through the C JSON encoder, whose escaping of strings is
    the one JCS prescribes (tests compare it with ``rfc8785`` on generated values); every
    other value, and any value the fast path cannot encode, goes through ``rfc8785``."""
    if _plain(value):
        try:
            return json.dumps(
                value, ensure_ascii=False, sort_keys=True, separators=(",", ":")
            ).encode("utf-8")
        except ValueError:  # e.g. a lone surrogate: rfc8785 raises its own error below
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise InputError(f"value cannot be canonicalised as JSON: {type(e).__name__}") from e


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_digest(data: bytes) -> str:
    """The ``sha256:<hex>`` digest string used in documents and log events."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, what: str) -> bytes:
    """Strict base64url (no padding, no stray characters)."""
    if not isinstance(text, str) or "=" in text or _SPACE.search(text) is not None:
        raise InputError(f"{what}: not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{what}: not unpadded base64url") from e


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise InputError(f"{what}: not standard base64") from e


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InputError(f"duplicate key {key!r} in JSON object")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise InputError(f"JSON constant {name} is not allowed")


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def _depth(value: Any, limit: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InputError(f"JSON nested deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def parse_json_unverified(data: bytes, *, what: str, max_bytes: int) -> Any:
    """Parse JSON strictly: size limit, UTF-8, no duplicate keys, no NaN, bounded depth.

    The result is *unverified*: callers check signatures over ``data`` itself.
    """
    if len(data) > max_bytes:
        raise InputError(f"{what}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what}: not valid UTF-8 (byte {e.start})") from e
    if "\x00" in text:
        raise InputError(f"{what}: contains a NUL character")
    if text.startswith("\ufeff"):  # json.loads refuses a BOM; the decoder alone would not
        raise InputError(f"{what}: malformed JSON at line 1 column 1")
    try:
        value = _DECODER.decode(text)  # json.loads with these hooks, without a new decoder
    except RecursionError as e:
        raise InputError(f"{what}: JSON nested too deeply") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: malformed JSON at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # Python's limit on digits in an integer literal
        raise InputError(f"{what}: an integer has too many digits") from e
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH:  # else no value can be deeper
        _depth(value, MAX_JSON_DEPTH)
    return value
