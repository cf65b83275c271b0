"""Envelopes (docs/DESIGN.md §7): a signed release statement and an SD-JWT presentation,
HPKE-encrypted to the partner, under an outer signature that binds header and ciphertext.

Sender: ``seal_envelope(content, ...)`` builds the release statement, signs it
(``accord/v1/release``), encrypts the plaintext with an injected ``Encryptor`` (HPKE draws
its ephemeral key there, never here) and signs ``accord/v1/envelope\\n`` + SHA-256(header) +
SHA-256(ciphertext). Receiver: ``open_envelope(...)`` runs docs/DESIGN.md §7's checks in order and
returns a ``VerifiedRelease``, the only way to get one. Failures raise ``PeerDataError`` with
a stable code; once an envelope is authentic and next in sequence, a failure is wrapped in
``ContentRejected`` so the receiver records a per-item rejection and moves its cursor on
(docs/DESIGN.md §8: never silent). A replayed seq raises ``EnvelopeDuplicate``; ``check_duplicate``
then tells an exact replay (acknowledge again) from equivocation (keep both, alarm).

Longer than 500 lines because sealing and opening are one format: keeping the writer and
the strict reader side by side is what keeps them in step.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from exchange.ack import Acknowledgement, SignedAck, verify_ack
from exchange.agreement import AGREEMENT_CLOCK_SKEW, VerifiedAgreement, ceiling_for
from exchange.canonical import (
    b64,
    b64_decode,
    b64url_decode,
    canonical_json,
    parse_canonical_json_unverified,
    parse_json_unverified,
    sha256,
)
from exchange.card import SUITE_HYBRID, SUITE_X25519, Card, EncryptionKey
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import ConfigError, InputError, PeerDataError, PolicyError
from exchange.names import NODE_ID_RE
from exchange.policy import ReleaseDecision, check_within_ceiling
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import (
    DIGEST_RE,
    MAX_VERSION,
    SD_DIGEST_RE,
    UUID7_RE,
    PresentationLimits,
    Retraction,
    SealedReport,
    SignatureInvalid,
    SignedRetraction,
    VerifiedReport,
    verify_presentation,
    verify_retraction,
)
from exchange.sop import (
    DEFAULT_REPORT_LIMITS,
    FIELD_NAME_RE,
    MAX_SAFE_INTEGER,
    SchemaRegistry,
    disclosed_field_problems,
    value_problems,
)
from exchange.times import format_time, parse_time

ENVELOPE_TYPE: Final = "accord.envelope/v1"
RELEASE_TYPE: Final = "accord.release/v1"
INFO_PREFIX: Final = b"accord/v1/envelope\n"
KIND_REPORT: Final = "report"
KIND_RETRACTION: Final = "retraction"
KIND_ACK: Final = "ack"
KINDS: Final = (KIND_REPORT, KIND_RETRACTION, KIND_ACK)
SUITES: Final = (SUITE_HYBRID, SUITE_X25519)
MAX_SEQ: Final = MAX_SAFE_INTEGER  # 2^53-1: the largest integer canonical JSON carries
SIGNATURE_LEN: Final = 64
HEADER_KEYS: Final = frozenset(
    {"type", "id", "from", "to", "seq", "kind", "created_at", "suite", "kid"}
)
RELEASE_KEYS: Final = frozenset(
    {"type", "id", "from", "to", "seq", "kind", "report_id", "version", "issuer_jwt_digest"}
    | {"disclosed", "derived", "agreement_digest", "policy_digest", "released_at"}
)
DERIVED_KEYS: Final = frozenset({"field", "transform", "value", "source"})
PLAINTEXT_KEYS: Final = {
    KIND_REPORT: frozenset({"presentation", "release", "release_signature"}),
    KIND_RETRACTION: frozenset(
        {"retraction", "retraction_signature", "release", "release_signature"}
    ),
    KIND_ACK: frozenset({"ack", "ack_signature", "release", "release_signature"}),
}
KID_RE: Final = re.compile(r"[\x21-\x7e]{1,64}")
TRANSFORM_RE: Final = re.compile(r"[a-z]{1,16}(:[a-z0-9]{1,16})?")


@dataclass(frozen=True)
class EnvelopeLimits:
    """Bounds on an envelope from a partner (docs/THREATS.md L01); checked before anything else."""

    max_header_bytes: int = 1024
    max_ciphertext_bytes: int = 1 << 20
    max_release_bytes: int = 256 * 1024
    max_derived: int = 64
    presentation: PresentationLimits = dataclasses.field(default_factory=PresentationLimits)

    def __post_init__(self) -> None:
        for name in ("max_header_bytes", "max_ciphertext_bytes", "max_release_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"EnvelopeLimits.{name} must be a positive integer")
        if type(self.max_derived) is not int or self.max_derived < 0:
            raise ConfigError("EnvelopeLimits.max_derived must be an integer >= 0")


DEFAULT_LIMITS: Final = EnvelopeLimits()


# ---- injected cryptography -------------------------------------------------------------------


class Encryptor(Protocol):
    """HPKE single-shot sealing (RFC 9180 base mode); draws its own ephemeral key."""

    def encrypt(self, suite: str, recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
        """``enc || ciphertext`` for ``recipient_public`` under ``suite``."""
        ...


class Decrypter(Protocol):
    """One of our HPKE private keys (``keys.signers.EncryptionKeyPair`` is one)."""

    @property
    def kid(self) -> str: ...

    @property
    def suite(self) -> str: ...

    def decrypt(self, ciphertext: bytes, info: bytes) -> bytes:
        """The plaintext; raises (any exception) when the ciphertext does not open."""
        ...


# ---- errors ------------------------------------------------------------------------------------


class EnvelopeArgumentInvalid(InputError):
    """Our own node asked to seal something it must not (a bug upstream, never a partner's)."""

    code = "input.envelope_argument"
    default_next_step = "Seal only validated reports this node issued, under a current agreement."


class EnvelopeDuplicate(PeerDataError):
    """An authentic envelope (outer signature verified) with ``seq <= last_applied``.

    Look up the envelope applied at ``header.seq`` and call ``check_duplicate``.
    """

    code = "peer.duplicate"

    def __init__(self, header: EnvelopeHeader, envelope_digest: str) -> None:
        super().__init__(f"envelope seq {header.seq} was already applied")
        self.header = header
        self.envelope_digest = envelope_digest


class EnvelopeEquivocation(PeerDataError):
    """Same sender and seq, different bytes, both signed by the sender: keep both, alarm."""

    code = "peer.equivocation"

    def __init__(self, message: str, *, held_digest: str, incoming_digest: str) -> None:
        super().__init__(message, next_step="Keep both envelopes as evidence; alert the partner.")
        self.held_digest = held_digest
        self.incoming_digest = incoming_digest


class ContentRejected(PeerDataError):
    """The envelope is authentic and next in sequence, but its content failed a check.

    ``code`` is the failed check's code. Record a per-item rejection for ``header.seq``
    (receipt and log) and move the cursor past it; nothing of the content is stored.
    """

    def __init__(self, cause: PeerDataError, header: EnvelopeHeader, envelope_digest: str):
        super().__init__(cause.message, code=cause.code, next_step=cause.next_step)
        self.header = header
        self.envelope_digest = envelope_digest


def _fail(code: str, message: str) -> PeerDataError:
    return PeerDataError(message, code=code)


# ---- values --------------------------------------------------------------------------------------


# JSON key -> attribute ("from" and "to" are Python keywords).
_HEADER_ATTRS: Final = {"id": "id", "from": "sender", "to": "recipient", "seq": "seq"} | {
    k: k for k in ("kind", "created_at", "suite", "kid")
}
_RELEASE_ATTRS: Final = {k: v for k, v in _HEADER_ATTRS.items() if k in RELEASE_KEYS} | {
    k: k for k in RELEASE_KEYS - {"type", "id", "from", "to", "seq", "kind"}
}


def _to_json(value: object, type_: str, attrs: Mapping[str, str]) -> dict[str, Any]:
    return {"type": type_, **{key: getattr(value, attr) for key, attr in attrs.items()}}


@dataclass(frozen=True)
class Envelope:
    """The wire form: exact header bytes, HPKE ciphertext, outer signature."""

    header: bytes
    ciphertext: bytes
    signature: bytes


def envelope_hash(envelope: Envelope) -> bytes:
    """SHA-256(SHA-256(header) || SHA-256(ciphertext) || SHA-256(signature)): all its bytes."""
    parts = (envelope.header, envelope.ciphertext, envelope.signature)
    return sha256(b"".join(sha256(p) for p in parts))


def envelope_digest(envelope: Envelope) -> str:
    """``sha256:<hex>`` of ``envelope_hash``: what logs, receipts and duplicates compare."""
    return "sha256:" + envelope_hash(envelope).hex()


@dataclass(frozen=True)
class EnvelopeHeader:
    id: str
    sender: str
    recipient: str
    seq: int
    kind: str
    created_at: str
    suite: str
    kid: str

    def to_bytes(self) -> bytes:
        return canonical_json(_to_json(self, ENVELOPE_TYPE, _HEADER_ATTRS))


@dataclass(frozen=True)
class DerivedValue:
    """A transformed value sent instead of ``field``; ``source`` is the disclosure digest
    of the withheld original (in the issuer JWT's ``_sd``, its disclosure never sent)."""

    field: str
    transform: str
    value: Any = dataclasses.field(repr=False)
    source: str

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("field", "transform", "value", "source")}


