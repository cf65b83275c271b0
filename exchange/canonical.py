"""Canonical JSON (RFC 8785), digests and base64url: the byte forms everything signs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import rfc8785

from exchange.errors import InputError

MAX_JSON_DEPTH = 32


_SAFE_INT = 2**53 - 1
_SPACE = re.compile(r"\s")  # str.isspace(), in C: the same characters


def _plain_items(items: Iterable[Any]) -> bool:
    """``_plain`` for the items of a container, with scalars checked inline (most
    documents are flat objects of strings and integers, and this runs for every document
    signed or logged)."""
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -_SAFE_INT <= item <= _SAFE_INT:
                return False
        elif not _plain(item):
            return False
    return True


def _plain(value: Any) -> bool:
    """True when ``json.dumps`` already writes the JCS bytes of ``value``: integers inside
    JCS's domain; floats only where Python's shortest repr is ECMAScript's (finite, not
    integral, 1e-4 <= |x| < 1e16: no exponent either way); ASCII keys (so code point order
    is UTF-16 order); and only the exact JSON container and scalar types."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and k.isascii() for k in value) and _plain_items(value.values())
    if kind is list or kind is tuple:
        return _plain_items(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is float:
        return bool(math.isfinite(value) and 1e-4 <= abs(value) < 1e16 and not value.is_integer())
    return False


# json.dumps builds a new encoder per call unless every option is the default; build ours once.
_JCS_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
# And JSONEncoder.encode builds a new C encoder per call (iterencode): build that once too,
# with the arguments iterencode passes for _JCS_ENCODER, minus the circular-reference
# markers (a value only reaches it after _plain walked it, which a cycle never survives).
_C_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
if _C_MAKE_ENCODER is not None:
    _C_JCS = _C_MAKE_ENCODER(
        None,
        _JCS_ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        True,
        False,
        True,
    )

    def _encode_plain(value: Any) -> str:
        return "".join(_C_JCS(value, 0))

else:  # pragma: no cover  (an interpreter without the C accelerator)

    def _encode_plain(value: Any) -> str:
        return _JCS_ENCODER.encode(value)


_FLOAT_INTS = 2.0**53


def _integral_floats_as_ints(value: Any) -> Any:
    """``value`` with every integral float of magnitude below 2^53 as the int it equals
    (JCS writes 25.0 as ``25`` and -0.0 as ``0``, which is how json writes those ints);
    ``value`` itself when it holds none, so a value non-plain for another reason is not
    copied."""
    kind = type(value)
    if kind is float:
        if value.is_integer() and -_FLOAT_INTS < value < _FLOAT_INTS:
            return int(value)
        return value
    if kind is dict:
        items = {k: _integral_floats_as_ints(v) for k, v in value.items()}
        same = all(items[k] is v for k, v in value.items())
        return value if same else items
    if kind is list or kind is tuple:
        converted = [_integral_floats_as_ints(v) for v in value]
        return value if all(a is b for a, b in zip(converted, value, strict=True)) else converted
    return value


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) canonical bytes of a JSON value.

    Values ``_plain`` accepts go through the C JSON encoder, whose escaping of strings is
    the one JCS prescribes (tests compare it with ``rfc8785`` on generated values), and so
    do values that are plain once their integral floats are written as ints (a rounded
    coordinate); every other value, and any value the fast path cannot encode, goes
    through ``rfc8785``."""
    if not _plain(value):
        converted = _integral_floats_as_ints(value)
        if converted is not value and _plain(converted):
            value = converted
    if _plain(value):
        try:
            return _encode_plain(value).encode("utf-8")
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


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode`` without its two Python
    layers: this runs for every salt, disclosure and digest an SD-JWT holds)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


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


def b64_decode(text: object, *, what: str) -> bytes:
    """Strict standard base64. ``text`` comes from parsed JSON: anything but a string
    (a number, null, a list) is refused like bad base64, never an AttributeError."""
    if not isinstance(text, str):
        raise InputError(f"{what}: not standard base64 (a {type(text).__name__})")
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


class _NotPlain(Exception):
    """A float or an integer outside JCS's safe domain: the exact (slow) path decides."""


def _plain_int(text: str) -> int:
    value = int(text)
    if len(text) > 15 and not -_SAFE_INT <= value <= _SAFE_INT:
        raise _NotPlain
    return value


def _not_plain(_text: str) -> Any:
    raise _NotPlain


_PLAIN_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_not_plain, parse_int=_plain_int
)
# The C scanner the decoder wraps (set in JSONDecoder.__init__; typeshed does not declare
# it): one value from an index, without decode()'s two Python-level whitespace passes.
_PLAIN_SCAN: Callable[[str, int], tuple[Any, int]] = _PLAIN_DECODER.scan_once  # type: ignore[attr-defined]


def parse_canonical_json_unverified(data: bytes, *, what: str, max_bytes: int) -> Any:
    """``parse_json_unverified(data)``, refusing bytes that are not exactly
    ``canonical_json`` of the value: the check every signed document needs, in one step.

    Fast path: for ASCII bytes without floats or large integers, the encoder's output for
    the parsed value is its JCS form (ASCII keys sort alike in code points and UTF-16; the
    encoder escapes as JCS does), so the bytes are canonical exactly when re-encoding gives
    them back: a duplicate key, an escape JCS would not write or a non-canonical number
    cannot survive that round trip. Anything else takes the exact path (``rfc8785``)."""
    not_canonical = InputError(f"{what}: bytes are not canonical JSON (RFC 8785)")
    if len(data) <= max_bytes and data.isascii() and b"\x00" not in data:
        text = data.decode("ascii")
        try:
            value, end = _PLAIN_SCAN(text, 0)
        except (_NotPlain, ValueError, RecursionError, InputError, StopIteration):
            pass  # the exact path gives the precise error, or handles the float
        else:
            if end == len(text):  # else trailing bytes: the exact path names them
                if data.count(b"{") + data.count(b"[") > MAX_JSON_DEPTH:
                    _depth(value, MAX_JSON_DEPTH)
                try:
                    again = _encode_plain(value).encode("utf-8")
                except ValueError:  # a lone surrogate from an escape: never canonical
                    raise not_canonical from None
                if again != data:
                    raise not_canonical
                return value
    value = parse_json_unverified(data, what=what, max_bytes=max_bytes)
    if canonical_json(value) != data:
        raise not_canonical
    return value
