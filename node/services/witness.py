"""Witnessing partners' logs (C2SP tlog-witness semantics, docs/DESIGN.md §9).

For each log it follows the witness holds the last (size, root) it cosigned, keyed by the
authenticated partner, the origin and the log key (ADR 0012, docs/THREATS.md P16): a partner
can only ever move the state kept for its own log. It cosigns a new
checkpoint only when the caller's ``old_size`` equals that size and the consistency proof
links the two; it persists the new view *before* returning the cosignature. Anything
else is a conflict answered with the size it holds; a checkpoint that contradicts what
it cosigned (same size, other root; or a failing proof) is kept as evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from exchange import merkle
from exchange.checkpoint import Checkpoint, log_origin, open_checkpoint
from exchange.cosignature import cosign_checkpoint
from exchange.crypto import Signer
from exchange.errors import AccordError, PeerDataError
from exchange.note import VerifierKey, parse_verifier_key
from exchange.times import format_time
from node.store import NodeStore


class WitnessConflict(PeerDataError):
    """The caller's view of our state is wrong: retry from ``held_size``."""

    code = "witness.conflict"

    def __init__(self, message: str, held_size: int):
        super().__init__(message, next_step=f"Send a consistency proof from size {held_size}.")
        self.held_size = held_size


class _Contradiction(Exception):
    def __init__(self, held: HeldView, reason: str) -> None:
        super().__init__(reason)
        self.held = held
        self.reason = reason


@dataclass(frozen=True)
class HeldView:
    size: int
    root: bytes
    note: bytes


class Witness:
    def __init__(self, store: NodeStore, signer: Signer, name: str) -> None:
        self.store = store
        self._signer = signer
        self.name = name

    def held(self, partner: str, origin: str, log_key: str) -> HeldView | None:
        row = self.store.witness.held(partner, origin, log_key)
        return None if row is None else HeldView(*row)

    def held_for(self, partner: str) -> HeldView | None:
        """The largest view held for ``partner``'s own log (``<partner>.accord/log``)."""
        row = self.store.witness.largest(partner, log_origin(partner))
        return None if row is None else HeldView(*row)

    def add_checkpoint(
        self,
        *,
        partner: str,
        origin: str,
        log_key: VerifierKey,
        old_size: int,
        proof: Sequence[bytes],
        note: bytes,
        now: datetime,
        revoked_log_keys: Mapping[str, datetime] | None = None,
    ) -> str:
        """Check and cosign ``note`` for the authenticated ``partner``, whose own log is
        ``origin`` under ``log_key``; returns the cosignature line (without newline).
        ``revoked_log_keys``: the partner's log keys it revoked (ADR 0018), verifier key
        -> from when; a checkpoint signed by one of them from that time is refused."""
        if origin != log_origin(partner) or log_key.name != origin:
            raise PeerDataError(
                f"{partner} may only submit checkpoints of its own log {log_origin(partner)}",
                code="card.origin_mismatch",
                next_step="Nothing was stored. The partner's card names another node's log.",
            )
        for vkey, revoked_from in (revoked_log_keys or {}).items():
            if now < revoked_from:
                continue
            try:
                open_checkpoint(note, [parse_verifier_key(vkey)], origin=origin)
            except AccordError:
                if vkey != _key_text(log_key):
                    continue
            raise PeerDataError(
                f"checkpoint of {origin} signed by a log key {partner} revoked from "
                f"{format_time(revoked_from)}",
                code="witness.revoked_log_key",
                next_step="Nothing was stored or cosigned. The partner's old log key is "
                "in someone else's hands: tell the partner.",
            )
        verified = open_checkpoint(note, [log_key], origin=origin)
        new = verified.checkpoint
        key = (partner, origin, _key_text(log_key))
        try:
            with self.store.transaction():
                self._check_and_hold(key, old_size, proof, note, verified.checkpoint, now)
        except _Contradiction as c:
            with self.store.transaction():
                self.store.witness.add_evidence(
                    origin, partner, c.held.size, c.held.note, note, c.reason, format_time(now)
                )
            raise PeerDataError(
                f"checkpoint {new.size} of {origin} is not consistent with the "
                f"checkpoint {c.held.size} this witness cosigned",
                code="witness.inconsistent",
                next_step="Both checkpoints were kept as evidence; the log was rewritten "
                "or shows a split view.",
            ) from None
        # Committed (durably) before the cosignature leaves this function.
        cosig = cosign_checkpoint(verified.text, self.name, self._signer, int(now.timestamp()))
        return cosig.line

    def _check_and_hold(
        self,
        key: tuple[str, str, str],
        old_size: int,
        proof: Sequence[bytes],
        note: bytes,
        new: Checkpoint,
        now: datetime,
    ) -> None:
        partner, origin, log_key = key
        # Origin continuity (ADR 0017): the first checkpoint under a partner's new log key
        # must extend what we cosigned under its earlier keys for the same origin.
        held = self.held(partner, origin, log_key) or self.held_for(partner)
        held_size = 0 if held is None else held.size
        if old_size != held_size:
            raise WitnessConflict(
                f"witness holds size {held_size} for {origin}, not {old_size}", held_size
            )
        if new.size < held_size:
            raise WitnessConflict(
                f"checkpoint {new.size} is smaller than the {held_size} already cosigned",
                held_size,
            )
        if held is None:
            if proof:
                raise PeerDataError("a proof from size 0 must be empty", code="witness.bad_proof")
        elif new.size == held.size:
            if proof or new.root_hash != held.root:
                raise _Contradiction(held, "same size, another root")
        else:
            try:
                merkle.verify_consistency(held.size, new.size, held.root, new.root_hash, proof)
            except AccordError as e:
                raise _Contradiction(held, e.message) from e
        self.store.witness.hold(
            partner, origin, log_key, new.size, new.root_hash, note, format_time(now)
        )

    def grown_at(self, partner: str) -> str | None:
        """When ``partner``'s log last grew (a log re-sending one checkpoint does not)."""
        return grown_at(self.store, partner)

    def evidence(self, origin: str) -> list[tuple[bytes, bytes, str]]:
        return self.store.witness.evidence(origin)


def _key_text(key: VerifierKey) -> str:
    """The C2SP verifier key string: name, key id, type and public key."""
    return key.encode()


def grown_at(store: NodeStore, partner: str) -> str | None:
    """When the log of ``partner`` (``<partner>.accord/log``) last grew at this witness."""
    return store.witness.grown_at(partner, log_origin(partner))
