"""Timestamps in documents: RFC 3339, UTC, whole seconds, ``Z`` suffix; and ISO 8601
durations (``PT15M``) for the response rules of an agreement. No clock here."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final

from exchange.errors import InputError

_RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def format_time(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return _format_utc(when)


@lru_cache(maxsize=1024)
def _format_utc(when: datetime) -> str:
    """Every event of a batch carries the same time: format it once. (Aware datetimes that
    are the same instant hash and compare equal, and format to the same UTC text.)"""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def _parse_z(text: str) -> datetime:
    """strptime is slow and the same few times (validity ends, batch times) recur."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def parse_time(text: object, *, field: str) -> datetime:
    if not isinstance(text, str) or _RFC3339_Z.fullmatch(text) is None:
        raise InputError(f"{field} is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z")
    try:
        return _parse_z(text)
    except ValueError as e:
        raise InputError(f"{field} is not a valid calendar time") from e


# ---- durations (ISO 8601) -------------------------------------------------------------------

MIN_DURATION: Final = timedelta(seconds=1)
MAX_DURATION: Final = timedelta(days=90)
_MAX_DURATION_CHARS: Final = 40
_DURATION_RE: Final = re.compile(
    r"P(?:(?P<weeks>[0-9]{1,9})W"
    r"|(?:(?P<days>[0-9]{1,9})D)?"
    r"(?:T(?=[0-9])(?:(?P<hours>[0-9]{1,9})H)?(?:(?P<minutes>[0-9]{1,9})M)?"
    r"(?:(?P<seconds>[0-9]{1,9})S)?)?)"
)


def parse_duration(text: object, *, field: str) -> timedelta:
    """An ISO 8601 duration ``P[nD][T[nH][nM][nS]]`` or ``PnW``, whole numbers only, from
    1 second to 90 days. A day is exactly 24 hours and a week 7 days (deadlines are counted
    in UTC; no calendar). Years and months are refused: they have no fixed length.

    Raises ``InputError`` naming ``field``. Accepts any valid spelling (``PT90M``,
    ``PT1H30M``); ``format_duration`` gives the one canonical form.
    """
    hint = "an ISO 8601 duration like PT15M, PT24H or P2D"
    if not isinstance(text, str) or not text or len(text) > _MAX_DURATION_CHARS:
        raise InputError(f"{field} must be {hint}")
    if text in ("P", "PT"):
        raise InputError(f"{field}: names no amount of time ({hint}; '{text}' alone is empty)")
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        head = text.split("T", 1)[0]
        if text.startswith("P") and ("Y" in head or "M" in head):
            raise InputError(
                f"{field}: years and months have no fixed length; write days "
                "(P30D) or hours (PT12H)"
            )
        if "." in text or "," in text:
            raise InputError(f"{field}: a duration takes whole numbers only ({hint})")
        raise InputError(f"{field} must be {hint}")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if not parts:  # unreachable: the pattern needs a part after P and after T; kept as a guard
        raise InputError(f"{field}: names no amount of time ({hint})")
    value = timedelta(
        weeks=parts.get("weeks", 0),
        days=parts.get("days", 0),
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
    )
    if not MIN_DURATION <= value <= MAX_DURATION:
        raise InputError(f"{field} must be from 1 second (PT1S) to 90 days (P90D)")
    return value


def format_duration(value: timedelta) -> str:
    """The canonical form: days, hours, minutes and seconds, each below the next unit
    (a day is 24 hours), zero parts left out, no weeks: ``PT15M``, ``P1D``, ``P1DT12H``.
    Raises ``ValueError`` for a value that is not whole seconds or not positive."""
    if value.microseconds or value <= timedelta(0):
        raise ValueError("a duration must be a positive whole number of seconds")
    days, rest = value.days, value.seconds
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    date = f"{days}D" if days else ""
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return f"P{date}" + (f"T{time}" if time else "")


def is_canonical_duration(text: object) -> bool:
    """True when ``text`` is a valid duration written in its canonical form."""
    try:
        return format_duration(parse_duration(text, field="duration")) == text
    except (InputError, ValueError):
        return False
