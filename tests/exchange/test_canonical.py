"""canonical_json writes exactly what the rfc8785 reference writes, fast path or not."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.canonical import (
    b64url,
    canonical_json,
    parse_canonical_json_unverified,
    parse_json_unverified,
)
from exchange.errors import InputError

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) - 4, max_value=2**53 + 4)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7F))
)
_keys = st.text() | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(_keys, inner, max_size=5)
    ),
    max_leaves=30,
)


def _reference(value: Any) -> bytes | type[Exception]:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        return InputError


@settings(max_examples=600)
@given(_values)
def test_matches_rfc8785(value: Any) -> None:
    expected = _reference(value)
    if expected is InputError:
        with pytest.raises(InputError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@settings(max_examples=3000)
@given(st.floats(allow_nan=False, allow_infinity=False) | st.floats(min_value=1e-5, max_value=1e17))
def test_floats_match_rfc8785(value: float) -> None:
    assert canonical_json({"lat": value, "v": [value, -value]}) == rfc8785.dumps(
        {"lat": value, "v": [value, -value]}
    )


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\ufb01": 2, "a": 3},  # UTF-16 order differs from code point order
        {"k": "\ud800"},  # a lone surrogate is not UTF-8
        {"k": 2**53},  # outside JCS's integer domain
        {"k": [1.0, 1e21, -0.0, 5e-7]},  # ECMAScript number formatting
        # Integral floats written as ints by the fast path (a rounded coordinate), and
        # the ones it leaves to rfc8785 (2^53 and beyond).
        {"loc": {"lat": 25.0, "lon": -0.0}, "v": [9007199254740991.0, 2.5, "é"]},
        {"k": [9007199254740992.0, 1e20, -1e16, 3.0]},
        [25.0, {"\U0001f600": 1.0}],
        {"k": [1e-4, 9.999999999999999e15, 1e16, 0.30000000000000004, 25.1264, 1e-4 * 0.99]},
        {"k": '\x00\x1f\x7f"\\\b\f\n\r\t\u2028'},
        {1: "non-string key"},
    ],
)
def test_edge_cases_match_rfc8785(value: Any) -> None:
    expected = _reference(value)
    if expected is InputError:
        with pytest.raises(InputError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


def test_b64url_decode_refuses_every_whitespace_character() -> None:
    from exchange.canonical import b64url_decode

    for code in range(0x110000):
        if chr(code).isspace():
            with pytest.raises(InputError):
                b64url_decode("AA" + chr(code) + "AA", what="x")
    assert b64url_decode("AAAA", what="x") == b"\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xef\xbb\xbf{}", "malformed JSON at line 1 column 1"),
        (b"[" * 34 + b"]" * 34, "nested deeper than 32 levels"),
        (b'{"a":1,"a":2}', "duplicate key"),
    ],
)
def test_parse_json_unverified_refusals(data: bytes, message: str) -> None:
    from exchange.canonical import parse_json_unverified

    with pytest.raises(InputError, match=message):
        parse_json_unverified(data, what="x", max_bytes=1000)
    assert parse_json_unverified(b'{"k":"[[[["}', what="x", max_bytes=1000) == {"k": "[[[["}


# ---- parse_canonical_json_unverified: the fast round trip agrees with the exact path ----------


def _exact(data: bytes) -> Any:
    """The reference: strict parse, then re-encode with rfc8785 and compare."""
    try:
        value = parse_json_unverified(data, what="x", max_bytes=1 << 20)
        if rfc8785.dumps(value) != data:
            return InputError
        return value
    except (InputError, rfc8785.CanonicalizationError, TypeError, ValueError):
        return InputError


def _fast(data: bytes) -> Any:
    try:
        return parse_canonical_json_unverified(data, what="x", max_bytes=1 << 20)
    except InputError:
        return InputError


def _renderings(value: Any) -> list[bytes]:
    """The canonical bytes and the usual ways to write the same value otherwise."""
    out = []
    reference = _reference(value)
    if isinstance(reference, bytes):
        out.append(reference)
    for kwargs in (
        {"separators": (",", ":"), "ensure_ascii": True, "sort_keys": True},
        {"separators": (", ", ": "), "ensure_ascii": False, "sort_keys": True},
        {"separators": (",", ":"), "ensure_ascii": False, "sort_keys": False},
    ):
        with contextlib.suppress(TypeError, ValueError):
            out.append(json.dumps(value, **kwargs).encode("utf-8"))  # type: ignore[arg-type]
    return out


@settings(max_examples=400)
@given(_values)
def test_canonical_parse_agrees_with_the_exact_path(value: Any) -> None:
    for data in _renderings(value):
        assert _fast(data) == _exact(data), data


@settings(max_examples=400)
@given(_values, st.integers(min_value=0), st.binary(min_size=1, max_size=3))
def test_canonical_parse_agrees_on_edited_bytes(value: Any, at: int, insert: bytes) -> None:
    for data in _renderings(value):
        i = at % (len(data) + 1)
        for edited in (data[:i] + insert + data[i:], data[:i] + data[i + 1 :]):
            fast, exact = _fast(edited), _exact(edited)
            assert (fast is InputError) == (exact is InputError), edited


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":1}',  # duplicate key
        b'{"a":1} ',  # trailing space
        b' {"a":1}',
        b'{"a":"\\u0041"}',  # an escape JCS does not write
        b'{"a":"\\/"}',
        b'{"a":"\\ud800"}',  # lone surrogate
        b'{"a":1.0}',  # integral float
        b'{"a":1e2}',
        b'{"a":-0}',
        b'{"a":9007199254740993}',  # beyond the safe integers
        b'{"a":NaN}',
        b'{"b":1,"a":2}',  # unsorted
        b'{"a":1}x',
        b'["a"]\x00',
    ],
)
def test_canonical_parse_refusals(data: bytes) -> None:
    assert _exact(data) is InputError
    with pytest.raises(InputError):
        parse_canonical_json_unverified(data, what="x", max_bytes=1 << 20)


def test_canonical_parse_accepts_floats_and_unicode_exactly() -> None:
    for value in ({"lat": 25.1264, "n": "é\u2028"}, [1, "x", None, True, {"k": -5}]):
        data = canonical_json(value)
        assert parse_canonical_json_unverified(data, what="x", max_bytes=1 << 20) == value


@given(st.binary(max_size=512))
def test_b64url_is_the_standard_library_one(data: bytes) -> None:
    assert b64url(data) == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
