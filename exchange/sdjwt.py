"""Sealing reports as SD-JWT (RFC 9901) and verifying presentations (docs/DESIGN.md §5).

``seal`` turns each top-level field into a disclosure ``[salt, name, value]`` and signs an
issuer JWT over their digests plus decoys; every salt and decoy comes from the one
``random_bytes`` it is given. ``SealedReport.present`` picks the disclosures to release.
``verify_presentation`` checks exact bytes and returns only verified claims.
Also here: amend (``supersedes``), the version rule a receiver applies, and retractions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

from exchange.canonical import (
    b64url,
    b64url_decode,
    canonical_json,
    parse_json_unverified,
    sha256,
    sha256_digest,
)
from exchange.crypto import ED25519_SIGNATURE_LEN, Signer, verify_ed25519
from exchange.errors import ConfigError, InputError, PeerDataError
from exchange.names import NODE_ID_RE
from exchange.purpose import Purpose, signed_message
from exchange.sop import (
    DEFAULT_REPORT_LIMITS,
    FIELD_NAME_RE,
    MAX_SAFE_INTEGER,
    RESERVED_FIELD_NAMES,
    SOP_NAME_RE,
    TLP_LEVELS,
    Report,
    ReportLimits,
    value_problems,
)

ALG: Final = "EdDSA"
TYP: Final = "accord-report+sd-jwt"
SD_ALG: Final = "sha-256"
SALT_BYTES: Final = 16  # 128-bit salts
DECOY_MIN: Final = 2
DECOY_SPAN: Final = 8  # decoys: DECOY_MIN + one random byte % 8, i.e. 2..9 (no modulo bias)
MAX_VERSION: Final = 2**31 - 1
PAYLOAD_CLAIMS: Final = (
    "iss",
    "jti",
    "iat",
    "sop",
    "sop_digest",
    "tlp",
    "version",
    "supersedes",
    "_sd_alg",
    "_sd",
)
HEADER_PARAMS: Final = frozenset({"alg", "typ", "kid"})
UUID7_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
SD_DIGEST_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
KID_RE: Final = re.compile(r"[\x21-\x7e]{1,128}")
MAX_SALT_CHARS: Final = 128


@dataclass(frozen=True)
class PresentationLimits:
    """Bounds on a presentation from a partner (docs/THREATS.md L01, L04)."""

    max_presentation_bytes: int = 1 << 20
    max_jwt_bytes: int = 16 * 1024
    max_disclosures: int = 64
    max_disclosure_bytes: int = 384 * 1024
    max_sd_digests: int = 128
    values: ReportLimits = field(default=DEFAULT_REPORT_LIMITS)

    def __post_init__(self) -> None:
        for name in ("max_presentation_bytes", "max_jwt_bytes", "max_disclosures"):
            _positive(self, name)
        _positive(self, "max_disclosure_bytes")
        _positive(self, "max_sd_digests")


def _positive(limits: object, name: str) -> None:
    value = getattr(limits, name)
    if type(value) is not int or value < 1:
        raise ConfigError(f"PresentationLimits.{name} must be a positive integer")


# ---- errors: one class per rejection, each with a stable code -------------------------------


class SealArgumentInvalid(InputError):
    code = "input.seal_argument"
    default_next_step = "Validate the report and pass the node's own id, kid and report id."


class SdJwtInvalid(PeerDataError):
    code = "peer.sdjwt.invalid"


class PresentationTooLarge(SdJwtInvalid):
    code = "peer.sdjwt.too_large"


class PresentationMalformed(SdJwtInvalid):
    code = "peer.sdjwt.malformed"


class HeaderRejected(SdJwtInvalid):
    code = "peer.sdjwt.bad_header"


class SignatureInvalid(SdJwtInvalid):
    code = "peer.bad_signature"


class ClaimsInvalid(SdJwtInvalid):
    code = "peer.sdjwt.bad_claims"


class WrongIssuer(SdJwtInvalid):
    code = "peer.sdjwt.wrong_issuer"


class DisclosureMalformed(SdJwtInvalid):
    code = "peer.sdjwt.bad_disclosure"


class DisclosureNotInSd(SdJwtInvalid):
    """A disclosure whose digest the issuer JWT does not carry (splice, mix-and-match)."""

    code = "peer.sdjwt.unknown_disclosure"


class DuplicateDisclosure(SdJwtInvalid):
    code = "peer.sdjwt.duplicate_disclosure"


class DuplicateClaim(SdJwtInvalid):
    code = "peer.sdjwt.duplicate_claim"


class VersionRollback(PeerDataError):
    code = "peer.rollback"


class VersionJump(PeerDataError):
    code = "peer.version_jump"


class VersionEquivocation(PeerDataError):
    """Same report and version, different issuer JWT: keep both as evidence."""

    code = "peer.equivocation"

    def __init__(self, message: str, *, held_digest: str, incoming_digest: str) -> None:
        super().__init__(message, next_step="Keep both copies as evidence and alert the partner.")
        self.held_digest = held_digest
        self.incoming_digest = incoming_digest


class VersionFork(VersionEquivocation):
    """The next version supersedes an issuer JWT other than the one we hold."""

    code = "peer.version_fork"


class ReportIdCollision(PeerDataError):
    code = "peer.report_id_collision"


class RetractionInvalid(PeerDataError):
    code = "peer.retraction_invalid"


# ---- sealing ---------------------------------------------------------------------------------


def disclosure_digest(disclosure: str) -> str:
    """RFC 9901: base64url(SHA-256(ASCII bytes of the disclosure string))."""
    return b64url(sha256(disclosure.encode("ascii")))


def issuer_jwt_digest(issuer_jwt: str) -> str:
    """``sha256:<hex>`` of the issuer JWT's exact ASCII bytes: what ``supersedes`` names."""
    return sha256_digest(issuer_jwt.encode("ascii"))


