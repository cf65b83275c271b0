"""Keys that look after themselves while the node serves (docs/adr/0017).

Two duties, both driven by the injected clock:

- **unattended epochs**: when the newest encryption key of a suite has less than half an
  epoch left (``keys.keyring.RENEW_BEFORE``), the node starts the next epoch and publishes
  the new card version; partners learn it over GetCard as for any rotation, and private
  keys retired longer than the retention are destroyed in the same step;
- **node certificate**: a new one from the same CA a month before the old one ends (the
  card does not change);
- **expiry warnings**: per partner, what ends within the warning horizon (our encryption
  key for the agreement's suite, theirs, the agreement itself), for ``accord status`` and
  as one structured log line per warning in ``serve`` (names and times, never values).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from exchange.card import Card
from exchange.errors import AccordError
from exchange.times import format_time, parse_time
from node import clock
from node.home import Node
from node.logsetup import failure_level
from node.values import ExpiryWarning

log = structlog.get_logger("accord.keys")

WARN_DAYS = 14
CHECK_SECONDS = 300.0

# What a warning is about (stable names: they appear in status --json and the log).
OUR_ENCRYPTION_KEY = "our_encryption_key"
THEIR_ENCRYPTION_KEY = "their_encryption_key"
AGREEMENT = "agreement"


def _newest_key_end(card: Card, suite: str | None) -> datetime | None:
    ends = [
        parse_time(k.not_after, field="not_after")
        for k in card.encryption_keys
        if suite is None or k.suite == suite
    ]
    return max(ends) if ends else None


def expiry_warnings(node: Node, now: datetime, days: int = WARN_DAYS) -> list[ExpiryWarning]:
    """Per trusted, unrevoked partner: our newest encryption key of the agreement's suite,
    theirs, and the agreement, each when it ends within ``days`` of ``now`` (or ended).
    A partner without a current agreement gets no key warnings (nothing is exchanged)."""
    from node.services.agreements import current_agreement

    horizon = now + timedelta(days=days)
    ours = node.own_chain().latest
    out: list[ExpiryWarning] = []
    for record in node.trust_store().list():
        if record.revoked_from is not None:
            continue
        try:
            theirs = node.trust_store().trusted_chain(record.node, now).latest
            agreement = current_agreement(node, record.node, now)
        except AccordError:
            continue  # refused elsewhere, with its own code in status
        if agreement is None:
            continue
        suite = agreement.agreement.suite
        ends = [
            (OUR_ENCRYPTION_KEY, _newest_key_end(ours, suite)),
            (THEIR_ENCRYPTION_KEY, _newest_key_end(theirs, suite)),
            (AGREEMENT, parse_time(agreement.agreement.not_after, field="not_after")),
        ]
        for subject, end in ends:
            if end is None:  # no key of that suite at all: as good as expired
                out.append(ExpiryWarning(record.node, subject, now, True))
            elif end <= horizon:
                out.append(ExpiryWarning(record.node, subject, end, end <= now))
    return out


class KeyWatch:
    """The serving node's key schedule: renew due epochs, log expiry warnings. ``checks``
    counts completed checks (tests step the clock and wait for the next one)."""

    def __init__(
        self,
        node: Node,
        *,
        now: Callable[[], datetime] = clock.now,
        interval: float = CHECK_SECONDS,
        warn_days: int = WARN_DAYS,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._node = node
        self._on_change = on_change
        self._now = now
        self._interval = interval
        self._warn_days = warn_days
        self._warned: set[tuple[str, str, datetime]] = set()
        self.checks = 0

    def check(self) -> list[ExpiryWarning]:
        """One pass: renew what is due, log new warnings; returns the warnings it logged."""
        now = self._now()
        chain = self._node.renew_encryption_epochs(now)
        renewed = self._node.renew_tls_certificate(now)
        if (chain is not None or renewed) and self._on_change is not None:
            self._on_change()
        if renewed:
            log.info("key.certificate_renewed", node=self._node.config.node)
        if chain is not None:
            latest = chain.latest
            log.info(
                "key.epoch_started",
                node=self._node.config.node,
                card_version=latest.version,
                count=len(latest.encryption_keys),
            )
        logged = []
        for w in expiry_warnings(self._node, now, self._warn_days):
            key = (w.peer, w.subject, w.not_after)
            if key in self._warned:
                continue
            self._warned.add(key)
            logged.append(w)
            log.warning(
                "key.expiry_warning",
                peer=w.peer,
                subject=w.subject,
                not_after=format_time(w.not_after),
                expired=w.expired,
                days_left=w.days_left(now),
            )
        return logged

    async def run(self) -> None:
        while True:
            try:
                self.check()
            except AccordError as e:  # keep serving; the next check tries again
                getattr(log, failure_level(e))("key.schedule_failed", code=e.code)
            except Exception as e:  # log the type only: never key material or values
                log.error("key.schedule_failed", error=type(e).__name__)
            self.checks += 1
            await asyncio.sleep(self._interval)