@dataclass(frozen=True)
class ReleaseStatement:
    """What the sender signs under ``accord/v1/release`` for one envelope."""

    id: str
    sender: str
    recipient: str
    seq: int
    kind: str
    report_id: str
    version: int
    issuer_jwt_digest: str
    disclosed: tuple[str, ...]
    derived: tuple[DerivedValue, ...]
    agreement_digest: str
    policy_digest: str
    released_at: str

    def to_bytes(self) -> bytes:
        doc = _to_json(self, RELEASE_TYPE, _RELEASE_ATTRS)
        doc["disclosed"] = list(self.disclosed)
        doc["derived"] = [d.to_json() for d in self.derived]
        return canonical_json(doc)


@dataclass(frozen=True)
class ReportRelease:
    """One report for one partner: fields disclosed as sealed, and derived values."""

    sealed: SealedReport
    released: tuple[str, ...]
    derived: tuple[tuple[str, str, Any], ...]  # (field, transform, value)
    agreement_digest: str
    policy_digest: str

    @classmethod
    def from_decision(cls, sealed: SealedReport, decision: ReleaseDecision) -> ReportRelease:
        if decision.agreement_digest is None:
            raise EnvelopeArgumentInvalid("the decision has no agreement: nothing may flow")
        derived = tuple(
            (t.name, t.transform, t.value)
            for t in sorted(decision.transformed.values(), key=lambda t: t.name)
        )
        return cls(
            sealed,
            tuple(decision.released),
            derived,
            decision.agreement_digest,
            decision.policy_digest,
        )


