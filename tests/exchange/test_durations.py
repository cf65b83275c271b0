"""ISO 8601 durations for response rules (docs/adr/0020): parse, canonical form, bounds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.errors import InputError
from exchange.times import (
    MAX_DURATION,
    MIN_DURATION,
    format_duration,
    is_canonical_duration,
    parse_duration,
)

IN_RANGE = st.integers(min_value=1, max_value=int(MAX_DURATION.total_seconds())).map(
    lambda s: timedelta(seconds=s)
)


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("PT15M", timedelta(minutes=15), "PT15M"),
        ("PT24H", timedelta(hours=24), "P1D"),
        ("PT90M", timedelta(minutes=90), "PT1H30M"),
        ("P1W", timedelta(days=7), "P7D"),
        ("P1DT0H", timedelta(days=1), "P1D"),
        ("P1DT12H", timedelta(days=1, hours=12), "P1DT12H"),
        ("PT1H2M3S", timedelta(hours=1, minutes=2, seconds=3), "PT1H2M3S"),
        ("PT1S", MIN_DURATION, "PT1S"),
        ("P90D", MAX_DURATION, "P90D"),
        ("PT0H15M", timedelta(minutes=15), "PT15M"),
        ("P012D", timedelta(days=12), "P12D"),
    ],
)
def test_valid_spellings_and_their_canonical_form(
    text: str, value: timedelta, canonical: str
) -> None:
    assert parse_duration(text, field="x") == value
    assert format_duration(value) == canonical
    assert is_canonical_duration(canonical)
    assert is_canonical_duration(text) == (text == canonical)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("P", "alone is empty"),
        ("PT", "alone is empty"),
        ("P1Y", "years and months"),
        ("P1M", "years and months"),
        ("P1M2D", "years and months"),
        ("P1YT1H", "years and months"),
        ("PT1.5S", "whole numbers"),
        ("PT0,5H", "whole numbers"),
        ("PT0S", "1 second"),
        ("P0D", "1 second"),
        ("P91D", "90 days"),
        ("PT2161H", "90 days"),
        ("P13W", "90 days"),
        ("P1DT", "ISO 8601 duration"),
        ("pt15m", "ISO 8601 duration"),
        ("15M", "ISO 8601 duration"),
        ("PT15M ", "ISO 8601 duration"),
        ("-PT15M", "ISO 8601 duration"),
        ("P1W1D", "ISO 8601 duration"),
        ("PT1M1H", "ISO 8601 duration"),
        ("PT1234567890S", "ISO 8601 duration"),
        ("", "ISO 8601 duration"),
    ],
)
def test_invalid_durations_name_the_field_and_the_reason(text: str, says: str) -> None:
    with pytest.raises(InputError) as info:
        parse_duration(text, field="response.x.acknowledge")
    assert info.value.message.startswith("response.x.acknowledge")
    assert says in info.value.message


@pytest.mark.parametrize("value", [None, 15, 1.5, ["PT1M"], b"PT1M"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InputError, match="acknowledge"):
        parse_duration(value, field="acknowledge")


def test_format_refuses_what_no_duration_can_be() -> None:
    for value in (timedelta(0), timedelta(seconds=-1), timedelta(milliseconds=1500)):
        with pytest.raises(ValueError, match="positive whole number"):
            format_duration(value)


@given(IN_RANGE)
def test_format_then_parse_round_trips(value: timedelta) -> None:
    text = format_duration(value)
    assert parse_duration(text, field="x") == value
    assert is_canonical_duration(text)


@given(
    st.integers(0, 90),
    st.integers(0, 2160),
    st.integers(0, 10_000),
    st.integers(0, 100_000),
    st.booleans(),
)
def test_any_spelling_parses_to_its_sum_and_canonicalises_uniquely(
    days: int, hours: int, minutes: int, seconds: int, with_days: bool
) -> None:
    date = f"{days}D" if with_days else ""
    text = f"P{date}T{hours}H{minutes}M{seconds}S"
    value = timedelta(days=days if with_days else 0, hours=hours, minutes=minutes, seconds=seconds)
    if not MIN_DURATION <= value <= MAX_DURATION:
        with pytest.raises(InputError):
            parse_duration(text, field="x")
        return
    parsed = parse_duration(text, field="x")
    assert parsed == value
    assert parse_duration(format_duration(parsed), field="x") == parsed
