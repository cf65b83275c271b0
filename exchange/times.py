"""Timestamps in documents: RFC 3339, UTC, whole seconds, ``Z`` suffix. No clock here."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

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