@dataclass(frozen=True)
class SealedReport:
    """The stored original: the issuer JWT (exact string) and every disclosure by field."""

    issuer_jwt: str
    disclosures: Mapping[str, str]
    issuer: str
    report_id: str
    version: int

    # Computed once per sealed report (each partner's release statement names them).
    @cached_property
    def issuer_jwt_digest(self) -> str:
        return issuer_jwt_digest(self.issuer_jwt)

    @cached_property
    def _digests(self) -> Mapping[str, str]:
        return MappingProxyType({n: disclosure_digest(d) for n, d in self.disclosures.items()})

    def disclosure_digests(self) -> dict[str, str]:
        return dict(self._digests)

    def present(self, fields: Iterable[str]) -> str:
        """``issuer-jwt~d1~d2~...~`` with exactly the named fields' disclosures."""
        if isinstance(fields, str):
            raise SealArgumentInvalid("present() takes an iterable of field names, not one str")
        chosen = sorted(set(fields))
        unknown = [name for name in chosen if name not in self.disclosures]
        if unknown:
            raise SealArgumentInvalid(f"present(): {len(unknown)} field(s) not in this report")
        return "~".join([self.issuer_jwt, *(self.disclosures[n] for n in chosen), ""])

    def full_presentation(self) -> str:
        """Every disclosure: the form to store, reopened with ``reopen_sealed``."""
        return self.present(self.disclosures)


