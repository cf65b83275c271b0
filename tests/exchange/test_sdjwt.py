"""SD-JWT sealing and verification: docs/DESIGN.md §5, docs/THREATS.md P01, P04, P07, P11, L01."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto.jwk import JWK
from jwcrypto.jws import InvalidJWSSignature
from nacl.signing import SigningKey
from sd_jwt.verifier import SDJWTVerifier

from exchange.canonical import b64url, canonical_json
from exchange.errors import ConfigError, PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.sdjwt import (
    TYP,
    ClaimsInvalid,
    DisclosureMalformed,
    DisclosureNotInSd,
    DuplicateClaim,
    DuplicateDisclosure,
    HeaderRejected,
    HeldVersion,
    PresentationLimits,
    PresentationMalformed,
    PresentationTooLarge,
    ReportIdCollision,
    Retraction,
    RetractionInvalid,
    SdJwtInvalid,
    SealArgumentInvalid,
    SealedReport,
    SignatureInvalid,
    VerifiedReport,
    VersionEquivocation,
    VersionFork,
    VersionJump,
    VersionOutcome,
    VersionRollback,
    WrongIssuer,
    check_retraction,
    check_version,
    disclosure_digest,
    issuer_jwt_digest,
    reopen_sealed,
    seal,
    sign_retraction,
    verify_presentation,
    verify_retraction,
)
from exchange.sop import Report, SchemaRegistry, check_report_document
from sop import load_shipped_schemas

REPORT_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
OTHER_ID = "01890a5d-ac96-774b-8cce-b302099a8058"
LIMITS = PresentationLimits()
REGISTRY = SchemaRegistry.from_documents(load_shipped_schemas())


class Ed25519Signer:
    """A test signer (the real ones live in keys/)."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(hashlib.sha256(seed).digest())

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


class CountingRandom:
    """Deterministic, never-repeating bytes: SHA-256 of a seed and a counter."""

    def __init__(self, seed: str) -> None:
        self.seed, self.counter, self.drawn = seed, 0, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha256(f"{self.seed}/{self.counter}".encode()).digest()
        self.drawn += n
        return out[:n]


SIGNER = Ed25519Signer(b"issuer pk-moi")
OTHER_SIGNER = Ed25519Signer(b"someone else")


def threat_fields() -> dict[str, Any]:
    return {
        "title": "Planned attack on convoy route near Gwadar port",
        "threat_type": "armed-attack",
        "severity": "high",
        "region": "Balochistan",
        "site": "Port access road",
        "location": {"lat": 25.1264, "lon": 62.3225},
        "time_window": {"start": "2026-06-01T00:00:00Z", "end": "2026-06-07T23:59:59Z"},
        "indicators": ["White pickup seen photographing the gate"],
        "recommended_actions": ["Suspend road moves"],
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    }


def make_sealed(
    fields: dict[str, Any] | None = None,
    *,
    version: int = 1,
    supersedes: str | None = None,
    report_id: str = REPORT_ID,
    seed: str = "r",
    signer: Ed25519Signer = SIGNER,
    issuer: str = "pk-moi",
    tlp: str = "amber",
) -> SealedReport:
    report = Report("threat-alert@1", tlp, fields if fields is not None else threat_fields())
    return seal(
        report,
        signer=signer,
        kid="pk-moi/identity/1",
        issuer=issuer,
        report_id=report_id,
        issued_at=1_780_000_000,
        version=version,
        supersedes=supersedes,
        sop_digest=REGISTRY.digest("threat-alert@1"),
        random_bytes=CountingRandom(seed),
    )


def verify(presentation: str, **kw: Any) -> VerifiedReport:
    return verify_presentation(
        presentation, SIGNER.public_key, limits=kw.pop("limits", LIMITS), **kw
    )


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_json(text: str) -> Any:
    return json.loads(unb64(text))


# ---- sealing --------------------------------------------------------------------------------


def test_seal_is_reproducible_from_the_random_source() -> None:
    assert make_sealed() == make_sealed()
    assert make_sealed().issuer_jwt != make_sealed(seed="other").issuer_jwt