@dataclass(frozen=True)
class RetractionRelease:
    """A signed retraction of a report this node issued."""

    retraction: Retraction
    signed: SignedRetraction
    agreement_digest: str
    policy_digest: str


@dataclass(frozen=True)
class AckRelease:
    """An officer's signed acknowledgement of a partner's report, sent back to its issuer."""

    ack: Acknowledgement
    signed: SignedAck
    agreement_digest: str
    policy_digest: str


@dataclass(frozen=True)
class VerifiedRelease:
    """Everything ``open_envelope`` verified; the evidence bytes are kept for the store."""

    header: EnvelopeHeader
    envelope_digest: str
    release: ReleaseStatement
    release_bytes: bytes
    release_signature: bytes
    report: VerifiedReport | None  # kind "report"
    retraction: Retraction | None  # kind "retraction"
    retraction_signed: SignedRetraction | None
    ack: Acknowledgement | None = None  # kind "ack"
    ack_signed: SignedAck | None = None

    @property
    def fields(self) -> Mapping[str, Any]:
        """Disclosed fields (empty for a retraction)."""
        return {} if self.report is None else self.report.fields

    @property
    def derived(self) -> tuple[DerivedValue, ...]:
        return self.release.derived


# ---- sealing -------------------------------------------------------------------------------------


def seal_envelope(
    content: ReportRelease | RetractionRelease | AckRelease,
    *,
    envelope_id: str,
    sender: str,
    recipient: str,
    seq: int,
    recipient_key: EncryptionKey,
    suite: str,
    now: datetime,
    signer: Signer,
    encryptor: Encryptor,
) -> Envelope:
    """Seal one release for ``recipient`` at ``seq`` (``suite`` = the agreement's suite)."""
    checks = [
        (_matches(UUID7_RE, envelope_id), "envelope id must be a UUIDv7"),
        (_matches(NODE_ID_RE, sender) and _matches(NODE_ID_RE, recipient), "node ids"),
        (sender != recipient, "sender and recipient must differ"),
        (type(seq) is int and 1 <= seq <= MAX_SEQ, "seq must be 1..2^53-1"),
        (suite in SUITES, "suite must be a known HPKE suite"),
        (recipient_key.suite == suite, "the recipient key's suite is not the agreement's"),
        (_matches(KID_RE, recipient_key.kid), "recipient kid must be 1-64 printable ASCII"),
        (parse_time(recipient_key.not_after, field="key not_after") > now, "key expired"),
        (_matches(DIGEST_RE, content.agreement_digest), "agreement digest"),
        (_matches(DIGEST_RE, content.policy_digest), "policy digest"),
    ]
    for ok, rule in checks:
        if not ok:
            raise EnvelopeArgumentInvalid(f"cannot seal envelope: {rule}")
    created_at = format_time(now)
    kind = (
        KIND_REPORT
        if isinstance(content, ReportRelease)
        else KIND_ACK
        if isinstance(content, AckRelease)
        else KIND_RETRACTION
    )
    header = EnvelopeHeader(
        envelope_id, sender, recipient, seq, kind, created_at, suite, recipient_key.kid
    )
    if isinstance(content, ReportRelease):
        statement, body = _report_statement(content, header)
    elif isinstance(content, AckRelease):
        statement, body = _ack_statement(content, header)
    else:
        statement, body = _retraction_statement(content, header)
    release_bytes = statement.to_bytes()
    body["release"] = b64(release_bytes)
    body["release_signature"] = b64(signer.sign(signed_message(Purpose.RELEASE, release_bytes)))
    header_bytes = header.to_bytes()
    ciphertext = encryptor.encrypt(
        suite, recipient_key.public, canonical_json(body), INFO_PREFIX + header_bytes
    )
    signature = signer.sign(
        signed_message(Purpose.ENVELOPE, sha256(header_bytes) + sha256(ciphertext))
    )
    return Envelope(header_bytes, ciphertext, signature)


