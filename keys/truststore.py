"""The partner trust store: which partner nodes we trust, pinned by fingerprint.

A partner enters only with a verified card chain whose latest identity key matches the
fingerprint the officer read out of band (or, explicitly, trust on first use). Later
versions enter only as verified continuations of the stored chain. Storage is behind
``PeerRecords`` so the node's database holds the rows while the rules live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from exchange.card import (
    SignedCard,
    VerifiedChain,
    extend_chain,
    fingerprints_equal,
    verify_chain_bytes,
)
from exchange.errors import InputError, KeyringError, PeerDataError
from exchange.names import check_node_id
from exchange.revocation import Revocation, SignedRevocation, verify_revocation
from exchange.times import format_time, parse_time

TRUSTED = "trusted"
REVOKED = "revoked"

# A chain's verification depends on its bytes alone: the same stored bytes verify once,
# not on every call (trusted_chain runs per batch and per request).
_verified_chain_bytes = lru_cache(maxsize=64)(verify_chain_bytes)


@dataclass(frozen=True)
class PeerRecord:
    node: str
    chain: bytes
    fingerprint: str
    card_version: int
    status: str
    revoked_from: str | None
    tofu: bool
    added_at: str
    updated_at: str
    log_index: int | None = None  # the log entry that recorded this state (set by the node)


@dataclass(frozen=True)
class KeyRevocation:
    """A partner's verified statement that one of its identity keys is invalid from
    ``revoked_from`` (normalised RFC 3339 UTC) on; ``signed`` is kept as evidence."""

    identity_key: bytes
    revoked_from: str
    signed: SignedRevocation


class PeerRecords(Protocol):
    def get(self, node: str) -> PeerRecord | None: ...
    def put(self, record: PeerRecord) -> None: ...
    def delete(self, node: str) -> None: ...
    def all(self) -> list[PeerRecord]: ...
    def key_revocations(self, node: str) -> list[KeyRevocation]: ...
    def put_key_revocation(self, node: str, revocation: KeyRevocation) -> None: ...


@dataclass(frozen=True)
class AddResult:
    chain: VerifiedChain
    outcome: str  # "added", "updated" or "unchanged"


Attest = Callable[[PeerRecord], None]


class TrustStore:
    """``attest`` (optional) checks a stored record against independent evidence, e.g. the
    log entry that recorded it, and raises when they disagree (docs/THREATS.md I03)."""

    def __init__(self, records: PeerRecords, own_node: str, attest: Attest | None = None) -> None:
        self._records = records
        self._own = own_node
        self._attest = attest

    def add(
        self, chain_data: bytes, *, fingerprint: str | None, tofu: bool, now: datetime
    ) -> AddResult:
        """Verify ``chain_data`` and trust its node. Nothing is written unless every check
        passes. A new partner needs a matching fingerprint (or explicit trust on first use).
        Re-adding the same chain changes nothing; a longer chain that continues the stored
        one is an update (a rotation the trusted key signed) and needs no fingerprint."""
        chain = verify_chain_bytes(chain_data)
        latest = chain.latest
        existing = self._records.get(latest.node)
        if existing is None and fingerprint is None and not tofu:
            raise InputError(
                f"a fingerprint is required to trust a new partner ({latest.node})",
                next_step="Ask the partner to read out their fingerprint ('accord card show') "
                "and pass it with --fingerprint; --trust-on-first-use skips this check.",
            )
        if latest.node == self._own:
            raise InputError("this card is our own node's card; a node does not trust itself")
        if fingerprint is not None and not fingerprints_equal(fingerprint, latest.fingerprint):
            raise KeyringError(
                f"fingerprint mismatch for {latest.node}: the card's identity key has another "
                "fingerprint than the one given",
                code="keyring.fingerprint_mismatch",
                next_step="Do not trust this card. Check the fingerprint with the partner by "
                "a channel you trust, and the card file you received.",
            )
        stamp = format_time(now)
        if existing is None:
            outcome = "added"
            record = PeerRecord(
                node=latest.node,
                chain=chain.to_bytes(),
                fingerprint=latest.fingerprint,
                card_version=latest.version,
                status=TRUSTED,
                revoked_from=None,
                tofu=fingerprint is None,
                added_at=stamp,
                updated_at=stamp,
            )
        else:
            known = verify_chain_bytes(existing.chain)
            if chain.signed[: len(known.signed)] != known.signed:
                raise KeyringError(
                    f"card chain for {latest.node} conflicts with the one we trust "
                    f"(version {known.latest.version})",
                    code="keyring.chain_conflict",
                    next_step="Treat this as a possible impersonation: verify with the partner "
                    "out of band before removing the old card with 'accord peer remove'.",
                )
            if len(chain.signed) == len(known.signed):
                return AddResult(chain=known, outcome="unchanged")
            outcome = "updated"
            record = replace(
                existing,
                chain=chain.to_bytes(),
                fingerprint=latest.fingerprint,
                card_version=latest.version,
                updated_at=stamp,
            )
        self._records.put(record)
        return AddResult(chain=chain, outcome=outcome)

    def update(self, node: str, newer: Sequence[SignedCard], now: datetime) -> VerifiedChain | None:
        """Accept a partner's newer card versions (e.g. fetched with GetCard): each must
        continue the trusted chain, signed by the key it replaces. Returns the extended
        chain, or None when nothing was newer. Nothing is written unless all verify."""
        record = self._require(node)
        if record.revoked_from is not None and now >= parse_time(
            record.revoked_from, field="revoked_from"
        ):  # a revoked key cannot sign its way out by rotating (docs/THREATS.md P06)
            raise PeerDataError(f"node {node}'s key is revoked", code="peer.revoked")
        known = verify_chain_bytes(record.chain)
        fresh = [s for s in newer if s not in known.signed]
        if not fresh:
            return None
        chain = extend_chain(known, fresh)
        if chain.latest.node != node:
            raise KeyringError(
                f"card chain for {node} names another node", code="keyring.chain_conflict"
            )
        self._records.put(
            replace(
                record,
                chain=chain.to_bytes(),
                fingerprint=chain.latest.fingerprint,
                card_version=chain.latest.version,
                updated_at=format_time(now),
            )
        )
        return chain

    def get(self, node: str) -> PeerRecord:
        return self._require(node)

    def list(self) -> list[PeerRecord]:
        return sorted(self._records.all(), key=lambda r: r.node)

    def remove(self, node: str) -> PeerRecord:
        record = self._require(node)
        self._records.delete(node)
        return record

    def revoke(self, node: str, revoked_from: datetime, now: datetime) -> PeerRecord:
        """Refuse everything from ``node``'s current key from ``revoked_from`` on."""
        record = self._require(node)
        updated = replace(
            record,
            status=REVOKED,
            revoked_from=format_time(revoked_from),
            updated_at=format_time(now),
        )
        self._records.put(updated)
        return updated

    def apply_revocation(
        self, node: str, signed: SignedRevocation, now: datetime
    ) -> tuple[Revocation, PeerRecord] | None:
        """Verify a partner's signed revocation of one of its own keys against the chain we
        trust and keep it; None when it was already known. Revoking the chain's latest key
        revokes the partner from that time on (the earlier time wins), as ``revoke`` does.
        Nothing is written unless the statement verifies."""
        record = self._require(node)
        chain = _verified_chain_bytes(record.chain)
        revocation = verify_revocation(signed, chain)
        known = {r.identity_key for r in self._records.key_revocations(node)}
        if revocation.identity_key in known:
            return None
        revoked_from = parse_time(revocation.revoked_from, field="revoked_from")
        self._records.put_key_revocation(
            node, KeyRevocation(revocation.identity_key, format_time(revoked_from), signed)
        )
        if revocation.identity_key == chain.latest.identity_key:
            if record.revoked_from is not None:
                revoked_from = min(
                    revoked_from, parse_time(record.revoked_from, field="revoked_from")
                )
            record = self.revoke(node, revoked_from, now)
        return revocation, record

    def revoked_keys(self, node: str) -> dict[bytes, datetime]:
        """Each identity key of ``node`` revoked by a statement it signed, with the time
        from which the key is invalid."""
        return {
            r.identity_key: parse_time(r.revoked_from, field="revoked_from")
            for r in self._records.key_revocations(node)
        }

    def trusted_chain(self, node: str, at: datetime) -> VerifiedChain:
        """The verified chain of a partner we trust at time ``at``; raises otherwise."""
        record = self._records.get(check_node_id(node, field="peer"))
        if record is None:
            raise PeerDataError(f"node {node} is not a trusted partner", code="peer.unknown")
        if record.revoked_from is not None and at >= parse_time(
            record.revoked_from, field="revoked_from"
        ):
            raise PeerDataError(f"node {node}'s key is revoked", code="peer.revoked")
        chain = _verified_chain_bytes(record.chain)
        if self._attest is not None:
            self._attest(record)
        if chain.latest.node != node or not fingerprints_equal(
            chain.latest.fingerprint, record.fingerprint
        ):
            raise KeyringError(
                f"trust store entry for {node} does not match its card chain",
                code="keyring.tampered",
                next_step="The database may have been edited; run 'accord audit verify'.",
            )
        return chain

    def _require(self, node: str) -> PeerRecord:
        record = self._records.get(check_node_id(node, field="peer"))
        if record is None:
            raise InputError(
                f"no partner {node} in the trust store",
                code="peer.unknown",
                next_step="List partners with 'accord peer list'.",
            )
        return record
