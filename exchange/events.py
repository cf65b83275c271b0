"""Exchange-log events: the leaves of each node's transparency log (docs/DESIGN.md §9).

A leaf is the RFC 8785 canonical JSON of ``{"type": "accord.event/v1", "kind", "index",
"at", ...}``. ``index`` is the leaf's own position, so a deleted or inserted row is caught at
the entry itself. Events carry ids, digests, names and counts: **never a field value**.
Attribute values are bounded scalars, lists of them, or one level of name -> scalar maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exchange.canonical import canonical_json, parse_canonical_json_unverified
from exchange.errors import InputError, PeerDataError
from exchange.times import parse_time

EVENT_TYPE = "accord.event/v1"
KINDS = frozenset(
    {
        "node.created",
        "agreement.signed",
        "agreement.terminated",
        "peer.added",
        "peer.updated",
        "peer.removed",
        "peer.revoked",
        "peer.key_revoked",
        "key.rotated",
        "key.revoked",
        "policy.changed",
        "report.sealed",
        "report.retracted",
        "release.decided",
        "envelope.received",
        "envelope.rejected",
        "receipt.sent",
        "receipt.received",
        "checkpoint.cosigned",
        "feed.consumer_added",
        "feed.consumer_revoked",
        "feed.served",
        "ack.sent",
        "ack.received",
        "ack.overdue",
    }
)
MAX_EVENT_BYTES = 64 * 1024
MAX_STRING = 512
MAX_ITEMS = 1024
_RESERVED = frozenset({"type", "kind", "index", "at"})


@dataclass(frozen=True)
class Event:
    """A parsed log event. ``data`` are the exact leaf bytes."""

    kind: str
    index: int
    at: str
    attrs: dict[str, Any]
    data: bytes


def _check_scalar(value: object, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InputError(f"event attribute {where}: integer out of range")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise InputError(f"event attribute {where}: string longer than {MAX_STRING}")
        return
    raise InputError(f"event attribute {where}: {type(value).__name__} is not allowed")


_INT_RANGE = range(-(2**63), 2**63)


def _fine(value: object) -> bool:
    """The common scalar, checked without a call per check: a short str, an int in range,
    a bool or null (a subclass of str or int takes the exact path in ``_check_scalar``)."""
    kind = type(value)
    if kind is str:
        return len(value) <= MAX_STRING  # type: ignore[arg-type]
    return (kind is int and value in _INT_RANGE) or kind is bool or value is None


def _check_attr(name: str, value: object) -> None:
    """Raise InputError naming the attribute unless ``value`` is an allowed event value.
    Most events pass the quick test; anything else takes the exact checks and messages."""
    if type(value) is list:
        if len(value) <= MAX_ITEMS and all(_fine(v) for v in value):
            return
    elif type(value) is dict:
        if len(value) <= MAX_ITEMS and all(_fine(k) and _fine(v) for k, v in value.items()):
            return
    elif _fine(value):
        return
    _check_attr_exactly(name, value)


def _check_attr_exactly(name: str, value: object) -> None:
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise InputError(f"event attribute {name}: more than {MAX_ITEMS} items")
        for item in value:
            _check_scalar(item, name)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise InputError(f"event attribute {name}: more than {MAX_ITEMS} entries")
        for key, item in value.items():
            _check_scalar(key, name)
            _check_scalar(item, f"{name}.{key}")
    else:
        _check_scalar(value, name)


def event_bytes(kind: str, index: int, at: str, attrs: Mapping[str, object]) -> bytes:
    """The canonical leaf bytes of one event."""
    if kind not in KINDS:
        raise InputError(f"unknown log event kind {kind!r}")
    if _RESERVED & set(attrs):
        raise InputError(f"event attributes may not redefine {sorted(_RESERVED & set(attrs))}")
    for name, value in attrs.items():
        _check_attr(name, value)
    parse_time(at, field="event at")
    data = canonical_json({"type": EVENT_TYPE, "kind": kind, "index": index, "at": at, **attrs})
    if len(data) > MAX_EVENT_BYTES:
        raise InputError(f"log event is larger than {MAX_EVENT_BYTES} bytes")
    return data


def parse_event_unverified(data: bytes) -> Event:
    """Parse leaf bytes strictly: canonical JSON, the event type, a known kind."""
    try:
        doc = parse_canonical_json_unverified(data, what="log event", max_bytes=MAX_EVENT_BYTES)
    except InputError as e:
        raise PeerDataError(e.message, code="log.bad_event") from e
    if not isinstance(doc, dict) or doc.get("type") != EVENT_TYPE:
        raise PeerDataError(f"log event is not an {EVENT_TYPE} object", code="log.bad_event")
    kind, index, at = doc.get("kind"), doc.get("index"), doc.get("at")
    if not isinstance(kind, str) or kind not in KINDS:  # a list or object is not hashable
        raise PeerDataError("log event has an unknown kind", code="log.bad_event")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise PeerDataError("log event has no valid index", code="log.bad_event")
    try:
        parse_time(at, field="log event at")
    except InputError as e:
        raise PeerDataError(e.message, code="log.bad_event") from e
    attrs = {k: v for k, v in doc.items() if k not in _RESERVED}
    return Event(kind=str(kind), index=index, at=str(at), attrs=attrs, data=data)
