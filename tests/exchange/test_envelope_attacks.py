"""Attacks on envelopes, one table row per docs/THREATS.md case, each checking its stable code.

``open_envelope`` is pure: a rejection returns nothing and changes nothing. What the caller
may do with its cursor is in the exception's type: a plain ``PeerDataError`` before the
seq check (the cursor must not move), ``ContentRejected`` after it (an authentic envelope
at ``last + 1`` whose content failed: a per-item rejection, the cursor moves past it).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from exchange.canonical import b64, canonical_json, sha256
from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.envelope import (
    INFO_PREFIX,
    MAX_SEQ,
    ContentRejected,
    Envelope,
    EnvelopeLimits,
    ReportRelease,
    RetractionRelease,
)
from exchange.errors import PeerDataError
from exchange.purpose import Purpose, signed_message
from exchange.receipt import make_receipt
from exchange.sdjwt import PresentationLimits, Retraction, seal, sign_retraction
from exchange.sop import Report
from tests.exchange.envelope_world import (
    AGREEMENTS,
    CARD_A,
    DECRYPTERS,
    DERIVED,
    ENCRYPTOR,
    KEYS,
    KID,
    NOW,
    POLICY_DIGEST,
    REGISTRY,
    RELEASED,
    REPORT_ID,
    SEALED,
    SIGNERS,
    A,
    B,
    C,
    agreement,
    card,
    content,
    counting_random,
    decrypt,
    make_sealed,
    open_env,
    seal_env,
    threat_fields,
)

GOOD = seal_env()
PRE_SEQ = {
    "peer.envelope.too_large",
    "peer.envelope.bad_header",
    "peer.envelope.wrong_recipient",
    "peer.envelope.reflected",
    "peer.envelope.wrong_sender",
    "peer.bad_signature",
    "peer.seq_jump",
}
Edit = Callable[[dict[str, Any]], None]


def rejected(env: Envelope, *, content_stage: bool | None = None, **overrides: Any) -> str:
    """Open ``env``; return the code. Checks that the error's type tells the cursor rule."""
    with pytest.raises(PeerDataError) as info:
        open_env(env, **overrides)
    if content_stage is not None:
        assert isinstance(info.value, ContentRejected) is content_stage
    return info.value.code


def craft(
    base: Envelope = GOOD,
    *,
    header: Edit | None = None,
    header_bytes: bytes | None = None,
    release: Edit | None = None,
    release_bytes: Callable[[bytes], bytes] | None = None,
    body: Edit | None = None,
    plaintext: bytes | None = None,
    release_purpose: Purpose = Purpose.RELEASE,
    envelope_purpose: Purpose = Purpose.ENVELOPE,
    signer: str = A,
) -> Envelope:
    """Re-build ``base`` with edits, then encrypt and sign it properly (a malicious partner)."""
    head = json.loads(base.header)
    if header:
        header(head)
    hb = header_bytes if header_bytes is not None else canonical_json(head)
    doc = json.loads(decrypt(base))
    rel = json.loads(base64.b64decode(doc["release"]))
    if release:
        release(rel)
    rb = canonical_json(rel)
    if release_bytes:
        rb = release_bytes(rb)
    doc["release"] = b64(rb)
    doc["release_signature"] = b64(SIGNERS[signer].sign(signed_message(release_purpose, rb)))
    if body:
        body(doc)
    pt = plaintext if plaintext is not None else canonical_json(doc)
    key = next(k for k in KEYS.values() if k.kid == head["kid"])
    ct = ENCRYPTOR.encrypt(key.suite, key.public, pt, INFO_PREFIX + hb)
    sig = SIGNERS[signer].sign(signed_message(envelope_purpose, sha256(hb) + sha256(ct)))
    return Envelope(hb, ct, sig)


def sent_by(node: str, **kwargs: Any) -> Envelope:
    """An envelope sealed by ``node`` of a report it issued."""
    return seal_env(content(sealed=make_sealed(issuer=node, signer=node)), sender=node, **kwargs)


def setter(key: str, value: Any) -> Edit:
    return lambda doc: doc.__setitem__(key, value)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ---- N03: flipped bits, truncated fields, wrong-length keys -------------------------------------


@pytest.mark.threat("N03")
def test_n03_flipped_bit_in_header_every_bit() -> None:
    header_codes = PRE_SEQ - {"peer.envelope.too_large", "peer.seq_jump"}
    for bit in range(len(GOOD.header) * 8):
        env = Envelope(flip(GOOD.header, bit), GOOD.ciphertext, GOOD.signature)
        assert rejected(env, content_stage=False) in header_codes, bit