def _report_statement(
    content: ReportRelease, header: EnvelopeHeader
) -> tuple[ReleaseStatement, dict[str, Any]]:
    sealed = content.sealed
    released = sorted(set(content.released))
    derived_names = [name for name, _, _ in content.derived]
    if sealed.issuer != header.sender:
        raise EnvelopeArgumentInvalid(
            "a node releases only reports it issued (docs/THREATS.md P11)"
        )
    if not released and not derived_names:
        raise EnvelopeArgumentInvalid("nothing to release: the decision withholds every field")
    if len(set(derived_names)) != len(derived_names) or set(derived_names) & set(released):
        raise EnvelopeArgumentInvalid("a field is both released and derived, or derived twice")
    unknown = [n for n in [*released, *derived_names] if n not in sealed.disclosures]
    if unknown:
        raise EnvelopeArgumentInvalid(f"{len(unknown)} released field(s) not in the report")
    digests = sealed.disclosure_digests()
    derived = tuple(
        DerivedValue(name, transform, value, digests[name])
        for name, transform, value in sorted(content.derived, key=lambda d: d[0])
    )
    for d in derived:
        if not _matches(TRANSFORM_RE, d.transform):
            raise EnvelopeArgumentInvalid("a transform is not a transform name")
    disclosed = tuple(sorted(digests[n] for n in released))
    statement = _statement(
        header,
        content,
        sealed.report_id,
        sealed.version,
        sealed.issuer_jwt_digest,
        disclosed,
        derived,
    )
    return statement, {"presentation": sealed.present(released)}


def _statement(
    header: EnvelopeHeader,
    content: ReportRelease | RetractionRelease | AckRelease,
    report_id: str,
    version: int,
    issuer_jwt_digest: str,
    disclosed: tuple[str, ...] = (),
    derived: tuple[DerivedValue, ...] = (),
) -> ReleaseStatement:
    return ReleaseStatement(
        **{attr: getattr(header, attr) for attr in ("id", "sender", "recipient", "seq", "kind")},
        report_id=report_id,
        version=version,
        issuer_jwt_digest=issuer_jwt_digest,
        disclosed=disclosed,
        derived=derived,
        agreement_digest=content.agreement_digest,
        policy_digest=content.policy_digest,
        released_at=header.created_at,
    )


def _retraction_statement(
    content: RetractionRelease, header: EnvelopeHeader
) -> tuple[ReleaseStatement, dict[str, Any]]:
    r = content.retraction
    if r.issuer != header.sender:
        raise EnvelopeArgumentInvalid(
            "a node retracts only reports it issued (docs/THREATS.md P11)"
        )
    if content.signed.statement != r.statement():
        raise EnvelopeArgumentInvalid("the signed retraction is not this retraction")
    statement = _statement(header, content, r.report_id, r.version, r.issuer_jwt_digest)
    body = {
        "retraction": b64(content.signed.statement),
        "retraction_signature": b64(content.signed.signature),
    }
    return statement, body


def _ack_statement(
    content: AckRelease, header: EnvelopeHeader
) -> tuple[ReleaseStatement, dict[str, Any]]:
    a = content.ack
    if a.sender != header.sender or a.recipient != header.recipient:
        raise EnvelopeArgumentInvalid("an acknowledgement goes from this node to the issuer")
    if content.signed.statement != a.statement():
        raise EnvelopeArgumentInvalid("the signed acknowledgement is not this acknowledgement")
    statement = _statement(header, content, a.report_id, a.version, a.issuer_jwt_digest)
    body = {"ack": b64(content.signed.statement), "ack_signature": b64(content.signed.signature)}
    return statement, body


# ---- reading -------------------------------------------------------------------------------------


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _strict_object(
    data: bytes, *, what: str, max_bytes: int, keys: frozenset[str], code: str
) -> Any:
    """Parse a JSON object with exactly ``keys`` whose bytes are its canonical form."""
    try:
        doc = parse_canonical_json_unverified(data, what=what, max_bytes=max_bytes)
    except InputError as e:
        raise _fail(code, e.message) from e
    if not isinstance(doc, dict) or set(doc) != keys:
        raise _fail(code, f"{what}: fields must be exactly {', '.join(sorted(keys))}")
    return doc


