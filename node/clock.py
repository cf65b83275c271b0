"""The one place the node reads the wall clock; everything below receives ``now``."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def precise() -> datetime:
    """Now with milliseconds (the TAXII feed's ``date_added``)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
