"""The receive rules in one place (docs/DESIGN.md §7, ADR 0016); pure.

Shaped like python-tuf's ``TrustedMetadataSet``: a :class:`Receiver` is built from state
the node already trusts (the partner's verified card chain, the revocations it learned,
the last applied seq and the envelope stored at it, the agreement in force) and is then
given envelope bytes one at a time. Each call returns a value saying what the node must
persist (:class:`Accepted`, :class:`Refused`, :class:`Replay`, :class:`Equivocation`,
:class:`Unmatched`) or :class:`Stop` (nothing may be persisted and the batch ends). The
receiver advances its own state (cursor, key floor, report versions) after every item
it accepts or refuses, so the rules hold inside a batch as well as across batches.

Rules held here and nowhere else:

- **key era** (ADR 0016). ``created_at`` is chosen by the sender, so it never widens what a
  key may sign: a key the partner *revoked* signs no seq beyond the last applied one,
  whatever time the envelope claims (P15); and once an envelope signed by a newer key of
  the chain was applied or refused at seq s (the *key floor*), envelopes with seq > s must
  be signed by that key or a later one (``peer.key_superseded``). ``created_at`` still
  picks the one key the outer signature is checked against, which can only narrow.
- **SD-JWT issuer keys** are the chain's keys without the revoked ones.
- **seq**: only last applied + 1 applies; an older seq is compared byte for byte with the
  envelope stored at it (replay or equivocation).
- **versions** of a report are held per (issuer, report id) (P17); a report id of one of
  this node's own reports is refused (P11).
- **acknowledgements** (P18, ADR 0022) name a version of one of *our* reports that we sent
  to *this* partner, are not older than that release nor later than now (both with the
  documented skew), and are not a statement already received (a replay in a new envelope).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from exchange.agreement import VerifiedAgreement
from exchange.card import Card, VerifiedChain
from exchange.crypto import verify_ed25519
from exchange.envelope import (
    DEFAULT_LIMITS,
    ContentRejected,
    Decrypter,
    Envelope,
    EnvelopeDuplicate,
    EnvelopeEquivocation,
    EnvelopeHeader,
    EnvelopeLimits,
    VerifiedRelease,
    check_duplicate,
    envelope_hash,
    open_envelope,
    parse_header_unverified,
)
from exchange.errors import PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import HeldVersion, ReportIdCollision, check_retraction, check_version
from exchange.sop import SchemaRegistry
from exchange.times import parse_time

# How far an acknowledgement's signed time may lie outside what this node saw (the release
# it answers, and now): the clock skew Accord tolerates everywhere (docs/THREATS.md W02).
ACK_CLOCK_SKEW = timedelta(minutes=5)


def _never_sent(report_id: str, version: int, jwt_digest: str) -> datetime | None:
    return None


def _not_held(digest: str) -> bool:
    return False


@dataclass(frozen=True)
class TrustedState:
    """What the node trusts about one partner before a batch (loaded from verified
    records): ``last_envelope`` is the envelope stored at ``last_applied`` (None when
    nothing was received yet), from which the key floor is read."""

    me: str
    peer: str
    chain: VerifiedChain
    revoked: Mapping[bytes, datetime]
    last_applied: int
    last_envelope: Envelope | None
    agreement: VerifiedAgreement


@dataclass(frozen=True)
class Accepted:
    """Authentic, next, and every content and version rule passed: store and apply."""

    release: VerifiedRelease


@dataclass(frozen=True)
class Refused:
    """Authentic and next, but refused: a recorded rejection; the cursor passes it."""

    header: EnvelopeHeader
    envelope_digest: str
    code: str


@dataclass(frozen=True)
class Replay:
    """An exact copy of the envelope applied at its seq: acknowledged, nothing changes."""

    header: EnvelopeHeader


@dataclass(frozen=True)
class Equivocation:
    """The seq of an applied envelope with other (authentic) bytes: evidence."""

    header: EnvelopeHeader
    held_digest: str
    incoming_digest: str
    code: str = "peer.equivocation"


@dataclass(frozen=True)
class Unmatched:
    """An authentic seq before anything stored: cannot be compared, not acknowledged."""

    header: EnvelopeHeader


@dataclass(frozen=True)
class Stop:
    """Refused before the seq check: nothing is stored and the batch ends."""

    error: PeerDataError


Outcome = Accepted | Refused | Replay | Equivocation | Unmatched | Stop


def key_version(chain: VerifiedChain, env: Envelope) -> int | None:
    """The version of the chain's card whose identity key signed ``env`` (None if none)."""
    message = signed_message(Purpose.ENVELOPE, _sha256(env.header) + _sha256(env.ciphertext))
    for card in reversed(chain.cards):
        try:
            verify_ed25519(card.identity_key, message, env.signature, what="envelope")
        except PeerDataError:
            continue
        return card.version
    return None


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def era_card(chain: VerifiedChain, header: EnvelopeHeader) -> Card:
    """The chain's card in force at the header's ``created_at``: the one key the outer
    signature is checked against (a function of the chain and the header alone)."""
    era = chain.cards[0]
    for card in chain.cards:
        if card.issued_at <= header.created_at:  # RFC 3339 UTC with Z: ordered as text
            era = card
    return era