@pytest.mark.threat("N03")
def test_n03_flipped_bit_in_ciphertext_every_byte() -> None:
    for index in range(len(GOOD.ciphertext)):
        env = Envelope(GOOD.header, flip(GOOD.ciphertext, index * 8 + index % 8), GOOD.signature)
        assert rejected(env, content_stage=False) == "peer.bad_signature", index


@pytest.mark.threat("N03")
def test_n03_flipped_bit_in_signature_every_bit() -> None:
    for bit in range(len(GOOD.signature) * 8):
        env = Envelope(GOOD.header, GOOD.ciphertext, flip(GOOD.signature, bit))
        assert rejected(env, content_stage=False) == "peer.bad_signature", bit


@pytest.mark.threat("N03")
def test_n03_flipped_bit_in_ciphertext_signed_by_the_partner_does_not_decrypt() -> None:
    bad = flip(GOOD.ciphertext, 4000)
    sig = SIGNERS[A].sign(signed_message(Purpose.ENVELOPE, sha256(GOOD.header) + sha256(bad)))
    assert rejected(Envelope(GOOD.header, bad, sig), content_stage=True) == "peer.decrypt"


@pytest.mark.parametrize(
    ("env", "code"),
    [
        (Envelope(GOOD.header[:-1], GOOD.ciphertext, GOOD.signature), "peer.envelope.bad_header"),
        (Envelope(b"", GOOD.ciphertext, GOOD.signature), "peer.envelope.bad_header"),
        (Envelope(GOOD.header, GOOD.ciphertext[:-1], GOOD.signature), "peer.bad_signature"),
        (Envelope(GOOD.header, b"", GOOD.signature), "peer.bad_signature"),
        (Envelope(GOOD.header, GOOD.ciphertext, GOOD.signature[:63]), "peer.bad_signature"),
        (Envelope(GOOD.header, GOOD.ciphertext, b""), "peer.bad_signature"),
        (Envelope(b"", b"", b""), "peer.envelope.bad_header"),
    ],
    ids=["header", "header-empty", "ct", "ct-empty", "sig", "sig-empty", "all-empty"],
)
@pytest.mark.threat("N03")
def test_n03_truncated_fields(env: Envelope, code: str) -> None:
    assert rejected(env, content_stage=False) == code


@pytest.mark.parametrize("length", [0, 31, 33, 64])
@pytest.mark.threat("N03")
def test_n03_wrong_length_identity_key(length: int) -> None:
    bad_card = card(A, identity_key=SIGNERS[A].public_key.ljust(length, b"\0")[:length])
    assert rejected(GOOD, sender_card=bad_card, content_stage=False) == "peer.bad_signature"


@pytest.mark.threat("N03")
def test_n03_truncated_hpke_ciphertext_signed_by_the_partner() -> None:
    short = GOOD.ciphertext[:10]
    sig = SIGNERS[A].sign(signed_message(Purpose.ENVELOPE, sha256(GOOD.header) + sha256(short)))
    assert rejected(Envelope(GOOD.header, short, sig), content_stage=True) == "peer.decrypt"


# ---- N06: downgrade; N02: the wrong signer on a valid session --------------------------------------


@pytest.mark.threat("N06")
def test_n06_suite_downgrade_by_the_partner() -> None:
    env = seal_env(content(suite=SUITE_HYBRID), suite=SUITE_X25519)  # sender picks X25519
    assert rejected(env, content_stage=True) == "peer.suite_downgrade"


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (setter("suite", SUITE_X25519), "peer.bad_signature"),  # network: not re-signed
        (lambda h: h.pop("suite"), "peer.envelope.bad_header"),
        (setter("suite", "X25519/HKDF_SHA256/AES_128_GCM"), "peer.envelope.bad_header"),
        (setter("type", "accord.envelope/v0"), "peer.envelope.bad_header"),
        (lambda h: h.pop("type"), "peer.envelope.bad_header"),
        (setter("kind", "amendment"), "peer.envelope.bad_header"),
        (setter("extra", 1), "peer.envelope.bad_header"),
    ],
    ids=["suite-altered", "suite-stripped", "unknown-suite", "version", "type-stripped", "kind",
         "extra-key"],
)  # fmt: skip
@pytest.mark.threat("N06")
def test_n06_header_fields_altered_or_stripped_in_transit(edit: Edit, code: str) -> None:
    head = json.loads(GOOD.header)
    edit(head)
    env = Envelope(canonical_json(head), GOOD.ciphertext, GOOD.signature)
    assert rejected(env, content_stage=False) == code