def parse_header_unverified(data: bytes, *, max_bytes: int = 1024) -> EnvelopeHeader:
    """Read header bytes strictly (exact keys, canonical, known type, suite and kind).

    Says nothing about who wrote it: ``open_envelope`` verifies the outer signature.
    Raises ``PeerDataError`` with code ``peer.envelope.bad_header``.
    """
    code = "peer.envelope.bad_header"
    doc = _strict_object(
        data, what="envelope header", max_bytes=max_bytes, keys=HEADER_KEYS, code=code
    )
    checks = [
        (doc["type"] == ENVELOPE_TYPE, f"type must be {ENVELOPE_TYPE}"),
        (_matches(UUID7_RE, doc["id"]), "id must be a UUIDv7"),
        (_matches(NODE_ID_RE, doc["from"]), "from must be a node id"),
        (_matches(NODE_ID_RE, doc["to"]), "to must be a node id"),
        (_int_in(doc["seq"], 1, MAX_SEQ), "seq must be an integer from 1 to 2^53-1"),
        (doc["kind"] in KINDS, f"kind must be one of {', '.join(KINDS)}"),
        (doc["suite"] in SUITES, "suite is not a known HPKE suite"),
        (_matches(KID_RE, doc["kid"]), "kid must be 1-64 printable ASCII characters"),
    ]
    for ok, rule in checks:
        if not ok:
            raise _fail(code, f"envelope header: {rule}")
    try:
        parse_time(doc["created_at"], field="envelope header created_at")
    except InputError as e:
        raise _fail(code, e.message) from e
    return EnvelopeHeader(**{attr: doc[key] for key, attr in _HEADER_ATTRS.items()})


def _parse_release(data: bytes, limits: EnvelopeLimits) -> ReleaseStatement:
    """Read release bytes whose signature verified: every field's shape, canonical form."""
    code = "peer.release.malformed"
    if len(data) > limits.max_release_bytes:
        raise _fail("peer.release.too_large", f"exceeds {limits.max_release_bytes} bytes")
    doc = _strict_object(
        data,
        what="release statement",
        max_bytes=limits.max_release_bytes,
        keys=RELEASE_KEYS,
        code=code,
    )
    disclosed, derived_raw = doc["disclosed"], doc["derived"]
    checks = [
        (doc["type"] == RELEASE_TYPE, f"type must be {RELEASE_TYPE}"),
        (_matches(UUID7_RE, doc["id"]) and _matches(UUID7_RE, doc["report_id"]), "ids"),
        (_matches(NODE_ID_RE, doc["from"]) and _matches(NODE_ID_RE, doc["to"]), "node ids"),
        (_int_in(doc["seq"], 1, MAX_SEQ) and doc["kind"] in KINDS, "seq and kind"),
        (_int_in(doc["version"], 1, MAX_VERSION), "version"),
        (
            all(
                _matches(DIGEST_RE, doc[k])
                for k in ("issuer_jwt_digest", "agreement_digest", "policy_digest")
            ),
            "digests",
        ),
        (
            isinstance(disclosed, list) and all(_matches(SD_DIGEST_RE, d) for d in disclosed),
            "disclosed must list disclosure digests",
        ),
        (isinstance(derived_raw, list), "derived must be a list"),
    ]
    for ok, rule in checks:
        if not ok:
            raise _fail(code, f"release statement: {rule}")
    if len(derived_raw) > limits.max_derived:
        raise _fail("peer.release.too_large", f"more than {limits.max_derived} derived values")
    if disclosed != sorted(set(disclosed)):
        raise _fail(code, "release statement: disclosed must be sorted, without repeats")
    try:
        parse_time(doc["released_at"], field="release statement released_at")
    except InputError as e:
        raise _fail(code, e.message) from e
    derived = tuple(_parse_derived(raw, limits) for raw in derived_raw)
    names = [d.field for d in derived]
    if names != sorted(set(names)):
        raise _fail(code, "release statement: derived must be sorted by field, without repeats")
    fields = {attr: doc[key] for key, attr in _RELEASE_ATTRS.items()}
    return ReleaseStatement(**(fields | {"disclosed": tuple(disclosed), "derived": derived}))


def _parse_derived(raw: object, limits: EnvelopeLimits) -> DerivedValue:
    code = "peer.release.malformed"
    if not isinstance(raw, dict) or set(raw) != DERIVED_KEYS:
        raise _fail(
            code, "release statement: each derived value needs field, transform, value, source"
        )
    if not _matches(FIELD_NAME_RE, raw["field"]) or not _matches(TRANSFORM_RE, raw["transform"]):
        raise _fail(code, "release statement: a derived value's field or transform is invalid")
    if not _matches(SD_DIGEST_RE, raw["source"]):
        raise _fail(code, "release statement: a derived value's source is not a digest")
    if value_problems(raw["value"], path="value", limits=limits.presentation.values):
        raise _fail(code, "release statement: a derived value breaks the value limits")
    return DerivedValue(raw["field"], raw["transform"], raw["value"], raw["source"])


# ---- opening -------------------------------------------------------------------------------------


class SeqOutcome(StrEnum):
    APPLY = "apply"  # seq == last_applied + 1
    DUPLICATE = "duplicate"  # seq <= last_applied: compare with the stored envelope