def issuer_keys(chain: VerifiedChain, revoked: Mapping[bytes, datetime]) -> list[bytes]:
    """Keys that may have sealed the partner's reports: its chain without revoked keys."""
    return [c.identity_key for c in chain.cards if c.identity_key not in revoked]


# ---- opening ahead ---------------------------------------------------------------------------
#
# ``open_envelope`` is most of the cost of receiving, and what it returns depends on the
# position in the batch only through ``last_applied_seq`` (the seq check) and the signing
# card (chosen from the chain by the header alone, see ``era_card``). So it can run for
# every envelope of a batch at once, in other processes, on the assumption that each is
# next in sequence; ``Receiver.receive`` then uses a result only when that assumption and
# every other input held, and opens the envelope itself otherwise.


@dataclass(frozen=True)
class OpenContext:
    """What ``open_envelope`` needs for one partner's batch besides the envelope and the
    decrypter: equal contexts give equal results (the receiver compares them)."""

    me: str
    peer: str
    chain: VerifiedChain
    revoked: Mapping[bytes, datetime]
    agreement: VerifiedAgreement
    now: datetime
    limits: EnvelopeLimits = DEFAULT_LIMITS


@dataclass(frozen=True)
class Opened:
    """``open_envelope``'s result for one envelope opened ahead: ``assumed_last`` is the
    ``last_applied_seq`` it was opened against (its seq - 1), ``card_version`` the card its
    outer signature was checked against. Exactly one of ``release`` and ``rejected``
    (header, envelope digest, code of a ``ContentRejected``) is set."""

    envelope_hash: bytes
    assumed_last: int
    card_version: int
    release: VerifiedRelease | None = None
    rejected: tuple[EnvelopeHeader, str, str] | None = None


def open_ahead(
    context: OpenContext,
    env: Envelope,
    *,
    decrypter_for: Callable[[str], Decrypter | None],
    registry: SchemaRegistry,
) -> Opened | None:
    """Open ``env`` as if it were next in sequence. None when the outcome is not an
    applied or a rejected item (a malformed header, a stop before the seq check, anything
    unexpected): the receiver then opens it itself and meets the same outcome there."""
    try:
        header = parse_header_unverified(env.header, max_bytes=context.limits.max_header_bytes)
    except PeerDataError:
        return None
    card = era_card(context.chain, header)
    assumed = header.seq - 1
    done = envelope_hash(env)
    try:
        release = open_envelope(
            env,
            me=context.me,
            expected_sender=context.peer,
            sender_card=card,
            last_applied_seq=assumed,
            decrypter_for=decrypter_for,
            agreement=context.agreement,
            registry=registry,
            now=context.now,
            limits=context.limits,
            issuer_keys=issuer_keys(context.chain, context.revoked),
        )
    except ContentRejected as bad:
        rejected = (bad.header, bad.envelope_digest, bad.code)
        return Opened(done, assumed, card.version, rejected=rejected)
    except Exception:  # opened again by the receiver, which meets (and raises) it there
        return None
    return Opened(done, assumed, card.version, release=release)