def seal(
    report: Report,
    *,
    signer: Signer,
    kid: str,
    issuer: str,
    report_id: str,
    issued_at: int,
    version: int,
    supersedes: str | None,
    sop_digest: str,
    random_bytes: Callable[[int], bytes],
) -> SealedReport:
    """Seal a validated report; salts, then the decoy count, then decoys, from ``random_bytes``.

    Draw order: one 16-byte salt per field in sorted name order, one byte for the decoy
    count, 16 bytes per decoy. A repeated value (a broken source) is refused.
    """
    _check_seal_arguments(report, kid, issuer, report_id, issued_at, version, supersedes)
    if DIGEST_RE.fullmatch(sop_digest) is None:
        raise SealArgumentInvalid("sop_digest must be sha256:<64 hex>")

    def draw(n: int) -> bytes:
        data = random_bytes(n)
        if not isinstance(data, bytes) or len(data) != n:
            raise SealArgumentInvalid(f"random_bytes({n}) did not return {n} bytes")
        return data

    disclosures: dict[str, str] = {}
    for name in sorted(report.fields):
        value = report.fields[name]
        if _has_sd_keys(value):
            raise SealArgumentInvalid(f"field {name}: values may not use SD-JWT's reserved keys")
        try:
            array = canonical_json([b64url(draw(SALT_BYTES)), name, value])
        except InputError as e:
            raise SealArgumentInvalid(f"field {name}: value is not JSON") from e
        disclosures[name] = b64url(array)
    decoys = [
        disclosure_digest(b64url(draw(SALT_BYTES)))
        for _ in range(DECOY_MIN + draw(1)[0] % DECOY_SPAN)
    ]
    by_name = {name: disclosure_digest(d) for name, d in disclosures.items()}
    digests = [*by_name.values(), *decoys]
    if len(set(digests)) != len(digests):
        raise SealArgumentInvalid("random_bytes repeated a value; refusing to seal")
    payload = {
        "iss": issuer,
        "jti": report_id,
        "iat": issued_at,
        "sop": report.sop,
        "sop_digest": sop_digest,
        "tlp": report.tlp,
        "version": version,
        "supersedes": supersedes,
        "_sd_alg": SD_ALG,
        "_sd": sorted(digests),
    }
    header = {"alg": ALG, "typ": TYP, "kid": kid}
    signing_input = b64url(canonical_json(header)) + "." + b64url(canonical_json(payload))
    signature = signer.sign(signing_input.encode("ascii"))
    if len(signature) != ED25519_SIGNATURE_LEN:
        raise SealArgumentInvalid("signer returned a signature that is not 64 bytes")
    jwt = signing_input + "." + b64url(signature)
    sealed = SealedReport(jwt, disclosures, issuer, report_id, version)
    sealed.__dict__["_digests"] = MappingProxyType(by_name)  # computed above: the same
    return sealed


def _check_seal_arguments(
    report: Report,
    kid: str,
    issuer: str,
    report_id: str,
    issued_at: int,
    version: int,
    supersedes: str | None,
) -> None:
    checks = [
        (isinstance(kid, str) and KID_RE.fullmatch(kid) is not None, "kid: 1-128 printable ASCII"),
        (isinstance(issuer, str) and NODE_ID_RE.fullmatch(issuer) is not None, "issuer: node id"),
        (isinstance(report_id, str) and UUID7_RE.fullmatch(report_id) is not None, "jti: UUIDv7"),
        (type(issued_at) is int and 0 <= issued_at <= MAX_SAFE_INTEGER, "iat: seconds >= 0"),
        (type(version) is int and 1 <= version <= MAX_VERSION, "version: 1..2^31-1"),
        (_supersedes_ok(version, supersedes), "supersedes: null for version 1, else a digest"),
        (isinstance(report.sop, str) and SOP_NAME_RE.fullmatch(report.sop) is not None, "sop"),
        (report.tlp in TLP_LEVELS, "tlp: a TLP 2.0 level"),
        (isinstance(report.fields, dict) and bool(report.fields), "fields: a non-empty object"),
    ]
    for ok, rule in checks:
        if not ok:
            raise SealArgumentInvalid(f"cannot seal: {rule}")
    for name in report.fields:
        if FIELD_NAME_RE.fullmatch(name) is None or name in RESERVED_FIELD_NAMES:
            raise SealArgumentInvalid("cannot seal: a field name is not a valid schema field")


def _supersedes_ok(version: object, supersedes: object) -> bool:
    if version == 1:
        return supersedes is None
    return isinstance(supersedes, str) and DIGEST_RE.fullmatch(supersedes) is not None