def check_seq(header_seq: int, last_applied: int) -> SeqOutcome:
    """The receiver's sequence rule (docs/THREATS.md P02, P07, P08); pure.

    ``DUPLICATE`` for ``seq <= last_applied`` (the caller compares bytes with the envelope
    it applied at that seq: ``check_duplicate``), ``APPLY`` for ``last_applied + 1``, and
    ``peer.seq_jump`` for anything later: the cursor does not move, the rest wait for a resend.
    """
    if not _int_in(last_applied, 0, MAX_SEQ):
        raise InputError("last_applied must be an integer from 0")
    if type(header_seq) is not int or header_seq < 1:
        raise _fail("peer.envelope.bad_header", "envelope seq must be an integer from 1")
    if header_seq <= last_applied:
        return SeqOutcome.DUPLICATE
    if header_seq == last_applied + 1:
        return SeqOutcome.APPLY
    raise _fail("peer.seq_jump", f"envelope seq jumps past {last_applied + 1}; not applied")


def check_duplicate(held: Envelope, incoming: Envelope) -> None:
    """``held`` is the envelope applied at the incoming envelope's seq. Identical bytes:
    return (acknowledge again, change nothing). Otherwise raise ``EnvelopeEquivocation``."""
    held_hash, incoming_hash = envelope_hash(held), envelope_hash(incoming)
    if not hmac.compare_digest(held_hash, incoming_hash):
        raise EnvelopeEquivocation(
            "the partner signed two different envelopes for one seq",
            held_digest="sha256:" + held_hash.hex(),
            incoming_digest="sha256:" + incoming_hash.hex(),
        )


def _verify(key: bytes, purpose: Purpose, data: bytes, signature: bytes, what: str) -> None:
    try:
        verify_ed25519(key, signed_message(purpose, data), signature, what=what)
    except PeerDataError as e:  # wrong-length keys and signatures too
        raise _fail("peer.bad_signature", e.message) from e


def open_envelope(
    envelope: Envelope,
    *,
    me: str,
    expected_sender: str,
    sender_card: Card,
    last_applied_seq: int,
    decrypter_for: Callable[[str], Decrypter | None],
    agreement: VerifiedAgreement,
    registry: SchemaRegistry,
    now: datetime,
    limits: EnvelopeLimits = DEFAULT_LIMITS,
    issuer_keys: Sequence[bytes] = (),
) -> VerifiedRelease:
    """Verify an envelope in docs/DESIGN.md §7's order; return only verified content.

    ``expected_sender`` is the mTLS peer's node id; ``sender_card`` its trusted, unrevoked
    ``Card``; ``agreement`` the current agreement with it; ``issuer_keys`` the identity keys
    that may have sealed its reports (default: the card's; pass earlier unrevoked keys of
    its card chain to accept reports sealed before a rotation).

    Raises ``PeerDataError`` before the seq check (do not move the cursor),
    ``EnvelopeDuplicate`` for an authentic replayed seq, ``ContentRejected`` afterwards.
    """
    # 1. size limits
    if len(envelope.header) > limits.max_header_bytes:
        raise _fail("peer.envelope.too_large", f"header exceeds {limits.max_header_bytes} bytes")
    if len(envelope.ciphertext) > limits.max_ciphertext_bytes:
        raise _fail(
            "peer.envelope.too_large", f"ciphertext exceeds {limits.max_ciphertext_bytes} bytes"
        )
    if len(envelope.signature) > SIGNATURE_LEN:
        raise _fail("peer.envelope.too_large", f"signature exceeds {SIGNATURE_LEN} bytes")
    # 2. header
    header = parse_header_unverified(envelope.header, max_bytes=limits.max_header_bytes)
    # 3. to is me
    if header.recipient != me:
        raise _fail("peer.envelope.wrong_recipient", "envelope is addressed to another node")
    # 4. from is the mTLS peer, its trusted card, and not ourselves (reflection)
    if header.sender == me:
        raise _fail("peer.envelope.reflected", "envelope claims to come from this node")
    if header.sender != expected_sender or sender_card.node != expected_sender:
        raise _fail("peer.envelope.wrong_sender", "envelope sender is not the connected peer")
    # 5. outer signature
    identity_key: bytes = sender_card.identity_key
    _verify(
        identity_key,
        Purpose.ENVELOPE,
        sha256(envelope.header) + sha256(envelope.ciphertext),
        envelope.signature,
        "envelope signature",
    )
    digest = envelope_digest(envelope)
    # 6. sequence
    if check_seq(header.seq, last_applied_seq) is SeqOutcome.DUPLICATE:
        raise EnvelopeDuplicate(header, digest)
    try:
        return _open_content(
            envelope,
            header,
            digest,
            identity_key=identity_key,
            me=me,
            decrypter_for=decrypter_for,
            agreement=agreement,
            registry=registry,
            now=now,
            limits=limits,
            issuer_keys=tuple(issuer_keys) or (identity_key,),
        )
    except PeerDataError as e:
        raise ContentRejected(e, header, digest) from e