def test_issuer_jwt_header_and_payload_follow_design() -> None:
    sealed = make_sealed()
    header_b64, payload_b64, signature_b64 = sealed.issuer_jwt.split(".")
    assert decode_json(header_b64) == {"alg": "EdDSA", "typ": TYP, "kid": "pk-moi/identity/1"}
    payload = decode_json(payload_b64)
    assert set(payload) == {
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
    }
    assert payload["_sd_alg"] == "sha-256"
    assert payload["_sd"] == sorted(payload["_sd"])
    decoys = len(payload["_sd"]) - len(threat_fields())
    assert 2 <= decoys <= 9
    assert set(sealed.disclosure_digests().values()) < set(payload["_sd"])
    assert len(unb64(signature_b64)) == 64
    for name in threat_fields():
        assert name not in unb64(payload_b64).decode()


def test_disclosures_are_rfc9901_arrays_with_128_bit_salts() -> None:
    sealed = make_sealed()
    for name, disclosure in sealed.disclosures.items():
        assert "=" not in disclosure
        salt, claim, value = decode_json(disclosure)
        assert claim == name and value == threat_fields()[name]
        assert len(unb64(salt)) == 16
        expected = b64url(hashlib.sha256(disclosure.encode("ascii")).digest())
        assert disclosure_digest(disclosure) == expected


def test_all_randomness_comes_from_the_injected_source() -> None:
    source = CountingRandom("x")
    report = Report("threat-alert@1", "red", {"title": "abc", "severity": "low"})
    sealed = seal(
        report,
        signer=SIGNER,
        kid="k",
        issuer="pk-moi",
        report_id=REPORT_ID,
        issued_at=0,
        version=1,
        supersedes=None,
        sop_digest="sha256:" + "0" * 64,
        random_bytes=source,
    )
    sd = decode_json(sealed.issuer_jwt.split(".")[1])["_sd"]
    assert source.drawn == 16 * 2 + 1 + 16 * (len(sd) - 2)


def test_a_repeating_random_source_is_refused() -> None:
    report = Report("threat-alert@1", "red", {"title": "abc"})
    with pytest.raises(SealArgumentInvalid):
        seal(
            report,
            signer=SIGNER,
            kid="k",
            issuer="pk-moi",
            report_id=REPORT_ID,
            issued_at=0,
            version=1,
            supersedes=None,
            sop_digest="sha256:" + "0" * 64,
            random_bytes=lambda n: b"\x07" * n,
        )