@dataclass
class Receiver:
    """The receive rules for one partner and one batch (see the module docstring).

    The callables read what the node holds; they never write:
    ``held_envelope(seq)`` the envelope stored at an applied seq, ``held_version(issuer,
    report_id)`` the newest version held from that issuer, ``own_report(report_id)``
    whether the id names a report this node sealed."""

    state: TrustedState
    decrypter_for: Callable[[str], Decrypter | None]
    registry: SchemaRegistry
    now: datetime
    held_envelope: Callable[[int], Envelope | None]
    held_version: Callable[[str, str], HeldVersion | None]
    own_report: Callable[[str], bool]
    limits: EnvelopeLimits = DEFAULT_LIMITS
    # ``sent_at(report_id, version, jwt_digest)``: when we released that version of our
    # report to this partner (None: never); ``ack_held(digest)``: that acknowledgement
    # statement was already received.
    sent_at: Callable[[str, int, str], datetime | None] = _never_sent
    ack_held: Callable[[str], bool] = _not_held
    last_applied: int = field(init=False)
    key_floor: int = field(init=False)
    _versions: dict[tuple[str, str], HeldVersion | None] = field(init=False)
    _acks: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.last_applied = self.state.last_applied
        floor = None
        if self.state.last_envelope is not None:
            floor = key_version(self.state.chain, self.state.last_envelope)
        self.key_floor = floor or self.state.chain.cards[0].version
        self._versions = {}
        self._acks = set()

    # -- the rules --------------------------------------------------------------------------

    @property
    def issuer_keys(self) -> list[bytes]:
        """Keys that may have sealed the partner's reports: its chain without revoked keys."""
        return issuer_keys(self.state.chain, self.state.revoked)

    @property
    def context(self) -> OpenContext:
        """The inputs of ``open_envelope`` that are the same for every envelope of a batch
        (what ``open_ahead`` was given, if its results are to be used)."""
        state = self.state
        return OpenContext(
            state.me, state.peer, state.chain, state.revoked, state.agreement, self.now, self.limits
        )

    def signing_card(self, env: Envelope) -> Card:
        """The one card the outer signature is checked against.

        ``created_at`` (signed, but chosen by the sender) selects the era, which can only
        narrow what a key may sign: a revoked key signs no seq beyond the last applied
        one (``peer.revoked``), whatever its ``created_at``; a key older than the key
        floor signs none either (``peer.key_superseded``). For an already applied seq
        (a replay or an equivocation to compare) a revoked key is still accepted for
        envelopes it signed before its revocation time."""
        chain, revoked = self.state.chain, self.state.revoked
        try:
            header = parse_header_unverified(env.header, max_bytes=self.limits.max_header_bytes)
        except PeerDataError:
            return chain.latest  # open_envelope names the problem
        era = era_card(chain, header)
        new = header.seq > self.last_applied
        if era.identity_key in revoked and (
            new
            or parse_time(header.created_at, field="envelope created_at")
            >= revoked[era.identity_key]
        ):
            raise PeerDataError(
                f"envelope signed by a key {chain.latest.node} revoked ({era.fingerprint}); "
                "a revoked key signs nothing new, whatever its created_at",
                code="peer.revoked",
            )
        if new and era.version < self.key_floor:
            raise PeerDataError(
                f"envelope signed by key version {era.version} of {chain.latest.node} after "
                f"version {self.key_floor} signed an earlier seq",
                code="peer.key_superseded",
                next_step="Nothing was stored. The partner must seal with its current key.",
            )
        return era

    def check_versions(self, release: VerifiedRelease) -> None:
        """P01 rollback, P07 same version other bytes, P11 our own ids; per issuer (P17)."""
        report_id = release.release.report_id
        if release.ack is not None:
            self.check_ack(release)
            return
        if self.own_report(report_id):
            raise ReportIdCollision("the report id belongs to a report of this node")
        issuer = release.report.issuer if release.report is not None else self.state.peer
        held = self._held(issuer, report_id)
        if release.report is not None:
            check_version(held, release.report)
        elif release.retraction is not None:
            check_retraction(held, release.retraction)

    def check_ack(self, release: VerifiedRelease) -> None:
        """P18: an acknowledgement of a report we never sent this partner, back-dated before
        the release, dated in the future, or a statement already received is refused."""
        ack, signed = release.ack, release.ack_signed
        assert ack is not None and signed is not None
        sent = self.sent_at(ack.report_id, ack.version, ack.issuer_jwt_digest)
        if sent is None:
            raise PeerDataError(
                "acknowledgement of a report version this node never sent the partner",
                code="peer.ack.unknown_report",
            )
        at = parse_time(ack.acked_at, field="acked_at")
        if at < sent - ACK_CLOCK_SKEW or at > self.now + ACK_CLOCK_SKEW:
            raise PeerDataError(
                "acknowledgement dated before the report was sent or in the future",
                code="peer.ack.bad_time",
            )
        digest = "sha256:" + _sha256(signed.statement).hex()
        if digest in self._acks or self.ack_held(digest):
            raise PeerDataError(
                "acknowledgement statement already received", code="peer.ack.replayed"
            )
        self._acks.add(digest)

    def _held(self, issuer: str, report_id: str) -> HeldVersion | None:
        key = (issuer, report_id)
        if key not in self._versions:
            self._versions[key] = self.held_version(issuer, report_id)
        return self._versions[key]

    # -- one envelope -----------------------------------------------------------------------

    def receive(self, env: Envelope, ahead: Opened | None = None) -> Outcome:
        """Apply every rule to ``env``; advance the receiver's state when it moves on.

        ``ahead`` is ``open_ahead``'s result for ``env`` under this receiver's ``context``
        (the caller checks that): used only when ``env`` is next in sequence and was opened
        against the card chosen here, i.e. when ``open_envelope`` would be given exactly
        what it was given; otherwise the envelope is opened here."""
        state = self.state
        try:
            card = self.signing_card(env)
        except PeerDataError as stop:
            return Stop(stop)
        if (
            ahead is not None
            and ahead.assumed_last == self.last_applied
            and ahead.card_version == card.version
            and ahead.envelope_hash == envelope_hash(env)
        ):
            if ahead.rejected is not None:
                header, digest, code = ahead.rejected
                self._advance(header.seq, card.version)
                return Refused(header, digest, code)
            assert ahead.release is not None
            return self._accepted(ahead.release, card.version)
        try:
            release = open_envelope(
                env,
                me=state.me,
                expected_sender=state.peer,
                sender_card=card,
                last_applied_seq=self.last_applied,
                decrypter_for=self.decrypter_for,
                agreement=state.agreement,
                registry=self.registry,
                now=self.now,
                limits=self.limits,
                issuer_keys=self.issuer_keys,
            )
        except EnvelopeDuplicate as dup:
            return self._duplicate(env, dup.header)
        except ContentRejected as bad:
            self._advance(bad.header.seq, card.version)
            return Refused(bad.header, bad.envelope_digest, bad.code)
        except PeerDataError as stop:
            return Stop(stop)
        return self._accepted(release, card.version)

    def _accepted(self, release: VerifiedRelease, card_version: int) -> Outcome:
        self._advance(release.header.seq, card_version)
        try:
            self.check_versions(release)
        except PeerDataError as refused:
            return Refused(release.header, release.envelope_digest, refused.code)
        report = release.report
        if report is not None:
            self._versions[(report.issuer, release.release.report_id)] = HeldVersion(
                report.issuer, report.version, report.issuer_jwt_digest
            )
        return Accepted(release)

    def _advance(self, seq: int, version: int) -> None:
        self.last_applied = seq
        self.key_floor = max(self.key_floor, version)

    def _duplicate(self, env: Envelope, header: EnvelopeHeader) -> Outcome:
        held = self.held_envelope(header.seq)
        if held is None:
            return Unmatched(header)
        try:
            check_duplicate(held, env)
        except EnvelopeEquivocation as eq:
            return Equivocation(header, eq.held_digest, eq.incoming_digest, eq.code)
        return Replay(header)


__all__ = [
    "ACK_CLOCK_SKEW",
    "Accepted",
    "Equivocation",
    "OpenContext",
    "Opened",
    "Outcome",
    "Receiver",
    "Refused",
    "Replay",
    "Stop",
    "TrustedState",
    "Unmatched",
    "era_card",
    "issuer_keys",
    "key_version",
    "open_ahead",
]