def _open_content(
    envelope: Envelope,
    header: EnvelopeHeader,
    digest: str,
    *,
    identity_key: bytes,
    me: str,
    decrypter_for: Callable[[str], Decrypter | None],
    agreement: VerifiedAgreement,
    registry: SchemaRegistry,
    now: datetime,
    limits: EnvelopeLimits,
    issuer_keys: tuple[bytes, ...],
) -> VerifiedRelease:
    # 7. a current agreement with this peer, its suite (N06), then decrypt
    terms = agreement.agreement
    if sorted((me, header.sender)) != list(terms.parties):
        raise _fail("peer.no_agreement", "the agreement is not between this node and the sender")
    not_before = parse_time(terms.not_before, field="agreement not_before")
    not_after = parse_time(terms.not_after, field="agreement not_after")
    if not not_before - AGREEMENT_CLOCK_SKEW <= now < not_after + AGREEMENT_CLOCK_SKEW:
        raise _fail("peer.no_agreement", "the agreement is not in force")
    if header.suite != terms.suite:
        raise _fail("peer.suite_downgrade", "envelope suite is not the agreed suite")
    decrypter = decrypter_for(header.kid)
    if decrypter is None or decrypter.suite != header.suite:
        raise _fail("peer.decrypt", "no encryption key of this node matches the envelope kid")
    try:
        plaintext = decrypter.decrypt(envelope.ciphertext, INFO_PREFIX + envelope.header)
    except Exception as e:  # an injected decrypter may raise any type for a bad ciphertext
        raise _fail("peer.decrypt", "envelope does not decrypt") from e
    body = _strict_object(
        plaintext,
        what="envelope plaintext",
        max_bytes=limits.max_ciphertext_bytes,
        keys=PLAINTEXT_KEYS[header.kind],
        code="peer.envelope.bad_plaintext",
    )
    # 8. release signature; its fields match the header
    release_bytes = _b64_field(body, "release")
    release_signature = _b64_field(body, "release_signature")
    _verify(identity_key, Purpose.RELEASE, release_bytes, release_signature, "release statement")
    release = _parse_release(release_bytes, limits)
    pairs = [
        (release.id, header.id),
        (release.sender, header.sender),
        (release.recipient, header.recipient),
        (release.seq, header.seq),
        (release.kind, header.kind),
    ]
    if any(a != b for a, b in pairs):
        raise _fail("peer.release.mismatch", "release statement does not match the envelope")
    if release.agreement_digest != agreement.digest:
        raise _fail("peer.agreement_mismatch", "release names another agreement")
    if header.kind == KIND_RETRACTION:
        signed, retraction = _check_retraction(body, release, header, issuer_keys)
        return VerifiedRelease(
            header, digest, release, release_bytes, release_signature, None, retraction, signed
        )
    if header.kind == KIND_ACK:
        signed_ack, ack = _check_ack(body, release, header, identity_key)
        return VerifiedRelease(
            header,
            digest,
            release,
            release_bytes,
            release_signature,
            None,
            None,
            None,
            ack,
            signed_ack,
        )
    # 9. SD-JWT: signature, every disclosure, and exactly the disclosures released
    presentation = body["presentation"]
    if not isinstance(presentation, str):
        raise _fail("peer.envelope.bad_plaintext", "presentation must be a string")
    report = _verify_report(presentation, issuer_keys, header.sender, limits)
    if (report.report_id, report.version, report.issuer_jwt_digest) != (
        release.report_id,
        release.version,
        release.issuer_jwt_digest,
    ):
        raise _fail("peer.release.mismatch", "release names another report or version")
    if sorted(report.disclosure_digests().values()) != list(release.disclosed):
        raise _fail(
            "peer.release.disclosures",
            "the presentation's disclosures are not those the release lists",
        )
    _check_derived(release, report)
    # 10. schema of the disclosed fields
    _check_schema(registry, report)
    # 11. agreement ceiling
    labels = registry.labels(report.sop)
    try:
        ceiling = ceiling_for(
            agreement, header.sender, me, report.sop, labels, registry.digest(report.sop)
        )
    except PolicyError as e:
        raise _fail("peer.above_ceiling", "the agreement lets no report of this schema flow") from e
    check_within_ceiling(
        report.fields, [d.field for d in release.derived], report.tlp, report.sop, labels, ceiling
    )
    return VerifiedRelease(
        header, digest, release, release_bytes, release_signature, report, None, None
    )


def _b64_field(body: Mapping[str, Any], name: str) -> bytes:
    value = body[name]
    try:
        if not isinstance(value, str):
            raise InputError(f"envelope plaintext: {name} must be a base64 string")
        return b64_decode(value, what=f"envelope plaintext {name}")
    except InputError as e:
        raise _fail("peer.envelope.bad_plaintext", e.message) from e


def _verify_report(
    presentation: str, keys: tuple[bytes, ...], issuer: str, limits: EnvelopeLimits
) -> VerifiedReport:
    """Verify with each allowed issuer key in turn (a rotation leaves older reports)."""
    *earlier, latest = keys
    for key in earlier:
        try:
            return verify_presentation(
                presentation, key, expected_issuer=issuer, limits=limits.presentation
            )
        except SignatureInvalid:
            continue
    return verify_presentation(
        presentation, latest, expected_issuer=issuer, limits=limits.presentation
    )