@pytest.mark.threat("N06")
def test_n06_header_not_in_canonical_form() -> None:
    spaced = json.dumps(json.loads(GOOD.header), indent=1).encode()
    env = Envelope(spaced, GOOD.ciphertext, GOOD.signature)
    assert rejected(env) == "peer.envelope.bad_header"


@pytest.mark.threat("N06")
def test_n06_partner_header_with_the_kid_of_another_suite() -> None:
    env = craft(header=setter("kid", KID[SUITE_X25519]))
    assert rejected(env, content_stage=True) == "peer.decrypt"


@pytest.mark.parametrize(
    ("env", "overrides", "code"),
    [
        (sent_by(C), {}, "peer.envelope.wrong_sender"),  # session of A, envelope of C
        (craft(signer=C), {}, "peer.bad_signature"),  # claims A, signed by C
        (
            craft(sent_by(B, recipient=A), header=setter("to", B), signer=B),
            {},
            "peer.envelope.reflected",
        ),
        (GOOD, {"sender_card": card(C)}, "peer.envelope.wrong_sender"),
        (GOOD, {"expected_sender": C}, "peer.envelope.wrong_sender"),
    ],
    ids=["from-C", "signed-by-C", "ourselves", "card-of-C", "session-of-C"],
)
@pytest.mark.threat("N02")
def test_n02_valid_session_wrong_signer(
    env: Envelope, overrides: dict[str, Any], code: str
) -> None:
    assert rejected(env, content_stage=False, **overrides) == code


# ---- P09: cross-context reuse ------------------------------------------------------------------------


@pytest.mark.threat("P09")
def test_p09_receipt_replayed_as_envelope() -> None:
    receipt = make_receipt(
        sender=A, recipient=B, first_seq=1, last_seq=1, envelope_digests=["sha256:" + "ab" * 32],
        rejections=[], received_at=NOW, signer=SIGNERS[A],
    )  # fmt: skip
    env = Envelope(receipt.statement, b"", receipt.signature)
    assert rejected(env, content_stage=False) == "peer.envelope.bad_header"


@pytest.mark.parametrize(
    ("env", "code", "content_stage"),
    [
        (craft(envelope_purpose=Purpose.RECEIPT), "peer.bad_signature", False),
        (craft(envelope_purpose=Purpose.RELEASE), "peer.bad_signature", False),
        (craft(release_purpose=Purpose.ENVELOPE), "peer.bad_signature", True),
        (craft(release_purpose=Purpose.RETRACTION), "peer.bad_signature", True),
        (seal_env(recipient=C), "peer.envelope.wrong_recipient", False),
        (sent_by(B, recipient=A), "peer.envelope.wrong_recipient", False),  # ours, back
    ],
    ids=["receipt-purpose", "release-purpose", "release-as-envelope", "retraction-purpose",
         "another-recipient", "reflected"],
)  # fmt: skip
@pytest.mark.threat("P09")
def test_p09_signatures_bound_to_purpose_and_recipient(
    env: Envelope, code: str, content_stage: bool
) -> None:
    assert rejected(env, content_stage=content_stage) == code


# ---- P11: a partner rewriting what it did not originate -------------------------------------------


def retraction_env(retraction: Retraction, signer: str = A) -> Envelope:
    real = Retraction(A, REPORT_ID, 1, SEALED.issuer_jwt_digest, "erroneous", 1_780_000_100)
    what = RetractionRelease(
        real, sign_retraction(real, SIGNERS[A]), AGREEMENTS[SUITE_HYBRID].digest, POLICY_DIGEST
    )
    forged = sign_retraction(retraction, SIGNERS[signer])
    return craft(
        seal_env(what),
        body=lambda d: d.update(
            retraction=b64(forged.statement), retraction_signature=b64(forged.signature)
        ),
    )


OUR_REPORT = make_sealed(issuer=B, signer=B, report_id="01890a5d-ac96-774b-bcce-b302099a9999")


@pytest.mark.parametrize(
    ("env", "code"),
    [
        # A seals a report claiming to be ours (iss = B), with its own key
        (seal_env(content(sealed=dataclasses.replace(make_sealed(issuer=B), issuer=A))),
         "peer.sdjwt.wrong_issuer"),
        # A forwards our own report (signed by us) as if it were its release
        (seal_env(content(sealed=dataclasses.replace(OUR_REPORT, issuer=A))), "peer.bad_signature"),
        # A retracts our report
        (retraction_env(Retraction(B, REPORT_ID, 1, SEALED.issuer_jwt_digest, "erroneous", 1)),
         "peer.retraction.wrong_issuer"),
        # A replays our own retraction (signed by us)
        (retraction_env(Retraction(B, REPORT_ID, 1, SEALED.issuer_jwt_digest, "erroneous", 1), B),
         "peer.bad_signature"),
    ],
    ids=["claims-our-iss", "forwards-our-report", "retracts-our-report", "our-retraction"],
)  # fmt: skip
@pytest.mark.threat("P11")
def test_p11_partner_rewrites_our_report(env: Envelope, code: str) -> None:
    assert rejected(env, content_stage=True) == code


