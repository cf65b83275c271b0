"""Event attributes: bounded scalars, lists of them, one level of name -> scalar maps, and an
error naming the attribute for anything else (exchange/events.py). The quick test of the
common case must accept exactly what the exact checks accept."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.errors import InputError
from exchange.events import MAX_ITEMS, MAX_STRING, _check_attr, _check_attr_exactly, event_bytes

AT = "2026-12-02T06:00:00Z"


class Kind(enum.StrEnum):
    A = "a"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("x" * (MAX_STRING + 1), "peer: string longer than 512"),
        (2**63, "peer: integer out of range"),
        (-(2**63) - 1, "peer: integer out of range"),
        (1.5, "peer: float is not allowed"),
        ([1, 2.5], "peer: float is not allowed"),
        ([["nested"]], "peer: list is not allowed"),
        (["x"] * (MAX_ITEMS + 1), "peer: more than 1024 items"),
        ({"k": {"deeper": 1}}, "peer.k: dict is not allowed"),
        ({"k": "x" * (MAX_STRING + 1)}, "peer.k: string longer than 512"),
        ({1.5: "x"}, "peer: float is not allowed"),
        (b"bytes", "peer: bytes is not allowed"),
    ],
)
def test_a_value_outside_the_rules_is_refused_naming_the_attribute(value: Any, said: str) -> None:
    with pytest.raises(InputError) as raised:
        event_bytes("release.decided", 0, AT, {"peer": value})
    assert said in raised.value.message


def test_allowed_values_are_logged() -> None:
    data = event_bytes(
        "release.decided",
        3,
        AT,
        {"peer": Kind.A, "n": 2**53 - 1, "ok": True, "none": None, "l": ["a", 1], "m": {"a": 1}},
    )
    assert data.startswith(b'{"at":"2026-12-02T06:00:00Z"')


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=3)
    | st.just("x" * MAX_STRING)
    | st.just("x" * (MAX_STRING + 1))
    | st.floats(allow_nan=False)
    | st.sampled_from([Kind.A])
)
values = (
    scalars
    | st.lists(scalars | st.lists(scalars, max_size=2), max_size=4)
    | st.dictionaries(
        scalars.filter(lambda k: k is not None), scalars | st.lists(scalars), max_size=3
    )
)


@settings(max_examples=500, deadline=None)
@given(value=values)
def test_the_quick_test_accepts_exactly_what_the_exact_checks_accept(value: Any) -> None:
    def verdict(check: Any) -> str:
        try:
            check("peer", value)
        except InputError as e:
            return e.message
        return "ok"

    assert verdict(_check_attr) == verdict(_check_attr_exactly)