def _issuer_sd(report: VerifiedReport) -> frozenset[str]:
    """The ``_sd`` digests of an issuer JWT that already verified."""
    payload = parse_json_unverified(
        b64url_decode(report.issuer_jwt.split(".")[1], what="JWT payload"),
        what="JWT payload",
        max_bytes=len(report.issuer_jwt),
    )
    return frozenset(payload["_sd"])


def _check_derived(release: ReleaseStatement, report: VerifiedReport) -> None:
    """Each derived value names a digest the issuer committed to (in ``_sd``) whose
    disclosure is NOT in this release: the source stays withheld, one value per source,
    and a derived field is not also disclosed. The field-to-source binding itself is the
    sender's signed claim (the receiver cannot open a withheld disclosure to check it)."""
    if not release.disclosed and not release.derived:
        raise _fail("peer.release.empty", "the release discloses nothing")
    if not release.derived:
        return
    sd = _issuer_sd(report)
    disclosed = set(release.disclosed)
    sources = [d.source for d in release.derived]
    if len(set(sources)) != len(sources):
        raise _fail("peer.release.bad_derived", "two derived values name the same source")
    for d in release.derived:
        if d.source not in sd:
            raise _fail("peer.release.bad_derived", "a derived value's source is not in _sd")
        if d.source in disclosed or d.field in report.fields:
            raise _fail("peer.release.bad_derived", "a derived value's source is disclosed")


def _check_schema(registry: SchemaRegistry, report: VerifiedReport) -> None:
    if report.sop not in registry or registry.digest(report.sop) != report.sop_digest:
        raise _fail("peer.schema", "the report's schema is not the agreed schema (name, digest)")
    problems = disclosed_field_problems(
        registry, report.sop, report.fields, limits=DEFAULT_REPORT_LIMITS
    )
    if problems:
        shown = "; ".join(f"{p.path} ({p.rule})" for p in problems[:10])
        raise _fail("peer.schema", f"disclosed fields break schema {report.sop}: {shown}")


def _check_retraction(
    body: Mapping[str, Any],
    release: ReleaseStatement,
    header: EnvelopeHeader,
    issuer_keys: tuple[bytes, ...],
) -> tuple[SignedRetraction, Retraction]:
    statement = _b64_field(body, "retraction")
    signature = _b64_field(body, "retraction_signature")
    *earlier, latest = issuer_keys
    retraction: Retraction | None = None
    for key in earlier:
        try:
            retraction = verify_retraction(statement, signature, key)
            break
        except PeerDataError as e:
            if e.code not in ("peer.bad_signature", "peer.invalid"):
                raise
    if retraction is None:
        try:
            retraction = verify_retraction(statement, signature, latest)
        except PeerDataError as e:
            if e.code == "peer.invalid":  # a wrong-length signature
                raise _fail("peer.bad_signature", e.message) from e
            raise
    if retraction.issuer != header.sender:
        raise _fail("peer.retraction.wrong_issuer", "a partner may retract only its own reports")
    if (
        (release.report_id, release.version, release.issuer_jwt_digest)
        != (
            retraction.report_id,
            retraction.version,
            retraction.issuer_jwt_digest,
        )
        or release.disclosed
        or release.derived
    ):
        raise _fail("peer.release.mismatch", "release does not match the retraction")
    return SignedRetraction(statement, signature), retraction


def _check_ack(
    body: Mapping[str, Any], release: ReleaseStatement, header: EnvelopeHeader, key: bytes
) -> tuple[SignedAck, Acknowledgement]:
    """The acknowledgement is signed by the key that signed the envelope, goes from the
    sender to us, and is what the release names (report, version, issuer JWT)."""
    statement = _b64_field(body, "ack")
    signature = _b64_field(body, "ack_signature")
    ack = verify_ack(
        statement,
        signature,
        key,
        expected_sender=header.sender,
        expected_recipient=header.recipient,
    )
    if (
        (release.report_id, release.version, release.issuer_jwt_digest)
        != (ack.report_id, ack.version, ack.issuer_jwt_digest)
        or release.disclosed
        or release.derived
    ):
        raise _fail("peer.release.mismatch", "release does not match the acknowledgement")
    return SignedAck(statement, signature), ack


__all__ = [
    "DEFAULT_LIMITS",
    "ENVELOPE_TYPE",
    "INFO_PREFIX",
    "KIND_ACK",
    "KIND_REPORT",
    "KIND_RETRACTION",
    "MAX_SEQ",
    "RELEASE_TYPE",
    "AckRelease",
    "ContentRejected",
    "Decrypter",
    "DerivedValue",
    "Encryptor",
    "Envelope",
    "EnvelopeArgumentInvalid",
    "EnvelopeDuplicate",
    "EnvelopeEquivocation",
    "EnvelopeHeader",
    "EnvelopeLimits",
    "ReleaseStatement",
    "ReportRelease",
    "RetractionRelease",
    "SeqOutcome",
    "VerifiedRelease",
    "check_duplicate",
    "check_seq",
    "envelope_digest",
    "envelope_hash",
    "open_envelope",
    "parse_header_unverified",
    "seal_envelope",
]