# ---- P14: above the agreed ceiling -------------------------------------------------------------------


def _travel_release() -> ReportRelease:
    report = Report("travel-advisory@1", "green", {"title": "Advisory", "country": "PK"})
    sealed = seal(
        report, signer=SIGNERS[A], kid="a/1", issuer=A, report_id=REPORT_ID, issued_at=1,
        version=1, supersedes=None, sop_digest=REGISTRY.digest("travel-advisory@1"),
        random_bytes=counting_random("travel"),
    )  # fmt: skip
    return ReportRelease(sealed, ("title",), (), AGREEMENTS[SUITE_HYBRID].digest, POLICY_DIGEST)


NARROW = agreement(SUITE_HYBRID, labels=("public",))


@pytest.mark.parametrize(
    ("what", "overrides"),
    [
        (content((*RELEASED, "source")), {}),  # sensitive-source
        (content((*RELEASED, "indicators")), {}),  # tactical, not in the ceiling
        (content(sealed=make_sealed(tlp="red")), {}),  # TLP above amber
        (content(RELEASED, (("indicators", "pseudonym", "x"),)), {}),  # derived from above
        (ReportRelease(SEALED, RELEASED, (), NARROW.digest, POLICY_DIGEST), {"agreement": NARROW}),
        (_travel_release(), {}),  # a schema the agreement does not cover
    ],
    ids=["source", "indicators", "tlp-red", "derived-indicators", "narrow-labels", "schema"],
)
@pytest.mark.threat("P14")
def test_p14_above_ceiling(what: ReportRelease, overrides: dict[str, Any]) -> None:
    assert rejected(seal_env(what), content_stage=True, **overrides) == "peer.above_ceiling"


# ---- P02 and L01 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [2, 1 + 10**9, MAX_SEQ])
@pytest.mark.threat("P02")
def test_p02_seq_jump(seq: int) -> None:
    assert rejected(seal_env(seq=seq), content_stage=False) == "peer.seq_jump"


@pytest.mark.threat("P02")
def test_p02_seq_beyond_canonical_json_is_a_bad_header() -> None:
    head = json.loads(GOOD.header) | {"seq": 2**63 - 1}
    raw = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    assert rejected(craft(header_bytes=raw), content_stage=False) == "peer.envelope.bad_header"


@pytest.mark.parametrize(
    ("env", "limits", "code"),
    [
        (Envelope(GOOD.header + b" " * 2000, GOOD.ciphertext, GOOD.signature), EnvelopeLimits(),
         "peer.envelope.too_large"),
        (GOOD, EnvelopeLimits(max_ciphertext_bytes=100), "peer.envelope.too_large"),
        (Envelope(GOOD.header, GOOD.ciphertext, GOOD.signature + b"\0"), EnvelopeLimits(),
         "peer.envelope.too_large"),
        (GOOD, EnvelopeLimits(max_release_bytes=100), "peer.release.too_large"),
        (GOOD, EnvelopeLimits(max_derived=0), "peer.release.too_large"),
        (GOOD, EnvelopeLimits(presentation=PresentationLimits(max_disclosures=2)),
         "peer.sdjwt.too_large"),
    ],
    ids=["header", "ciphertext", "signature", "release", "derived-count", "disclosure-count"],
)  # fmt: skip
@pytest.mark.threat("L01")
def test_l01_oversized(env: Envelope, limits: EnvelopeLimits, code: str) -> None:
    assert rejected(env, limits=limits) == code


# ---- the release statement against the header and the presentation ---------------------------------

OTHER_UUID = "01890a5d-ac96-774b-8cce-b302099a8002"
DIGESTS = SEALED.disclosure_digests()


def _sorted_plus(field: str) -> Edit:
    return lambda r: r.__setitem__("disclosed", sorted([*r["disclosed"], DIGESTS[field]]))


def _derived(**changes: Any) -> Edit:
    return lambda r: r["derived"][0].update(changes)


def _presentation(extra: str | None = None, drop: bool = False) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        jwt, *disclosures, _ = doc["presentation"].split("~")
        disclosures = disclosures[1:] if drop else [*disclosures, *([extra] if extra else [])]
        doc["presentation"] = "~".join([jwt, *disclosures, ""])

    return edit


