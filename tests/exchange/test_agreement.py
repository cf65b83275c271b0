"""exchange.agreement: both signatures, exact bytes, purpose, validity window, ceilings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exchange import agreement as ag
from exchange.agreement import (
    NO_ONWARD,
    Agreement,
    SignedAgreement,
    ceiling_for,
    ceilings_between,
    direction,
    onward_rules,
    parse_agreement_unverified,
    parse_onward,
    parse_signed_agreement_unverified,
    propose,
    sign_agreement,
    tlp_at_most,
    tlp_rank,
    verified_signers,
    verify_agreement,
)
from exchange.canonical import b64, canonical_json, sha256_digest
from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.errors import AccordError, InputError, PeerDataError, PolicyError
from exchange.purpose import Purpose, signed_message
from keys.signers import Ed25519Signer

A, B, C = "cn-mps", "pk-moi", "zz-other"
SIGNERS = {
    A: Ed25519Signer(b"\x01" * 32),
    B: Ed25519Signer(b"\x02" * 32),
    C: Ed25519Signer(b"\x03" * 32),
}
KEYS = {node: s.public_key for node, s in SIGNERS.items()}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2027, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TA = "threat-alert@1"
TA_DIGEST = "sha256:" + "ab" * 32
TA_LABELS = {
    "title": "operational",
    "threat_type": "public",
    "severity": "public",
    "region": "public",
    "site": "operational",
    "location": "operational",
    "indicators": "tactical",
    "recommended_actions": "tactical",
    "source": "sensitive-source",
}


def make(**overrides: Any) -> Agreement:
    args: dict[str, Any] = {
        "agreement_id": "moi-mps-2026",
        "parties": [B, A],
        "schemas": {TA: TA_DIGEST},
        "ceiling": [
            direction(B, A, "amber", {TA: (["recommended_actions"], ["public", "operational"])}),
            direction(A, B, "green", {TA: ([], ["public"])}),
        ],
        "suite": SUITE_HYBRID,
        "not_before": T0,
        "not_after": T1,
    }
    args.update(overrides)
    return propose(**args)


def signed_by_both(agreement: Agreement | None = None) -> SignedAgreement:
    one = sign_agreement(agreement or make(), A, SIGNERS[A])
    return sign_agreement(one, B, SIGNERS[B])


def resign(doc: dict[str, Any], *, raw: bytes | None = None) -> SignedAgreement:
    """Both parties sign arbitrary bytes (to test what verification checks beyond signatures)."""
    data = raw if raw is not None else canonical_json(doc)
    message = signed_message(Purpose.AGREEMENT, data)
    return SignedAgreement(data, {n: SIGNERS[n].sign(message) for n in (A, B)})


# ---- building ----------------------------------------------------------------------------------


def test_propose_builds_sorted_canonical_document() -> None:
    a = make()
    doc = json.loads(a.to_bytes())
    assert doc["type"] == "accord.agreement/v1"
    assert doc["parties"] == [A, B]
    assert [(d["from"], d["to"]) for d in doc["ceiling"]] == [(A, B), (B, A)]
    assert doc["ceiling"][1]["schemas"][TA] == {
        "fields": ["recommended_actions"],
        "labels": ["operational", "public"],
    }
    assert canonical_json(doc) == a.to_bytes()
    assert parse_agreement_unverified(a.to_bytes()) == a


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"parties": [A, A]}, "two different node ids"),
        ({"parties": [A]}, "two valid node ids"),
        ({"parties": [A, "../x"]}, "two valid node ids"),
        ({"suite": "X25519/HKDF_SHA256/AES_128_GCM"}, "suite must be one of"),
        ({"schemas": {}}, "schemas must name"),
        ({"schemas": {TA: "sha256:abc"}}, "not sha256:<64 hex>"),
        ({"schemas": {"Threat Alert": TA_DIGEST}}, "name@major"),
        ({"not_after": T0}, "not_before must be earlier"),
        ({"ceiling": []}, "at least one direction"),
        ({"ceiling": [direction(A, C, "amber", {TA: ([], ["public"])})]}, "from one party"),
        ({"ceiling": [direction(A, A, "amber", {TA: ([], ["public"])})]}, "from one party"),
        ({"ceiling": [direction(A, B, "amber", {TA: ([], ["public"])})] * 2}, "appears twice"),
        ({"ceiling": [direction(A, B, "secret", {TA: ([], ["public"])})]}, "tlp_max"),
        ({"ceiling": [direction(A, B, "amber", {})]}, "at least one schema"),
        ({"ceiling": [direction(A, B, "amber", {TA: ([], [])})]}, "allows no field"),
        ({"ceiling": [direction(A, B, "amber", {TA: ([], ["*"])})]}, "unknown label"),
        ({"ceiling": [direction(A, B, "amber", {TA: (["Site"], [])})]}, "invalid field name"),
        (
            {"ceiling": [direction(A, B, "amber", {"other@1": ([], ["public"])})]},
            "not in schemas",
        ),
        ({"agreement_id": "has space"}, "id must be"),
        ({"version": 0}, "version must be"),
    ],
)
def test_propose_refuses_broken_agreements(overrides: dict[str, Any], rule: str) -> None:
    with pytest.raises(PolicyError) as e:
        make(**overrides)
    assert e.value.code == "policy.agreement_invalid"
    assert rule in e.value.message


def test_propose_checks_ceiling_fields_against_local_schemas() -> None:
    bad = [direction(A, B, "amber", {TA: (["site_name"], [])})]
    make(ceiling=bad)  # without schema labels only the shape is checked
    with pytest.raises(PolicyError, match="has no field site_name"):
        make(ceiling=bad, schema_labels={TA: TA_LABELS})
    with pytest.raises(PolicyError, match="not in the local schema pack"):
        make(schema_labels={})


def test_sign_refuses_a_node_that_is_not_a_party() -> None:
    with pytest.raises(PolicyError) as e:
        sign_agreement(make(), C, SIGNERS[C])
    assert e.value.code == "policy.not_a_party"


def test_tlp_order() -> None:
    assert [tlp_rank(t) for t in ag.TLP_LEVELS] == [0, 1, 2, 3, 4]
    assert ag.TLP_LEVELS == ("clear", "green", "amber", "amber+strict", "red")
    assert tlp_at_most("amber", "amber+strict") and not tlp_at_most("red", "amber+strict")
    assert not tlp_at_most("AMBER", "red") and not tlp_at_most("white", "red")
    with pytest.raises(InputError):
        tlp_rank("white")


def test_tlp_levels_and_labels_agree_with_the_schema_registry() -> None:
    sop = pytest.importorskip("exchange.sop")
    assert tuple(sop.TLP_LEVELS) == ag.TLP_LEVELS
    assert frozenset(sop.LABELS) == ag.LABELS


# ---- verifying ---------------------------------------------------------------------------------


def test_both_signatures_verify_and_digest_is_of_agreement_bytes() -> None:
    signed = signed_by_both()
    v = verify_agreement(signed, KEYS, NOW)
    assert v.agreement == make()
    assert v.agreement_bytes == make().to_bytes()
    assert v.digest == sha256_digest(make().to_bytes()) == signed.digest
    assert set(v.signatures) == {A, B}
    # the file/wire form round-trips and verifies the same
    again = parse_signed_agreement_unverified(signed.to_bytes())
    assert again == signed
    assert verify_agreement(signed.to_bytes(), KEYS, NOW).digest == v.digest
    assert v.signed == signed


@pytest.mark.parametrize("only", [A, B])
def test_one_signature_is_not_enough(only: str) -> None:
    one = sign_agreement(make(), only, SIGNERS[only])
    assert verified_signers(one, KEYS) == {only}
    with pytest.raises(PeerDataError) as e:
        verify_agreement(one, KEYS, NOW)
    assert e.value.code == "peer.agreement_unsigned"


def test_no_signature_at_all_is_refused() -> None:
    with pytest.raises(PeerDataError) as e:
        verify_agreement(SignedAgreement(make().to_bytes(), {}), KEYS, NOW)
    assert e.value.code == "peer.agreement_unsigned"


def test_every_single_changed_byte_is_rejected() -> None:
    signed = signed_by_both()
    data = signed.agreement_bytes
    for i in range(len(data)):
        for flip in (0x01, 0x20):
            changed = data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :]
            with pytest.raises(PeerDataError):
                verify_agreement(SignedAgreement(changed, signed.signatures), KEYS, NOW)


@pytest.mark.parametrize("who", [A, B])
def test_a_changed_signature_byte_is_rejected(who: str) -> None:
    signed = signed_by_both()
    sigs = dict(signed.signatures)
    sigs[who] = bytes([sigs[who][0] ^ 1]) + sigs[who][1:]
    with pytest.raises(PeerDataError) as e:
        verify_agreement(SignedAgreement(signed.agreement_bytes, sigs), KEYS, NOW)
    assert e.value.code == "peer.bad_signature"


@pytest.mark.parametrize("purpose", [p for p in Purpose if p is not Purpose.AGREEMENT])
def test_signature_made_for_another_purpose_is_rejected(purpose: Purpose) -> None:
    data = make().to_bytes()
    sigs = {
        A: SIGNERS[A].sign(signed_message(Purpose.AGREEMENT, data)),
        B: SIGNERS[B].sign(signed_message(purpose, data)),
    }
    with pytest.raises(PeerDataError) as e:
        verify_agreement(SignedAgreement(data, sigs), KEYS, NOW)
    assert e.value.code == "peer.bad_signature"


def test_signature_over_the_bare_bytes_is_rejected() -> None:
    data = make().to_bytes()
    sigs = {n: SIGNERS[n].sign(data) for n in (A, B)}
    with pytest.raises(PeerDataError):
        verify_agreement(SignedAgreement(data, sigs), KEYS, NOW)


def test_wrong_party_key_is_rejected() -> None:
    signed = signed_by_both()
    for node in (A, B):
        keys = {**KEYS, node: KEYS[C]}
        with pytest.raises(PeerDataError) as e:
            verify_agreement(signed, keys, NOW)
        assert e.value.code == "peer.bad_signature"
    swapped = {A: KEYS[B], B: KEYS[A]}
    with pytest.raises(PeerDataError):
        verify_agreement(signed, swapped, NOW)


def test_missing_party_key_is_rejected() -> None:
    with pytest.raises(PeerDataError) as e:
        verify_agreement(signed_by_both(), {A: KEYS[A]}, NOW)
    assert e.value.code == "peer.agreement_unknown_party"


def test_signature_by_a_third_node_is_rejected() -> None:
    signed = signed_by_both()
    message = signed_message(Purpose.AGREEMENT, signed.agreement_bytes)
    extra = {**signed.signatures, C: SIGNERS[C].sign(message)}
    with pytest.raises(PeerDataError) as e:
        verify_agreement(SignedAgreement(signed.agreement_bytes, extra), KEYS, NOW)
    assert e.value.code == "peer.agreement_invalid"


@pytest.mark.parametrize(
    ("now", "code"),
    [
        (T0 - timedelta(days=1), "policy.agreement_not_yet_valid"),
        (T0 - ag.AGREEMENT_CLOCK_SKEW - timedelta(seconds=1), "policy.agreement_not_yet_valid"),
        (T1 + ag.AGREEMENT_CLOCK_SKEW, "policy.agreement_expired"),
        (T1 + timedelta(days=400), "policy.agreement_expired"),
    ],
)
def test_outside_validity_window_is_rejected(now: datetime, code: str) -> None:
    with pytest.raises(PolicyError) as e:
        verify_agreement(signed_by_both(), KEYS, now)
    assert e.value.code == code


@pytest.mark.parametrize(
    "now",
    [T0, T0 - ag.AGREEMENT_CLOCK_SKEW, T1 - timedelta(seconds=1), T1 + timedelta(minutes=4)],
)
def test_inside_validity_window_with_documented_skew(now: datetime) -> None:
    verify_agreement(signed_by_both(), KEYS, now)


def test_no_skew_when_asked() -> None:
    with pytest.raises(PolicyError):
        verify_agreement(signed_by_both(), KEYS, T1, skew=timedelta(0))


def test_non_canonical_bytes_are_rejected_even_when_both_signed() -> None:
    doc = make().to_json()
    spaced = json.dumps(doc, indent=1).encode()
    with pytest.raises(PeerDataError) as e:
        verify_agreement(resign(doc, raw=spaced), KEYS, NOW)
    assert e.value.code == "peer.agreement_invalid"


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(suite="RSA/PKCS1"),
        lambda d: d.update(type="accord.agreement/v2"),
        lambda d: d.update(extra=1),
        lambda d: d.pop("not_after"),
        lambda d: d.update(parties=[B, A]),
        lambda d: d.update(version=True),
        lambda d: d["ceiling"][0]["schemas"][TA].update(labels=["*"]),
        lambda d: d["ceiling"][0]["schemas"][TA].update(fields=["site", "site"]),
        lambda d: d["ceiling"][0].update(to=C),
        lambda d: d.update(not_before="2026-01-01 00:00:00"),
    ],
    ids=[
        "unknown-suite",
        "other-type",
        "extra-key",
        "missing-key",
        "unsorted-parties",
        "bool-version",
        "wildcard-label",
        "duplicate-field",
        "third-party-direction",
        "bad-time",
    ],
)
def test_invalid_content_is_rejected_even_when_both_signed(change: Any) -> None:
    doc = make().to_json()
    change(doc)
    with pytest.raises(PeerDataError) as e:
        verify_agreement(resign(doc), KEYS, NOW)
    assert e.value.code == "peer.agreement_invalid"


def test_x25519_suite_is_allowed() -> None:
    v = verify_agreement(signed_by_both(make(suite=SUITE_X25519)), KEYS, NOW)
    assert v.agreement.suite == SUITE_X25519


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        canonical_json({"type": "accord.signed-agreement/v1", "agreement": 1, "signatures": {}}),
        canonical_json({"type": "accord.signed-agreement/v1", "agreement": "@@", "signatures": {}}),
        canonical_json(
            {"type": "accord.signed-agreement/v1", "agreement": "", "signatures": {"../x": "AA=="}}
        ),
        canonical_json(
            {
                "type": "accord.signed-agreement/v1",
                "agreement": b64(b"x"),
                "signatures": {A: "AA==", B: "AA==", C: "AA=="},
            }
        ),
    ],
)
def test_malformed_signed_agreement_files_are_rejected(raw: bytes) -> None:
    with pytest.raises(PeerDataError) as e:
        verify_agreement(raw, KEYS, NOW)
    assert e.value.code == "peer.agreement_invalid"


# ---- ceilings ----------------------------------------------------------------------------------


def test_ceiling_resolves_fields_and_labels_against_the_schema() -> None:
    v = verify_agreement(signed_by_both(), KEYS, NOW)
    c = ceiling_for(v, B, A, TA, TA_LABELS, TA_DIGEST)
    assert c.fields == {
        "title",
        "threat_type",
        "severity",
        "region",
        "site",
        "location",
        "recommended_actions",
    }
    assert c.tlp_max == "amber" and c.allows_tlp("amber") and not c.allows_tlp("amber+strict")
    assert (c.sender, c.receiver, c.schema, c.agreement_digest) == (B, A, TA, v.digest)
    back = ceiling_for(v, A, B, TA, TA_LABELS, TA_DIGEST)
    assert back.fields == {"threat_type", "severity", "region"} and back.tlp_max == "green"


def test_ceiling_lists_no_field_the_schema_lacks() -> None:
    v = verify_agreement(
        signed_by_both(make(ceiling=[direction(B, A, "red", {TA: (["ghost"], ["public"])})])),
        KEYS,
        NOW,
    )
    c = ceiling_for(v, B, A, TA, TA_LABELS, TA_DIGEST)
    assert c.fields == {"threat_type", "severity", "region"}


@pytest.mark.parametrize(
    ("sender", "receiver", "schema", "digest"),
    [
        (B, C, TA, TA_DIGEST),
        (C, A, TA, TA_DIGEST),
        (B, A, "incident-report@1", TA_DIGEST),
        (B, A, TA, "sha256:" + "cd" * 32),
    ],
    ids=["receiver-not-party", "sender-not-party", "schema-not-agreed", "schema-digest-differs"],
)
def test_no_ceiling_outside_the_agreement(
    sender: str, receiver: str, schema: str, digest: str
) -> None:
    v = verify_agreement(signed_by_both(), KEYS, NOW)
    with pytest.raises(PolicyError) as e:
        ceiling_for(v, sender, receiver, schema, TA_LABELS, digest)
    assert e.value.code == "policy.outside_agreement"


def test_no_ceiling_for_a_direction_the_agreement_leaves_out() -> None:
    one_way = make(ceiling=[direction(B, A, "amber", {TA: ([], ["public"])})])
    v = verify_agreement(signed_by_both(one_way), KEYS, NOW)
    ceiling_for(v, B, A, TA, TA_LABELS, TA_DIGEST)
    with pytest.raises(PolicyError, match="nothing flow"):
        ceiling_for(v, A, B, TA, TA_LABELS, TA_DIGEST)
    assert ceilings_between(v, A, B, {TA: TA_LABELS}, {TA: TA_DIGEST}) == {}


def test_ceilings_between_keeps_only_schemas_the_local_pack_matches() -> None:
    v = verify_agreement(signed_by_both(), KEYS, NOW)
    assert set(ceilings_between(v, B, A, {TA: TA_LABELS}, {TA: TA_DIGEST})) == {TA}
    assert ceilings_between(v, B, A, {TA: TA_LABELS}, {TA: "sha256:" + "00" * 32}) == {}
    assert ceilings_between(v, B, A, {}, {}) == {}


def test_peer_of() -> None:
    a = make()
    assert a.peer_of(A) == B and a.peer_of(B) == A
    with pytest.raises(PolicyError):
        a.peer_of(C)


# ---- onward dissemination (docs/adr/0014) -----------------------------------------------------

TERMS = {
    "green": ["any"],
    "amber": ["police", "counter-terrorism"],
    "schema": {TA: {"amber": ["cert"]}},
}


def _with_onward() -> Any:
    rules = parse_onward(TERMS, "send.onward", from_terms=True)
    return make(
        ceiling=[
            direction(B, A, "amber", {TA: (["recommended_actions"], ["public"])}, rules),
            direction(A, B, "green", {TA: ([], ["public"])}),
        ]
    )


def test_rules_are_signed_and_change_the_digest() -> None:
    plain, onward = signed_by_both(), signed_by_both(_with_onward())
    assert plain.digest != onward.digest
    doc = json.loads(onward.agreement_bytes)
    [mine, theirs] = doc["ceiling"]
    assert "onward" not in mine
    assert theirs["onward"] == {
        "default": {"amber": ["counter-terrorism", "police"], "green": ["any"]},
        "schemas": {TA: {"amber": ["cert"]}},
    }
    verified = verify_agreement(onward, KEYS, NOW)
    rules = onward_rules(verified, B, A)
    assert rules.allows("green", "travel-advisory@1", "military")
    assert rules.allows("amber", "incident-report@1", "police")
    assert not rules.allows("amber", TA, "police")  # the schema's rule replaces the default
    assert rules.allows("amber", TA, "cert")
    assert not rules.allows("clear", TA, "police")  # a level not listed: nobody
    assert not rules.allows("red", "incident-report@1", "counter-terrorism")
    assert not rules.allows("green", TA, "no-such-class")
    assert onward_rules(verified, A, B) is NO_ONWARD


def test_agreements_without_rules_keep_their_bytes_and_mean_nothing_onward() -> None:
    signed = signed_by_both()
    assert b'"onward"' not in signed.agreement_bytes
    rules = onward_rules(verify_agreement(signed, KEYS, NOW), B, A)
    assert rules.is_empty()
    for tlp in ("clear", "green", "amber"):
        assert not rules.allows(tlp, TA, "counter-terrorism")


@pytest.mark.parametrize(
    ("terms", "named"),
    [
        ({"purple": ["any"]}, "send.onward.purple: unknown TLP level"),
        ({"red": ["any"]}, "send.onward.red: TLP:RED never goes onward"),
        ({"green": ["polis"]}, "send.onward.green: unknown recipient class 'polis'"),
        ({"green": []}, "send.onward.green: lists no class"),
        ({"green": ["any", "police"]}, "send.onward.green: 'any' already names every class"),
        ({"green": "any"}, "send.onward.green must be a list"),
        (
            {"schema": {TA: {"amber": ["spies"]}}},
            f"send.onward.schema.{TA}.amber: unknown recipient class",
        ),
        ({"schema": {"nope": {}}}, "send.onward.schema: a schema name is not of the form"),
    ],
)
def test_bad_terms_are_refused_with_the_field_named(terms: dict[str, Any], named: str) -> None:
    with pytest.raises(InputError) as e:
        parse_onward(terms, "send.onward", from_terms=True)
    assert named in e.value.message


@pytest.mark.parametrize(
    "onward",
    [
        {"default": {"red": ["any"]}, "schemas": {}},
        {"default": {"green": ["police", "cert"]}, "schemas": {}},  # not sorted
        {"default": {}, "schemas": {}},  # vacuous: leave it out
        {"default": {"green": ["any"]}},  # missing schemas
        {"default": {}, "schemas": {"incident-report@1": {"green": ["any"]}}},  # not flowing
    ],
)
def test_signed_bytes_with_bad_rules_are_refused(onward: dict[str, Any]) -> None:
    doc = json.loads(signed_by_both().agreement_bytes)
    doc["ceiling"][1]["onward"] = onward
    signed = resign(doc)
    with pytest.raises(PeerDataError):
        parse_agreement_unverified(signed.agreement_bytes)


# ---- response rules (docs/adr/0020) ----------------------------------------------------------

# The bytes of make() as they were before response rules existed: an agreement without rules
# must keep exactly these bytes and this digest.
GOLDEN_BYTES = (
    b'{"ceiling":[{"from":"cn-mps","schemas":{"threat-alert@1":{"fields":[],"labels":["public"]}},'
    b'"tlp_max":"green","to":"pk-moi"},{"from":"pk-moi","schemas":{"threat-alert@1":{"fields":'
    b'["recommended_actions"],"labels":["operational","public"]}},"tlp_max":"amber","to":"cn-mps"}],'
    b'"id":"moi-mps-2026","not_after":"2027-01-01T00:00:00Z","not_before":"2026-01-01T00:00:00Z",'
    b'"parties":["cn-mps","pk-moi"],"schemas":{"threat-alert@1":"sha256:abababababababababababab'
    b'abababababababababababababababababababab"},"suite":"MLKEM768_X25519/HKDF_SHA256/CHACHA20_'
    b'POLY1305","type":"accord.agreement/v1","version":1}'
)
GOLDEN_DIGEST = "sha256:cdd6a8defed76cb4eeb1f79abfec06e6c6ed86175006e68d44987b12b789318e"
SEVERITIES = {TA: ["low", "moderate", "high", "critical"]}
TERMS_RULES = {
    TA: {"critical": {"acknowledge": "PT15M", "respond": "PT24H"}, "high": {"acknowledge": "PT1H"}}
}


def with_rules(raw: Any = None, **overrides: Any) -> Agreement:
    rules = ag.parse_response(TERMS_RULES if raw is None else raw, "response", from_terms=True)
    return make(response=rules, schema_severities=SEVERITIES, **overrides)


def test_agreement_without_rules_keeps_its_bytes_and_digest() -> None:
    a = make()
    assert a.to_bytes() == GOLDEN_BYTES
    assert sha256_digest(a.to_bytes()) == GOLDEN_DIGEST
    assert b"response" not in a.to_bytes()
    assert parse_agreement_unverified(GOLDEN_BYTES).response == {}
    assert verify_agreement(signed_by_both(a), KEYS, NOW).response_rule(TA, "critical") is None


def test_rules_are_canonical_signed_and_read_back() -> None:
    a = with_rules()
    doc = json.loads(a.to_bytes())
    assert doc["response"] == {
        TA: {
            "critical": {"acknowledge": "PT15M", "respond": "P1D"},
            "high": {"acknowledge": "PT1H"},
        }
    }
    v = verify_agreement(signed_by_both(a), KEYS, NOW)
    assert v.digest != GOLDEN_DIGEST
    critical = v.response_rule(TA, "critical")
    assert critical == ag.ResponseRule(timedelta(minutes=15), timedelta(hours=24))
    assert v.response_rule(TA, "high") == ag.ResponseRule(timedelta(hours=1), None)
    assert v.response_rule(TA, "low") is None
    assert v.response_rule("travel-advisory@1", "critical") is None
    assert parse_agreement_unverified(a.to_bytes()) == a
    with pytest.raises(AttributeError):
        critical.acknowledge = timedelta(0)  # type: ignore[misc]


def _rebuilt(mutate: Any) -> bytes:
    doc = json.loads(with_rules().to_bytes())
    mutate(doc)
    return canonical_json(doc)


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda d: d["response"][TA]["critical"].update(acknowledge="PT0H15M"), "canonical"),
        (lambda d: d["response"][TA]["critical"].update(respond="PT24H"), "canonical"),
        (lambda d: d["response"][TA]["critical"].update(acknowledge="P1M"), "years and months"),
        (lambda d: d["response"][TA]["critical"].update(respond="PT1M"), "sooner than"),
        (lambda d: d["response"][TA]["critical"].update(extra="PT1M"), "unknown key 'extra'"),
        (lambda d: d["response"][TA]["critical"].pop("acknowledge"), "acknowledge is missing"),
        (lambda d: d["response"][TA].update(Critical={"acknowledge": "PT1M"}), "severity"),
        (
            lambda d: d["response"].update(
                {"travel-advisory@1": {"high": {"acknowledge": "PT1M"}}}
            ),
            "not one of the agreement's schemas",
        ),
        (lambda d: d["response"].update({TA: {}}), "at least one rule"),
        (lambda d: d.update(response={}), "names no rule"),
        (lambda d: d.update(response=[]), "table of schemas"),
        (lambda d: d.update(responses=d.pop("response")), "unknown ['responses']"),
    ],
    ids=[
        "ack-not-canonical",
        "respond-not-canonical",
        "months",
        "respond-before-ack",
        "unknown-key",
        "no-ack",
        "bad-severity-name",
        "sop-not-pinned",
        "empty-sop",
        "empty-response",
        "not-a-table",
        "misspelt-key",
    ],
)
def test_bad_rules_in_agreement_bytes_are_refused_naming_the_key(mutate: Any, says: str) -> None:
    with pytest.raises(PeerDataError) as info:
        parse_agreement_unverified(_rebuilt(mutate))
    assert info.value.code == "peer.agreement_invalid"
    assert says in info.value.message


@pytest.mark.parametrize(
    ("raw", "error", "says"),
    [
        (
            {TA: {"extreme": {"acknowledge": "PT1M"}}},
            PolicyError,
            "response.threat-alert@1.extreme: not a severity",
        ),
        (
            {TA: {"high": {"acknowledge": "PT2H", "respond": "PT1H"}}},
            InputError,
            'response."threat-alert@1".high: respond must not be sooner',
        ),
        (
            {TA: {"high": {"acknowledge": "P100D"}}},
            InputError,
            'response."threat-alert@1".high.acknowledge must be from 1 second',
        ),
        ({TA: {"high": {"ack": "PT1M"}}}, InputError, "unknown key 'ack'"),
        ({TA: {"high": {"respond": "PT1M"}}}, InputError, "high.acknowledge is missing"),
        ({TA: {"high": "PT1M"}}, InputError, "must be a table"),
        ({"nope": {"high": {"acknowledge": "PT1M"}}}, InputError, "name@major"),
    ],
    ids=[
        "unknown-severity",
        "respond-first",
        "too-long",
        "unknown-key",
        "no-ack",
        "not-table",
        "bad-sop",
    ],
)
def test_bad_rules_in_terms_are_refused_naming_the_key(
    raw: Any, error: type[AccordError], says: str
) -> None:
    with pytest.raises(error) as info:
        with_rules(raw)
    assert says in info.value.message


def test_rules_for_a_schema_without_severity_or_not_pinned_are_refused() -> None:
    rules = ag.parse_response({TA: {"high": {"acknowledge": "PT1M"}}}, "response")
    with pytest.raises(PolicyError, match="has no severity field"):
        make(response=rules, schema_severities={TA: []})
    other = ag.parse_response({"travel-advisory@1": {"high": {"acknowledge": "PT1M"}}}, "r")
    with pytest.raises(PolicyError, match="not one of the agreement's schemas"):
        make(response=other)


def test_response_problems_lists_every_unknown_severity() -> None:
    a = with_rules({TA: {"critical": {"acknowledge": "PT1M"}, "high": {"acknowledge": "PT1M"}}})
    problems = ag.response_problems(a, {TA: ["low", "moderate"]})
    assert problems == [
        "response.threat-alert@1.critical: not a severity of threat-alert@1 (one of low, moderate)",
        "response.threat-alert@1.high: not a severity of threat-alert@1 (one of low, moderate)",
    ]
    assert ag.response_problems(a, SEVERITIES) == []


def test_too_many_rules_are_refused() -> None:
    many = {f"s{i}": {"acknowledge": "PT1M"} for i in range(ag.MAX_RESPONSE_RULES + 1)}
    with pytest.raises(InputError, match="more than 256 rules"):
        ag.parse_response({TA: many}, "response")
