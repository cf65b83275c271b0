"""Domain values that services return and the wire converter (``node.rpc.wire``) turns into
messages. They live apart from the services so that the converter imports values only, never
a service (docs/adr/0025-package-layout.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from exchange.ack import Acknowledgement
from exchange.policy import ReleaseDecision


@dataclass(frozen=True)
class ExpiryWarning:
    peer: str
    subject: str  # OUR_ENCRYPTION_KEY, THEIR_ENCRYPTION_KEY or AGREEMENT
    not_after: datetime
    expired: bool

    def days_left(self, now: datetime) -> int:
        return max(0, (self.not_after - now) // timedelta(days=1))


@dataclass(frozen=True)
class Release:
    peer: str
    decision: ReleaseDecision
    envelope_id: str | None
    seq: int | None


@dataclass(frozen=True)
class Submitted:
    report_id: str
    version: int
    releases: tuple[Release, ...]


@dataclass(frozen=True)
class AckSent:
    peer: str
    ack_envelope_id: str
    seq: int
    ack: Acknowledgement


@dataclass(frozen=True)
class AckRecord:
    """An acknowledgement as this node holds it: sent by us, or received from the partner."""

    direction: str  # "sent" | "received"
    peer: str
    ack_envelope_id: str
    ack: Acknowledgement
    digest: str