OTHER_REPORT = make_sealed(report_id="01890a5d-ac96-774b-bcce-b302099a7777")


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"release": setter("id", OTHER_UUID)}, "peer.release.mismatch"),
        ({"release": setter("from", C)}, "peer.release.mismatch"),
        ({"release": setter("to", C)}, "peer.release.mismatch"),
        ({"release": setter("seq", 2)}, "peer.release.mismatch"),
        ({"release": setter("kind", "retraction")}, "peer.release.mismatch"),
        ({"release": setter("report_id", OTHER_UUID)}, "peer.release.mismatch"),
        ({"release": setter("version", 2)}, "peer.release.mismatch"),
        ({"release": setter("issuer_jwt_digest", "sha256:" + "0" * 64)}, "peer.release.mismatch"),
        ({"release": setter("agreement_digest", "sha256:" + "0" * 64)}, "peer.agreement_mismatch"),
        ({"release": setter("type", "accord.receipt/v1")}, "peer.release.malformed"),
        ({"release": setter("extra", 1)}, "peer.release.malformed"),
        ({"release": setter("released_at", "yesterday")}, "peer.release.malformed"),
        ({"release": lambda r: r["disclosed"].reverse()}, "peer.release.malformed"),
        ({"release_bytes": lambda b: b.replace(b",", b", ", 1)}, "peer.release.malformed"),
        ({"release": _sorted_plus("site")}, "peer.release.disclosures"),  # lists a withheld one
        ({"release": lambda r: r["disclosed"].pop()}, "peer.release.disclosures"),
        ({"body": _presentation(SEALED.disclosures["site"])}, "peer.release.disclosures"),
        ({"body": _presentation(drop=True)}, "peer.release.disclosures"),
        (
            {"body": _presentation(OTHER_REPORT.disclosures["site"])},
            "peer.sdjwt.unknown_disclosure",
        ),
        ({"release": _derived(source=DIGESTS["title"])}, "peer.release.bad_derived"),
        ({"release": _derived(source="A" * 43)}, "peer.release.bad_derived"),
        ({"release": _derived(field="title")}, "peer.release.bad_derived"),
        ({"body": setter("extra", "x")}, "peer.envelope.bad_plaintext"),
        ({"body": setter("release", "***")}, "peer.envelope.bad_plaintext"),
        ({"body": setter("presentation", 7)}, "peer.envelope.bad_plaintext"),
        ({"plaintext": b"not json"}, "peer.envelope.bad_plaintext"),
    ],
)
def test_release_statement_must_match_header_and_presentation(
    kw: dict[str, Any], code: str
) -> None:
    assert rejected(craft(**kw), content_stage=True) == code


def test_two_derived_values_from_one_source() -> None:
    what = content(RELEASED, (*DERIVED, ("site", "pseudonym", "p")))
    env = craft(
        seal_env(what), release=lambda r: r["derived"][1].update(source=DIGESTS["location"])
    )
    assert rejected(env, content_stage=True) == "peer.release.bad_derived"


def test_a_release_that_discloses_nothing() -> None:
    env = craft(
        seal_env(content(("title",), ())),
        release=setter("disclosed", []),
        body=_presentation(drop=True),
    )
    assert rejected(env, content_stage=True) == "peer.release.empty"


# ---- schema and agreement -------------------------------------------------------------------------


def test_schema_of_disclosed_fields() -> None:
    bad = make_sealed(threat_fields() | {"severity": "extreme"})
    assert rejected(seal_env(content(sealed=bad)), content_stage=True) == "peer.schema"


def test_schema_digest_must_be_the_agreed_one() -> None:
    sealed = seal(
        Report("threat-alert@1", "amber", threat_fields()), signer=SIGNERS[A], kid="a/1",
        issuer=A, report_id=REPORT_ID, issued_at=1, version=1, supersedes=None,
        sop_digest="sha256:" + "11" * 32, random_bytes=counting_random("digest"),
    )  # fmt: skip
    assert rejected(seal_env(content(sealed=sealed)), content_stage=True) == "peer.schema"


def test_no_current_agreement() -> None:
    late = datetime(2027, 2, 1, tzinfo=UTC)
    assert rejected(GOOD, now=late, content_stage=True) == "peer.no_agreement"


def test_unknown_kid() -> None:
    assert rejected(GOOD, decrypter_for={}.get, content_stage=True) == "peer.decrypt"
    assert DECRYPTERS  # the default lookup opens it
    assert open_env(GOOD).header.seq == 1
    assert CARD_A.node == A and B != A