def _has_sd_keys(value: Any) -> bool:
    """True if a value holds ``_sd``/``_sd_alg`` keys or ``{"...": x}`` array elements.

    A generic SD-JWT verifier would try to unpack those, so it would see a different
    report than we do; our reports never contain them.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "_sd" in item or "_sd_alg" in item or "..." in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# ---- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReport:
    """Claims of a presentation whose signature and every disclosure digest verified."""

    issuer: str
    kid: str
    report_id: str
    issued_at: int
    sop: str
    sop_digest: str
    tlp: str
    version: int
    supersedes: str | None
    fields: Mapping[str, Any]
    disclosures: Mapping[str, str]
    issuer_jwt: str

    @property
    def issuer_jwt_digest(self) -> str:
        return issuer_jwt_digest(self.issuer_jwt)

    def disclosure_digests(self) -> dict[str, str]:
        return {name: disclosure_digest(d) for name, d in self.disclosures.items()}


def _strict_b64url(text: str, *, what: str, error: type[SdJwtInvalid]) -> bytes:
    """Unpadded base64url in its one canonical spelling (no malleable trailing bits)."""
    try:
        raw = b64url_decode(text, what=what)
    except InputError as e:
        raise error(f"{what}: not unpadded base64url") from e
    if b64url(raw) != text:
        raise error(f"{what}: not canonical base64url")
    return raw


def _json_object_unverified(
    raw: bytes, *, what: str, max_bytes: int, error: type[SdJwtInvalid]
) -> Any:
    try:
        return parse_json_unverified(raw, what=what, max_bytes=max_bytes)
    except InputError as e:
        raise error(e.message) from e


def verify_presentation(
    presentation: str | bytes,
    issuer_public_key: bytes,
    *,
    expected_issuer: str | None = None,
    limits: PresentationLimits,
) -> VerifiedReport:
    """Verify ``issuer-jwt~d1~...~`` against the issuer's Ed25519 key; return verified claims.

    Order: size; ASCII; shape; header alg/typ/kid; the signature over the exact signing
    input; then the payload claims; then each disclosure (no repeats, digest in ``_sd``
    exactly once, 3-element shape, name not reserved or repeated). Each failure raises a
    named ``SdJwtInvalid`` subclass; nothing unverified is returned.
    """
    if isinstance(presentation, bytes):
        if len(presentation) > limits.max_presentation_bytes:
            raise PresentationTooLarge(f"presentation exceeds {limits.max_presentation_bytes} B")
        try:
            presentation = presentation.decode("ascii")
        except UnicodeDecodeError as e:
            raise PresentationMalformed("presentation: not ASCII") from e
    if not isinstance(presentation, str):
        raise PresentationMalformed("presentation: must be a string")
    if len(presentation) > limits.max_presentation_bytes:
        raise PresentationTooLarge(f"presentation exceeds {limits.max_presentation_bytes} bytes")
    if not presentation.isascii():
        raise PresentationMalformed("presentation: not ASCII")
    if not presentation.endswith("~"):
        raise PresentationMalformed("presentation: must end with '~' (no key binding JWT)")
    jwt, *disclosures, _ = presentation.split("~")
    if len(disclosures) > limits.max_disclosures:
        raise PresentationTooLarge(f"more than {limits.max_disclosures} disclosures")
    if len(jwt) > limits.max_jwt_bytes:
        raise PresentationTooLarge(f"issuer JWT exceeds {limits.max_jwt_bytes} bytes")
    parts = jwt.split(".")
    if len(parts) != 3:
        raise PresentationMalformed("issuer JWT: not a JWS compact serialisation")
    header_b64, payload_b64, signature_b64 = parts
    header_raw = _strict_b64url(header_b64, what="JWT header", error=PresentationMalformed)
    kid = _check_header_unverified(header_raw, limits)
    signature = _strict_b64url(signature_b64, what="JWT signature", error=PresentationMalformed)
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    try:
        verify_ed25519(issuer_public_key, signing_input, signature, what="issuer JWT")
    except PeerDataError as e:
        raise SignatureInvalid(e.message) from e
    payload_raw = _strict_b64url(payload_b64, what="JWT payload", error=ClaimsInvalid)
    claims = _check_claims(payload_raw, expected_issuer, limits)
    sd = set(claims["_sd"])
    fields: dict[str, Any] = {}
    by_name: dict[str, str] = {}
    seen: set[str] = set()
    for index, disclosure in enumerate(disclosures):
        what = f"disclosure {index + 1}"
        if disclosure in seen:
            raise DuplicateDisclosure(f"{what}: appears more than once")
        seen.add(disclosure)
        if len(disclosure) > limits.max_disclosure_bytes:
            raise PresentationTooLarge(f"{what}: exceeds {limits.max_disclosure_bytes} bytes")
        if disclosure_digest(disclosure) not in sd:
            raise DisclosureNotInSd(f"{what}: its digest is not in the issuer JWT's _sd")
        name, value = _check_disclosure(disclosure, what, limits)
        if name in fields or name in claims:
            raise DuplicateClaim(f"{what}: repeats a claim name")
        fields[name] = value
        by_name[name] = disclosure
    return VerifiedReport(
        issuer=claims["iss"],
        kid=kid,
        report_id=claims["jti"],
        issued_at=claims["iat"],
        sop=claims["sop"],
        sop_digest=claims["sop_digest"],
        tlp=claims["tlp"],
        version=claims["version"],
        supersedes=claims["supersedes"],
        fields=fields,
        disclosures=by_name,
        issuer_jwt=jwt,
    )


def _check_header_unverified(raw: bytes, limits: PresentationLimits) -> str:
    """Read the (not yet verified) JOSE header: exactly alg EdDSA, our typ, a kid."""
    header = _json_object_unverified(
        raw, what="JWT header", max_bytes=limits.max_jwt_bytes, error=HeaderRejected
    )
    if not isinstance(header, dict) or set(header) != HEADER_PARAMS:
        raise HeaderRejected("JWT header: must hold exactly alg, typ and kid")
    if header["alg"] != ALG:
        raise HeaderRejected(f"JWT header: alg must be {ALG}")
    if header["typ"] != TYP:
        raise HeaderRejected(f"JWT header: typ must be {TYP}")
    kid = header["kid"]
    if not isinstance(kid, str) or KID_RE.fullmatch(kid) is None:
        raise HeaderRejected("JWT header: kid must be 1-128 printable ASCII characters")
    return kid


def _check_claims(
    raw: bytes, expected_issuer: str | None, limits: PresentationLimits
) -> dict[str, Any]:
    claims = _json_object_unverified(
        raw, what="JWT payload", max_bytes=limits.max_jwt_bytes, error=ClaimsInvalid
    )
    if not isinstance(claims, dict) or set(claims) != set(PAYLOAD_CLAIMS):
        raise ClaimsInvalid(f"JWT payload: claims must be exactly {', '.join(PAYLOAD_CLAIMS)}")
    sd = claims["_sd"]
    checks = [
        (_matches(NODE_ID_RE, claims["iss"]), "iss must be a node id"),
        (_matches(UUID7_RE, claims["jti"]), "jti must be a UUIDv7"),
        (type(claims["iat"]) is int and 0 <= claims["iat"] <= MAX_SAFE_INTEGER, "iat"),
        (_matches(SOP_NAME_RE, claims["sop"]), "sop must be <name>@<major>"),
        (_matches(DIGEST_RE, claims["sop_digest"]), "sop_digest must be sha256:<hex>"),
        (claims["tlp"] in TLP_LEVELS, "tlp must be a TLP 2.0 level"),
        (type(claims["version"]) is int and 1 <= claims["version"] <= MAX_VERSION, "version"),
        (_supersedes_ok(claims["version"], claims["supersedes"]), "supersedes vs version"),
        (claims["_sd_alg"] == SD_ALG, f"_sd_alg must be {SD_ALG}"),
        (isinstance(sd, list) and all(_matches(SD_DIGEST_RE, d) for d in sd), "_sd digests"),
    ]
    for ok, rule in checks:
        if not ok:
            raise ClaimsInvalid(f"JWT payload: {rule}")
    if len(sd) > limits.max_sd_digests:
        raise PresentationTooLarge(f"JWT payload: more than {limits.max_sd_digests} _sd digests")
    if len(set(sd)) != len(sd):
        raise ClaimsInvalid("JWT payload: _sd repeats a digest")
    if expected_issuer is not None and claims["iss"] != expected_issuer:
        raise WrongIssuer("JWT payload: iss is not the expected issuer")
    return claims


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _check_disclosure(disclosure: str, what: str, limits: PresentationLimits) -> tuple[str, Any]:
    raw = _strict_b64url(disclosure, what=what, error=DisclosureMalformed)
    array = _json_object_unverified(
        raw, what=what, max_bytes=limits.max_disclosure_bytes, error=DisclosureMalformed
    )
    if not isinstance(array, list) or len(array) != 3:
        raise DisclosureMalformed(f"{what}: must be a 3-element array [salt, name, value]")
    salt, name, value = array
    if not isinstance(salt, str) or not 1 <= len(salt) <= MAX_SALT_CHARS:
        raise DisclosureMalformed(f"{what}: salt must be a string of 1-{MAX_SALT_CHARS} chars")
    if not isinstance(name, str) or name in ("_sd", "..."):
        raise DisclosureMalformed(f"{what}: claim name must be a string other than _sd and ...")
    if FIELD_NAME_RE.fullmatch(name) is None:
        raise DisclosureMalformed(f"{what}: claim name is not a schema field name")
    if name in RESERVED_FIELD_NAMES:
        raise DuplicateClaim(f"{what}: claim name collides with a reserved JWT claim")
    problems = value_problems(value, path="value", limits=limits.values)
    if problems:
        rules = ", ".join(sorted({p.rule for p in problems}))
        raise DisclosureMalformed(f"{what}: value breaks {rules}")
    if _has_sd_keys(value):
        raise DisclosureMalformed(f"{what}: value holds SD-JWT reserved keys")
    return name, value


def reopen_sealed(
    full_presentation: str, issuer_public_key: bytes, *, limits: PresentationLimits
) -> SealedReport:
    """Re-verify a stored ``SealedReport.full_presentation()`` and rebuild the original."""
    verified = verify_presentation(full_presentation, issuer_public_key, limits=limits)
    return SealedReport(
        verified.issuer_jwt,
        dict(verified.disclosures),
        verified.issuer,
        verified.report_id,
        verified.version,
    )


# ---- versions: amend, rollback, duplicate, equivocation ----------------------------------------


class VersionOutcome(StrEnum):
    NEW = "new"  # first version of this report we hold: store it
    NEWER = "newer"  # supersedes what we hold: store it, keep the old one as history
    DUPLICATE = "duplicate"  # the exact issuer JWT we hold: acknowledge, change nothing


@dataclass(frozen=True)
class HeldVersion:
    """What a receiver holds for one report id: its issuer, version and JWT digest."""

    issuer: str
    version: int
    issuer_jwt_digest: str


def check_version(
    held: HeldVersion | None, incoming: VerifiedReport, *, max_jump: int = 1000
) -> VersionOutcome:
    """The receiver's version rule (docs/THREATS.md P01, P02, P07, P11); pure.

    Newer is accepted (if the immediate successor, its ``supersedes`` must name what we
    hold), older is a rollback, the same version is a duplicate when the issuer JWT is
    byte-identical and an equivocation otherwise.
    """
    base = 0 if held is None else held.version
    if incoming.version - base > max_jump:
        raise VersionJump(f"version jumps by more than {max_jump}")
    if held is None:
        return VersionOutcome.NEW
    if incoming.issuer != held.issuer:
        raise ReportIdCollision("report id already belongs to another issuer")
    digest = incoming.issuer_jwt_digest
    if incoming.version < held.version:
        raise VersionRollback("an older version of a report we hold a newer version of")
    if incoming.version == held.version:
        if digest == held.issuer_jwt_digest:
            return VersionOutcome.DUPLICATE
        raise VersionEquivocation(
            "same report version with a different issuer JWT",
            held_digest=held.issuer_jwt_digest,
            incoming_digest=digest,
        )
    if incoming.version == held.version + 1 and incoming.supersedes != held.issuer_jwt_digest:
        raise VersionFork(
            "the next version supersedes an issuer JWT we do not hold",
            held_digest=held.issuer_jwt_digest,
            incoming_digest=digest,
        )
    return VersionOutcome.NEWER


# ---- retraction --------------------------------------------------------------------------------

RETRACTION_TYPE: Final = "accord.retraction/v1"
RETRACTION_REASONS: Final = ("erroneous", "withdrawn", "duplicate", "source-compromised")
MAX_RETRACTION_BYTES: Final = 4096


@dataclass(frozen=True)
class Retraction:
    """The issuer withdraws a report, naming the latest version and its issuer JWT digest.

    The reason is a code, not free text: a retraction is logged, and no text enters logs.
    """

    issuer: str
    report_id: str
    version: int
    issuer_jwt_digest: str
    reason: str
    retracted_at: int

    def statement(self) -> bytes:
        """The canonical JSON bytes that are signed."""
        problems = _retraction_problems(self)
        if problems:
            raise SealArgumentInvalid(f"retraction: {problems[0]}")
        return canonical_json(
            {
                "type": RETRACTION_TYPE,
                "issuer": self.issuer,
                "report_id": self.report_id,
                "version": self.version,
                "issuer_jwt_digest": self.issuer_jwt_digest,
                "reason": self.reason,
                "retracted_at": self.retracted_at,
            }
        )


@dataclass(frozen=True)
class SignedRetraction:
    statement: bytes
    signature: bytes


def _retraction_problems(r: Retraction) -> list[str]:
    checks = [
        (_matches(NODE_ID_RE, r.issuer), "issuer must be a node id"),
        (_matches(UUID7_RE, r.report_id), "report_id must be a UUIDv7"),
        (type(r.version) is int and 1 <= r.version <= MAX_VERSION, "version out of range"),
        (_matches(DIGEST_RE, r.issuer_jwt_digest), "issuer_jwt_digest must be sha256:<hex>"),
        (r.reason in RETRACTION_REASONS, f"reason must be one of {', '.join(RETRACTION_REASONS)}"),
        (type(r.retracted_at) is int and 0 <= r.retracted_at <= MAX_SAFE_INTEGER, "retracted_at"),
    ]
    return [rule for ok, rule in checks if not ok]


def sign_retraction(retraction: Retraction, signer: Signer) -> SignedRetraction:
    statement = retraction.statement()
    return SignedRetraction(statement, signer.sign(signed_message(Purpose.RETRACTION, statement)))


def verify_retraction(
    statement: bytes,
    signature: bytes,
    issuer_public_key: bytes,
    *,
    expected_issuer: str | None = None,
) -> Retraction:
    """Verify the signature over the exact bytes first, then read the statement."""
    if len(statement) > MAX_RETRACTION_BYTES:
        raise RetractionInvalid(f"retraction exceeds {MAX_RETRACTION_BYTES} bytes")
    verify_ed25519(
        issuer_public_key,
        signed_message(Purpose.RETRACTION, statement),
        signature,
        what="retraction",
    )
    try:
        data = parse_json_unverified(statement, what="retraction", max_bytes=MAX_RETRACTION_BYTES)
    except InputError as e:
        raise RetractionInvalid(e.message) from e
    keys = {"type", "issuer", "report_id", "version", "issuer_jwt_digest", "reason"}
    if not isinstance(data, dict) or set(data) != keys | {"retracted_at"}:
        raise RetractionInvalid("retraction: fields must be exactly those of accord.retraction/v1")
    if data["type"] != RETRACTION_TYPE:
        raise RetractionInvalid(f"retraction: type must be {RETRACTION_TYPE}")
    data.pop("type")
    retraction = Retraction(**data)
    problems = _retraction_problems(retraction)
    if problems:
        raise RetractionInvalid(f"retraction: {problems[0]}")
    if canonical_json({"type": RETRACTION_TYPE, **data}) != statement:
        raise RetractionInvalid("retraction: statement is not in canonical JSON form")
    if expected_issuer is not None and retraction.issuer != expected_issuer:
        raise RetractionInvalid("retraction: issuer is not the expected issuer")
    return retraction


def check_retraction(held: HeldVersion | None, retraction: Retraction) -> None:
    """A retraction applies to a report we hold, from its issuer, at or after our version."""
    if held is None:
        raise RetractionInvalid("retraction names a report we do not hold")
    if retraction.issuer != held.issuer:
        raise ReportIdCollision("retraction of a report that belongs to another issuer")
    if retraction.version < held.version:
        raise VersionRollback("retraction names an older version than the one we hold")
    if retraction.version == held.version and (
        retraction.issuer_jwt_digest != held.issuer_jwt_digest
    ):
        raise VersionEquivocation(
            "retraction names a different issuer JWT for the version we hold",
            held_digest=held.issuer_jwt_digest,
            incoming_digest=retraction.issuer_jwt_digest,
        )


__all__ = [
    "ALG",
    "TYP",
    "ClaimsInvalid",
    "DisclosureMalformed",
    "DisclosureNotInSd",
    "DuplicateClaim",
    "DuplicateDisclosure",
    "HeaderRejected",
    "HeldVersion",
    "PresentationLimits",
    "PresentationMalformed",
    "PresentationTooLarge",
    "ReportIdCollision",
    "Retraction",
    "RetractionInvalid",
    "SdJwtInvalid",
    "SealArgumentInvalid",
    "SealedReport",
    "SignatureInvalid",
    "SignedRetraction",
    "VerifiedReport",
    "VersionEquivocation",
    "VersionFork",
    "VersionJump",
    "VersionOutcome",
    "VersionRollback",
    "WrongIssuer",
    "check_retraction",
    "check_version",
    "disclosure_digest",
    "issuer_jwt_digest",
    "reopen_sealed",
    "seal",
    "sign_retraction",
    "verify_presentation",
    "verify_retraction",
]
