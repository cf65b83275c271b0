"""Identifiers the node mints: UUIDv7 (RFC 9562), time-ordered, 74 random bits."""

from __future__ import annotations

import os
import time
import uuid


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62
    value |= rand & (2**62 - 1)  # 62 bits rand_b
    return str(uuid.UUID(int=value))