@pytest.mark.parametrize(
    "change",
    [
        {"issuer": "PK_MOI"},
        {"report_id": "not-a-uuid"},
        {"report_id": "01890a5d-ac96-474b-bcce-b302099a8057"},  # UUIDv4
        {"version": 0},
        {"version": 2},  # version 2 without supersedes
        {"supersedes": "sha256:" + "a" * 64},  # version 1 with supersedes
        {"tlp": "white"},
        {"fields": {"_sd": 1}},
        {"fields": {"iss": "x"}},
        {"fields": {}},
        {"fields": {"title": {"_sd": ["x"]}}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_seal_refuses_bad_arguments(change: dict[str, Any]) -> None:
    args: dict[str, Any] = {"version": 1, "supersedes": None, "issuer": "pk-moi"}
    args.update(change)
    fields = args.pop("fields", None)
    tlp = args.pop("tlp", "amber")
    with pytest.raises(SealArgumentInvalid):
        make_sealed(fields, tlp=tlp, **args)


# ---- presentation --------------------------------------------------------------------------


def test_present_exact_subset_and_verify() -> None:
    sealed = make_sealed()
    presentation = sealed.present(["title", "location"])
    parts = presentation.split("~")
    assert parts[0] == sealed.issuer_jwt and parts[-1] == ""
    assert set(parts[1:-1]) == {sealed.disclosures["title"], sealed.disclosures["location"]}
    verified = verify(presentation)
    assert dict(verified.fields) == {
        "title": threat_fields()["title"],
        "location": threat_fields()["location"],
    }
    assert verified.issuer == "pk-moi" and verified.report_id == REPORT_ID
    assert verified.version == 1 and verified.supersedes is None
    assert verified.tlp == "amber" and verified.sop == "threat-alert@1"
    assert verified.kid == "pk-moi/identity/1"
    assert verified.issuer_jwt == sealed.issuer_jwt
    assert verified.issuer_jwt_digest == sealed.issuer_jwt_digest
    assert verified.disclosure_digests() == {
        n: d for n, d in sealed.disclosure_digests().items() if n in ("title", "location")
    }


def test_present_nothing_still_verifies() -> None:
    verified = verify(make_sealed().present([]))
    assert dict(verified.fields) == {}


def test_present_refuses_unknown_field_and_bare_string() -> None:
    sealed = make_sealed()
    with pytest.raises(SealArgumentInvalid):
        sealed.present(["nope"])
    with pytest.raises(SealArgumentInvalid):
        sealed.present("title")


def test_presentation_bytes_are_accepted() -> None:
    assert verify(make_sealed().present(["title"]).encode("ascii")).fields["title"]  # type: ignore[arg-type]


def test_reopen_sealed_round_trips_the_stored_original() -> None:
    sealed = make_sealed()
    assert reopen_sealed(sealed.full_presentation(), SIGNER.public_key, limits=LIMITS) == sealed


# ---- tampering (docs/THREATS.md P04 and friends) --------------------------------------------------


def _jwt_parts(p: str) -> tuple[str, str, str, list[str]]:
    jwt, *ds, _ = p.split("~")
    h, pl, s = jwt.split(".")
    return h, pl, s, ds


def _join(h: str, pl: str, s: str, ds: list[str]) -> str:
    return "~".join([f"{h}.{pl}.{s}", *ds, ""])


def _reencode(text: str, edit: Callable[[Any], Any]) -> str:
    return b64url(json.dumps(edit(decode_json(text))).encode())


def _edit_disclosure(index: int, edit: Callable[[list[Any]], list[Any]]) -> Callable[[str], str]:
    def tamper(p: str) -> str:
        h, pl, s, ds = _jwt_parts(p)
        ds[index] = _reencode(ds[index], edit)
        return _join(h, pl, s, ds)

    return tamper


def _edit_header(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[str], str]:
    def tamper(p: str) -> str:
        h, pl, s, ds = _jwt_parts(p)
        return _join(_reencode(h, edit), pl, s, ds)

    return tamper


def _edit_payload(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[str], str]:
    def tamper(p: str) -> str:
        h, pl, s, ds = _jwt_parts(p)
        return _join(h, _reencode(pl, edit), s, ds)

    return tamper


def _flip_signature_byte(p: str) -> str:
    h, pl, s, ds = _jwt_parts(p)
    raw = bytearray(unb64(s))
    raw[10] ^= 0x01
    return _join(h, pl, b64url(bytes(raw)), ds)


def _truncate_signature(p: str) -> str:
    h, pl, s, ds = _jwt_parts(p)
    return _join(h, pl, b64url(unb64(s)[:63]), ds)


def _respell_signature(p: str) -> str:
    """Same 64 bytes, non-canonical last character (trailing bits set)."""
    h, pl, s, ds = _jwt_parts(p)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(s[-1])
    respelled = s[:-1] + alphabet[last | 0x01]
    assert unb64(respelled) == unb64(s) and respelled != s
    return _join(h, pl, respelled, ds)


def _forged_disclosure(p: str) -> str:
    extra = b64url(json.dumps(["c2FsdHNhbHRzYWx0c2FsdA", "severity", "low"]).encode())
    return p + extra + "~"


def _duplicate(p: str) -> str:
    h, pl, s, ds = _jwt_parts(p)
    return _join(h, pl, s, [*ds, ds[0]])


def _splice_other_report(p: str) -> str:
    other = make_sealed(report_id=OTHER_ID, seed="other report")
    h, pl, s, ds = _jwt_parts(p)
    return _join(h, pl, s, [*ds, other.disclosures["source"]])


def _v1_disclosures_with_v2_jwt(p: str) -> str:
    v1 = make_sealed()
    v2 = make_sealed(version=2, supersedes=v1.issuer_jwt_digest, seed="v2")
    return "~".join([v2.issuer_jwt, v1.disclosures["title"], ""])


def _v2_disclosures_with_v1_jwt(p: str) -> str:
    v1 = make_sealed()
    v2 = make_sealed(version=2, supersedes=v1.issuer_jwt_digest, seed="v2")
    return "~".join([v1.issuer_jwt, v2.disclosures["title"], ""])


def _swap_jwt_from_other_report(p: str) -> str:
    other = make_sealed(report_id=OTHER_ID, seed="other report")
    _, *ds, _ = p.split("~")
    return "~".join([other.issuer_jwt, *ds, ""])


def _sign_other_key(p: str) -> str:
    return make_sealed(signer=OTHER_SIGNER).present(["title"])


TAMPER = [
    (
        "p04_disclosure_value_changed",
        _edit_disclosure(0, lambda d: [d[0], d[1], "x"]),
        DisclosureNotInSd,
    ),
    (
        "p04_disclosure_salt_changed",
        _edit_disclosure(0, lambda d: ["AAAA" + d[0], d[1], d[2]]),
        DisclosureNotInSd,
    ),
    (
        "p04_disclosure_renamed",
        _edit_disclosure(0, lambda d: [d[0], "summary", d[2]]),
        DisclosureNotInSd,
    ),
    ("p04_disclosure_not_in_sd", _forged_disclosure, DisclosureNotInSd),
    ("p04_disclosure_duplicated", _duplicate, DuplicateDisclosure),
    ("p04_splice_from_other_report", _splice_other_report, DisclosureNotInSd),
    ("p04_other_reports_jwt", _swap_jwt_from_other_report, DisclosureNotInSd),
    ("p04_v1_disclosures_v2_jwt", _v1_disclosures_with_v2_jwt, DisclosureNotInSd),
    ("p04_v2_disclosures_v1_jwt", _v2_disclosures_with_v1_jwt, DisclosureNotInSd),
    ("header_alg_none", _edit_header(lambda h: {**h, "alg": "none"}), HeaderRejected),
    ("header_alg_hs256", _edit_header(lambda h: {**h, "alg": "HS256"}), HeaderRejected),
    ("header_typ_changed", _edit_header(lambda h: {**h, "typ": "JWT"}), HeaderRejected),
    ("header_extra_param", _edit_header(lambda h: {**h, "crit": ["x"]}), HeaderRejected),
    ("header_kid_changed", _edit_header(lambda h: {**h, "kid": "other"}), SignatureInvalid),
    ("header_reordered", _edit_header(lambda h: dict(reversed(h.items()))), SignatureInvalid),
    ("payload_tlp_lowered", _edit_payload(lambda pl: {**pl, "tlp": "clear"}), SignatureInvalid),
    ("payload_version_bumped", _edit_payload(lambda pl: {**pl, "version": 9}), SignatureInvalid),
    (
        "payload_sd_extended",
        _edit_payload(lambda pl: {**pl, "_sd": [*pl["_sd"], "A" * 43]}),
        SignatureInvalid,
    ),
    ("signature_bit_flipped", _flip_signature_byte, SignatureInvalid),
    ("signature_respelled", _respell_signature, PresentationMalformed),
    ("signature_truncated", _truncate_signature, SignatureInvalid),
    ("signed_by_other_key", _sign_other_key, SignatureInvalid),
    ("no_trailing_tilde", lambda p: p[:-1], PresentationMalformed),
    (
        "key_binding_jwt_appended",
        lambda p: p + "eyJhbGciOiJFZERTQSJ9.e30.AA",
        PresentationMalformed,
    ),
    ("empty_disclosure", lambda p: p + "~", DisclosureNotInSd),
    ("not_jws_compact", lambda p: "abc~", PresentationMalformed),
    ("non_ascii", lambda p: p.replace("~", "~\u00e9", 1), PresentationMalformed),
]


@pytest.mark.parametrize(("case", "tamper", "error"), TAMPER, ids=[t[0] for t in TAMPER])
def test_tampered_presentation_is_rejected(
    case: str, tamper: Callable[[str], str], error: type[SdJwtInvalid]
) -> None:
    original = make_sealed().present(["title", "severity", "location"])
    with pytest.raises(error) as info:
        verify(tamper(original))
    assert isinstance(info.value, PeerDataError)
    assert info.value.code == error.code
    assert "Balochistan" not in info.value.message and "Gwadar" not in info.value.message


def test_wrong_expected_issuer_is_rejected() -> None:
    presentation = make_sealed().present(["title"])
    assert verify(presentation, expected_issuer="pk-moi").issuer == "pk-moi"
    with pytest.raises(WrongIssuer):
        verify(presentation, expected_issuer="cn-mps")


@pytest.mark.parametrize(
    ("limits", "fields"),
    [
        (PresentationLimits(max_presentation_bytes=500), ["title"]),
        (PresentationLimits(max_disclosures=2), ["title", "severity", "region"]),
        (PresentationLimits(max_jwt_bytes=200), ["title"]),
        (PresentationLimits(max_disclosure_bytes=40), ["title"]),
        (PresentationLimits(max_sd_digests=5), ["title"]),
    ],
    ids=["presentation", "disclosures", "jwt", "disclosure", "sd_digests"],
)
@pytest.mark.threat("L01")
def test_l01_limits_are_named(limits: PresentationLimits, fields: list[str]) -> None:
    with pytest.raises(PresentationTooLarge):
        verify(make_sealed().present(fields), limits=limits)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        PresentationLimits(max_disclosures=0)


# ---- validly signed but malformed content (a buggy or hostile issuer) -----------------------


def forge(
    disclosures: list[Any],
    *,
    payload_edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda p: p,
    raw: list[str] | None = None,
) -> str:
    """Sign, with the real issuer key, whatever disclosures and claims a test wants."""
    encoded = [b64url(json.dumps(d).encode()) for d in disclosures] + (raw or [])
    payload = payload_edit(
        {
            "iss": "pk-moi",
            "jti": REPORT_ID,
            "iat": 1,
            "sop": "threat-alert@1",
            "sop_digest": "sha256:" + "0" * 64,
            "tlp": "green",
            "version": 1,
            "supersedes": None,
            "_sd_alg": "sha-256",
            "_sd": sorted({disclosure_digest(d) for d in encoded}),
        }
    )
    header = {"alg": "EdDSA", "typ": TYP, "kid": "k"}
    signing_input = b64url(canonical_json(header)) + "." + b64url(canonical_json(payload))
    signature = SIGNER.sign(signing_input.encode("ascii"))
    return "~".join([signing_input + "." + b64url(signature), *encoded, ""])


SALT = "c2FsdHNhbHRzYWx0c2FsdA"
MALFORMED = [
    ("two_element_disclosure", forge([[SALT, "title"]]), DisclosureMalformed),
    ("four_element_disclosure", forge([[SALT, "title", "x", "y"]]), DisclosureMalformed),
    ("object_disclosure", forge([{"salt": SALT}]), DisclosureMalformed),
    ("salt_not_string", forge([[1, "title", "x"]]), DisclosureMalformed),
    ("name_not_string", forge([[SALT, 5, "x"]]), DisclosureMalformed),
    ("name_sd", forge([[SALT, "_sd", ["x"]]]), DisclosureMalformed),
    ("name_ellipsis", forge([[SALT, "...", "x"]]), DisclosureMalformed),
    ("name_is_jwt_claim", forge([[SALT, "iss", "cn-mps"]]), DuplicateClaim),
    ("name_is_tlp", forge([[SALT, "tlp", "clear"]]), DuplicateClaim),
    ("same_name_twice", forge([[SALT, "title", "a"], [SALT + "x", "title", "b"]]), DuplicateClaim),
    ("nested_sd_in_value", forge([[SALT, "title", {"_sd": ["x"]}]]), DisclosureMalformed),
    ("array_ellipsis_in_value", forge([[SALT, "title", [{"...": "x"}]]]), DisclosureMalformed),
    ("huge_integer_value", forge([[SALT, "title", 2**60]]), DisclosureMalformed),
    (
        "lone_surrogate_value",
        forge([], raw=[b64url(b'["s","title","\\ud800"]')]),
        DisclosureMalformed,
    ),
    (
        "invalid_utf8_disclosure",
        forge([], raw=[b64url(b'["s","title","\xff"]')]),
        DisclosureMalformed,
    ),
    (
        "duplicate_key_disclosure",
        forge([], raw=[b64url(b'["s","t",{"a":1,"a":2}]')]),
        DisclosureMalformed,
    ),
    (
        "padded_disclosure",
        forge([], raw=[base64.urlsafe_b64encode(b'["s","title","abc"]').decode()]),
        DisclosureMalformed,
    ),
    (
        "sd_repeats_digest",
        forge([], payload_edit=lambda p: {**p, "_sd": ["A" * 43, "A" * 43]}),
        ClaimsInvalid,
    ),
    ("sd_alg_sha512", forge([], payload_edit=lambda p: {**p, "_sd_alg": "sha-512"}), ClaimsInvalid),
    ("extra_claim_cnf", forge([], payload_edit=lambda p: {**p, "cnf": {}}), ClaimsInvalid),
    (
        "missing_claim",
        forge([], payload_edit=lambda p: {k: v for k, v in p.items() if k != "jti"}),
        ClaimsInvalid,
    ),
    (
        "version_2_no_supersedes",
        forge([], payload_edit=lambda p: {**p, "version": 2}),
        ClaimsInvalid,
    ),
    ("version_bool", forge([], payload_edit=lambda p: {**p, "version": True}), ClaimsInvalid),
    (
        "uuid_v4_jti",
        forge([], payload_edit=lambda p: {**p, "jti": OTHER_ID.replace("-774b-", "-474b-")}),
        ClaimsInvalid,
    ),
    ("tlp_unknown", forge([], payload_edit=lambda p: {**p, "tlp": "white"}), ClaimsInvalid),
]


@pytest.mark.parametrize(
    ("case", "presentation", "error"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_signed_but_malformed_content_is_rejected(
    case: str, presentation: str, error: type[SdJwtInvalid]
) -> None:
    with pytest.raises(error):
        verify(presentation)


def test_forge_helper_builds_verifiable_presentations() -> None:
    verified = verify(forge([[SALT, "title", "abc"]]))
    assert dict(verified.fields) == {"title": "abc"}


# ---- independent verifier (pip: sd-jwt 0.10.4, jwcrypto) -------------------------------------


def independent_view(presentation: str, public_key: bytes) -> dict[str, Any]:
    """The issuer key is an OKP JWK; sd_jwt needs no adaptation for EdDSA or our typ."""
    jwk = JWK(kty="OKP", crv="Ed25519", x=b64url(public_key))
    verifier = SDJWTVerifier(presentation, lambda issuer, header: jwk)
    payload: dict[str, Any] = verifier.get_verified_payload()
    return payload


CLAIM_NAMES = {"iss", "jti", "iat", "sop", "sop_digest", "tlp", "version", "supersedes"}


def test_independent_verifier_accepts_every_subset() -> None:
    fields = {
        k: v
        for k, v in threat_fields().items()
        if k in ("title", "severity", "location", "source", "indicators")
    }
    sealed = make_sealed(fields)
    for size in range(len(fields) + 1):
        for subset in itertools.combinations(sorted(fields), size):
            view = independent_view(sealed.present(subset), SIGNER.public_key)
            assert {k: v for k, v in view.items() if k not in CLAIM_NAMES} == {
                k: fields[k] for k in subset
            }
            assert view["jti"] == REPORT_ID and view["tlp"] == "amber"


def test_independent_verifier_rejects_a_bad_signature() -> None:
    with pytest.raises(InvalidJWSSignature):
        independent_view(_flip_signature_byte(make_sealed().present(["title"])), SIGNER.public_key)


# ---- property: any valid report, any subset ---------------------------------------------------


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values for the subset of JSON Schema the shipped pack uses."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema["properties"]
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    if kind == "array":
        return st.lists(
            from_schema(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=min(schema["maxItems"], 4),
            unique=schema.get("uniqueItems", False),
        )
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
    if kind == "number":
        return st.floats(schema["minimum"], schema["maximum"], allow_nan=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(
                min_value=dt.datetime(1900, 1, 1),
                max_value=dt.datetime(2200, 1, 1),
                timezones=st.just(dt.UTC),
            ).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"))
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        text = st.characters(blacklist_categories=("Cs", "Cc"))
        return st.text(
            text, min_size=schema.get("minLength", 0), max_size=min(schema["maxLength"], 40)
        )
    raise AssertionError(f"schema construct not covered: {schema}")


@st.composite
def report_and_subset(draw: st.DrawFn) -> tuple[Report, list[str]]:
    sop = draw(st.sampled_from(REGISTRY.names()))
    fields = draw(from_schema(REGISTRY.schema(sop)))
    tlp = draw(st.sampled_from(["clear", "green", "amber", "amber+strict", "red"]))
    subset = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    return Report(sop, tlp, fields), subset


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=report_and_subset(), seed=st.text(max_size=8))
def test_property_seal_present_verify_shows_exactly_the_subset(
    case: tuple[Report, list[str]], seed: str
) -> None:
    report, subset = case
    data = json.dumps({"sop": report.sop, "tlp": report.tlp, "fields": report.fields}).encode()
    valid = check_report_document(REGISTRY, data, "json")  # the generator makes valid reports
    sealed = seal(
        valid.report,
        signer=SIGNER,
        kid="k",
        issuer="pk-moi",
        report_id=REPORT_ID,
        issued_at=1,
        version=1,
        supersedes=None,
        sop_digest=valid.sop_digest,
        random_bytes=CountingRandom(seed),
    )
    presentation = sealed.present(subset)
    verified = verify(presentation)
    assert dict(verified.fields) == {k: valid.report.fields[k] for k in subset}

    withheld = [k for k in report.fields if k not in subset]
    visible = _decoded_pieces(presentation)
    # What the partner may see: the JWT header and payload, and each element (salt, name,
    # value) of each released disclosure. A withheld value may show up only by coinciding
    # with one of those, never anywhere else in the presentation.
    allowed = [p for p in visible if not p.startswith("[")] + [
        canonical_json(element).decode()
        for k in subset
        for element in decode_json(sealed.disclosures[k])
    ]
    for name in withheld:
        assert sealed.disclosures[name] not in presentation
        value_json = canonical_json(report.fields[name]).decode()
        if any(value_json in piece for piece in visible):
            assert any(value_json in a for a in allowed)


def _decoded_pieces(presentation: str) -> list[str]:
    jwt, *disclosures, _ = presentation.split("~")
    header, payload, _sig = jwt.split(".")
    return [unb64(x).decode() for x in (header, payload, *disclosures)]


@settings(max_examples=25, deadline=None)
@given(case=report_and_subset())
def test_property_independent_verifier_agrees(case: tuple[Report, list[str]]) -> None:
    report, subset = case
    sealed = seal(
        report,
        signer=SIGNER,
        kid="k",
        issuer="pk-moi",
        report_id=REPORT_ID,
        issued_at=1,
        version=1,
        supersedes=None,
        sop_digest=REGISTRY.digest(report.sop),
        random_bytes=CountingRandom("p"),
    )
    view = independent_view(sealed.present(subset), SIGNER.public_key)
    assert {k: v for k, v in view.items() if k not in CLAIM_NAMES} == {
        k: report.fields[k] for k in subset
    }


# ---- versions: amend, rollback, duplicate, equivocation (P01, P02, P07, P11) -----------------


def _held(sealed: SealedReport) -> HeldVersion:
    return HeldVersion(sealed.issuer, sealed.version, sealed.issuer_jwt_digest)


def _verified(sealed: SealedReport) -> VerifiedReport:
    return verify(sealed.present(["title"]))


V1 = make_sealed()
V2 = make_sealed(version=2, supersedes=V1.issuer_jwt_digest, seed="v2")
V3 = make_sealed(version=3, supersedes=V2.issuer_jwt_digest, seed="v3")


def test_amend_links_to_the_previous_issuer_jwt() -> None:
    assert V1.issuer_jwt_digest == issuer_jwt_digest(V1.issuer_jwt)
    assert V1.issuer_jwt_digest.startswith("sha256:") and len(V1.issuer_jwt_digest) == 71
    assert _verified(V2).supersedes == V1.issuer_jwt_digest


def test_first_version_is_new_and_newer_is_accepted() -> None:
    assert check_version(None, _verified(V1)) is VersionOutcome.NEW
    assert check_version(_held(V1), _verified(V2)) is VersionOutcome.NEWER
    assert check_version(_held(V1), _verified(V3)) is VersionOutcome.NEWER  # v2 not released to us


@pytest.mark.threat("P01")
def test_p01_rollback_is_rejected() -> None:
    with pytest.raises(VersionRollback) as info:
        check_version(_held(V2), _verified(V1))
    assert info.value.code == "peer.rollback"


@pytest.mark.threat("P07")
def test_p07_same_version_same_bytes_is_duplicate() -> None:
    again = verify(V2.present(["severity"]))  # another subset: same issuer JWT
    assert check_version(_held(V2), again) is VersionOutcome.DUPLICATE


@pytest.mark.threat("P07")
def test_p07_same_version_different_bytes_is_equivocation() -> None:
    twin = make_sealed(version=2, supersedes=V1.issuer_jwt_digest, seed="twin")
    with pytest.raises(VersionEquivocation) as info:
        check_version(_held(V2), _verified(twin))
    assert info.value.code == "peer.equivocation"
    assert info.value.held_digest == V2.issuer_jwt_digest
    assert info.value.incoming_digest == twin.issuer_jwt_digest


def test_next_version_superseding_another_jwt_is_a_fork() -> None:
    forked = make_sealed(version=2, supersedes="sha256:" + "b" * 64, seed="fork")
    with pytest.raises(VersionFork) as info:
        check_version(_held(V1), _verified(forked))
    assert info.value.code == "peer.version_fork"


@pytest.mark.threat("P02")
def test_p02_version_jump_is_rejected() -> None:
    far = make_sealed(version=10**6, supersedes=V1.issuer_jwt_digest, seed="far")
    with pytest.raises(VersionJump):
        check_version(_held(V1), _verified(far))
    with pytest.raises(VersionJump):
        check_version(None, _verified(far))


@pytest.mark.threat("P11")
def test_p11_report_id_of_another_issuer_is_rejected() -> None:
    theirs = make_sealed(version=2, supersedes=V1.issuer_jwt_digest, issuer="cn-mps", seed="x")
    with pytest.raises(ReportIdCollision):
        check_version(_held(V1), _verified(theirs))


def test_codes_are_distinct() -> None:
    codes = [
        e.code
        for e in (VersionRollback, VersionEquivocation, VersionFork, VersionJump, ReportIdCollision)
    ]
    assert len(set(codes)) == len(codes)
    assert VersionOutcome.DUPLICATE.value == "duplicate"


# ---- retraction ---------------------------------------------------------------------------------


RETRACTION = Retraction(
    issuer="pk-moi",
    report_id=REPORT_ID,
    version=2,
    issuer_jwt_digest=V2.issuer_jwt_digest,
    reason="erroneous",
    retracted_at=1_780_000_100,
)


def test_retraction_round_trip_and_domain() -> None:
    signed = sign_retraction(RETRACTION, SIGNER)
    assert json.loads(signed.statement)["type"] == "accord.retraction/v1"
    assert SIGNER.sign(signed_message(Purpose.RETRACTION, signed.statement)) == signed.signature
    got = verify_retraction(signed.statement, signed.signature, SIGNER.public_key)
    assert got == RETRACTION
    check_retraction(_held(V2), got)


def test_retraction_signed_for_another_purpose_is_rejected() -> None:
    statement = RETRACTION.statement()
    wrong = SIGNER.sign(signed_message(Purpose.RELEASE, statement))
    with pytest.raises(PeerDataError) as info:
        verify_retraction(statement, wrong, SIGNER.public_key)
    assert info.value.code == "peer.bad_signature"


def test_retraction_tampered_or_other_key_is_rejected() -> None:
    signed = sign_retraction(RETRACTION, SIGNER)
    tampered = signed.statement.replace(b"erroneous", b"withdrawn")
    with pytest.raises(PeerDataError):
        verify_retraction(tampered, signed.signature, SIGNER.public_key)
    with pytest.raises(PeerDataError):
        verify_retraction(signed.statement, signed.signature, OTHER_SIGNER.public_key)
    with pytest.raises(RetractionInvalid):
        verify_retraction(
            signed.statement, signed.signature, SIGNER.public_key, expected_issuer="cn-mps"
        )


def test_retraction_non_canonical_or_bad_fields_are_rejected() -> None:
    body = json.loads(RETRACTION.statement())
    cases = [
        json.dumps(body, indent=1).encode(),  # not canonical
        canonical_json({**body, "reason": "because I said so"}),
        canonical_json({**body, "extra": 1}),
        canonical_json({**body, "type": "accord.release/v1"}),
    ]
    for statement in cases:
        signature = SIGNER.sign(signed_message(Purpose.RETRACTION, statement))
        with pytest.raises(RetractionInvalid):
            verify_retraction(statement, signature, SIGNER.public_key)
    with pytest.raises(SealArgumentInvalid):
        Retraction("pk-moi", REPORT_ID, 1, "sha256:x", "erroneous", 0).statement()


def test_check_retraction_rules() -> None:
    with pytest.raises(RetractionInvalid):
        check_retraction(None, RETRACTION)
    with pytest.raises(ReportIdCollision):
        check_retraction(HeldVersion("cn-mps", 2, V2.issuer_jwt_digest), RETRACTION)
    with pytest.raises(VersionRollback):
        check_retraction(_held(V3), RETRACTION)
    with pytest.raises(VersionEquivocation):
        check_retraction(HeldVersion("pk-moi", 2, V1.issuer_jwt_digest), RETRACTION)
    check_retraction(_held(V1), RETRACTION)  # retracts a later version than we hold: fine
