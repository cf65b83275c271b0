"""Identifiers the node mints: UUIDv7 (RFC 9562), time-ordered, 74 random bits; and
abbreviated ids resolved as git does."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

from exchange.errors import InputError


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62
    value |= rand & (2**62 - 1)  # 62 bits rand_b
    return str(uuid.UUID(int=value))


MIN_PREFIX = 4
_ID_CHARS = frozenset("0123456789abcdef-")


def resolve_prefix(candidates: Callable[[str, str], list[str]], given: str, what: str) -> str:
    """The one full id that starts with ``given`` (or ``given`` itself when it is a whole
    UUID), as git resolves abbreviated commit ids. ``candidates(low, high)`` returns up to
    two stored ids in ``[low, high)``."""
    text = given.strip().lower()
    if len(text) < MIN_PREFIX or not set(text) <= _ID_CHARS:
        raise InputError(
            f"{what} id {given!r} is not an id or a prefix of at least {MIN_PREFIX} characters",
            code="input.bad_id",
            next_step="Give the id as listed, or its first characters.",
        )
    if len(text) == 36:
        return text
    found = candidates(text, text + "g")  # 'g' sorts after every id character
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(
            f"no {what} starts with {text}",
            code=f"{what}.unknown",
            next_step="List them ('accord inbox list', 'accord report list').",
        )
    raise InputError(
        f"{text} is ambiguous: more than one {what} starts with it ({', '.join(found)}, ...)",
        code="input.ambiguous_id",
        next_step="Give more characters of the id.",
    )
