"""Validation of identifiers that end up in file names, paths, URIs and log origins."""

from __future__ import annotations

import re

from exchange.errors import InputError

NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,30}[a-z0-9]")
MAX_NAME_LEN = 200


def check_node_id(value: object, *, field: str = "node id") -> str:
    """A node id: ``^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$`` (ASCII only, 3 to 32 characters)."""
    if not isinstance(value, str) or NODE_ID_RE.fullmatch(value) is None:
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise InputError(
            f"{field} {shown} is not a valid node id: 3-32 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit",
            next_step="Choose an id such as 'pk-moi' or 'cn-mps'.",
        )
    return value


def check_display_name(value: object, *, field: str = "name") -> str:
    """A human display name: printable, no control or bidi characters, at most 200 chars."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{field} must be a non-empty string")
    if len(value) > MAX_NAME_LEN:
        raise InputError(f"{field} is {len(value)} characters long; the limit is {MAX_NAME_LEN}")
    for ch in value:
        if not ch.isprintable() or ch in _BIDI:
            raise InputError(f"{field} contains a control or bidirectional character {ch!r}")
    return value


_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c")


def check_endpoint(value: object, *, field: str = "endpoint") -> str:
    """``HOST:PORT`` with a DNS name or IP address and a port 1-65535."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string")
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    ok = bool(
        sep == ":"
        and host
        and len(value) <= 260
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) < 65536
        and all(c.isalnum() or c in ".-:" for c in host)
        and host.isascii()
    )
    if not ok:
        raise InputError(
            f"{field} {value[:80]!r} is not HOST:PORT",
            next_step="Give the address partners dial, e.g. 'moi.example.pk:7443' "
            "or '127.0.0.1:7443'.",
        )
    return value
