"""exchange.policy: parsing the release policy, the release decision, the receiver's check."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exchange.agreement import (
    LABELS,
    TLP_LEVELS,
    Ceiling,
    ceiling_for,
    ceilings_between,
    direction,
    propose,
    sign_agreement,
    verify_agreement,
)
from exchange.card import SUITE_HYBRID
from exchange.errors import AccordError, PeerDataError, PolicyError
from exchange.policy import (
    ABOVE_CEILING,
    DROP,
    NO_AGREEMENT,
    NO_LEGAL_BASIS,
    NOT_IN_POLICY,
    NOT_IN_SCHEMA,
    REASONS,
    RECIPROCITY,
    TLP_ABOVE_MAX,
    TRANSFORM_UNSUPPORTED,
    UNKNOWN_LABEL,
    WITHHELD_LABEL,
    PeerPolicy,
    PeerStats,
    Policy,
    PolicyInvalid,
    Reciprocity,
    ReleaseDecision,
    SchemaRule,
    Transform,
    apply_transform,
    check_within_ceiling,
    decide,
    parse_policy,
    pseudonym,
    reciprocity_window_start,
)
from keys.signers import Ed25519Signer

ROOT = Path(__file__).resolve().parents[2]
ME, PEER, OTHER = "pk-moi", "cn-mps", "us-dos"
TA, IR = "threat-alert@1", "incident-report@1"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
KEY = b"k" * 32


def _labels(name: str) -> dict[str, str]:
    schema = json.loads((ROOT / "sop" / f"{name}.json").read_text())
    return {f: sub["x-accord-label"] for f, sub in schema["properties"].items()}


SCHEMAS = {TA: _labels(TA), IR: _labels(IR)}
ALL_TA_FIELDS = frozenset(SCHEMAS[TA])
ALL_IR_FIELDS = frozenset(SCHEMAS[IR])
EXAMPLE = (ROOT / "sop" / "policies" / "example.toml").read_text()

REPORT: dict[str, Any] = {
    "title": "Planned attack on convoy route",
    "threat_type": "armed-attack",
    "severity": "high",
    "region": "Balochistan",
    "site": "Hub power plant staff camp",
    "location": {"lat": 25.1264, "lon": 62.3225},
    "time_window": {"start": "2026-06-01T00:00:00Z", "end": "2026-06-07T23:59:59Z"},
    "summary": "Secret summary text",
    "indicators": ["White pickup at the gate"],
    "recommended_actions": ["Vary departure times"],
    "source": {"kind": "humint", "reliability": "B", "credibility": 2},
}


def ceiling(
    fields: frozenset[str] = ALL_TA_FIELDS,
    tlp_max: str = "red",
    schema: str = TA,
    receiver: str = PEER,
) -> Ceiling:
    return Ceiling(
        agreement_digest="sha256:" + "aa" * 32,
        sender=ME,
        receiver=receiver,
        schema=schema,
        schema_digest="sha256:" + "bb" * 32,
        tlp_max=tlp_max,
        fields=fields,
    )


def policy(text: str, **kwargs: Any) -> Policy:
    return parse_policy(textwrap.dedent(text), SCHEMAS, **kwargs)


def stats(n: int, *, days_ago: float = 1) -> PeerStats:
    return PeerStats(tuple(NOW - timedelta(days=days_ago, minutes=i) for i in range(n)))


def run(
    pol: Policy,
    report: Mapping[str, object] = REPORT,
    *,
    tlp: str = "amber",
    schema: str = TA,
    ceil: Ceiling | None = None,
    peer: str = PEER,
    peer_stats: PeerStats | None = None,
    now: datetime = NOW,
    key: bytes = KEY,
    labels: Mapping[str, str] | None = None,
) -> ReleaseDecision:
    return decide(
        report,
        tlp,
        schema,
        SCHEMAS.get(schema, {}) if labels is None else labels,
        pol,
        ceiling() if ceil is None else ceil,
        peer,
        stats(10) if peer_stats is None else peer_stats,
        now,
        key,
    )


def refused(text: str, **kwargs: Any) -> PolicyInvalid:
    with pytest.raises(PolicyInvalid) as e:
        policy(text, **kwargs)
    return e.value


ALL_PUBLIC = """
    [peer.cn-mps]
    max_tlp = "red"
    [peer.cn-mps.schema."threat-alert@1"]
    release_labels = ["public"]
"""


# ---- the shipped example -----------------------------------------------------------------------


def test_example_policy_parses_and_decides_as_commented() -> None:
    pol = parse_policy(EXAMPLE, SCHEMAS)
    assert set(pol.peers) == {PEER}
    d = run(pol)
    assert set(d.released) == {
        "title",
        "threat_type",
        "severity",
        "region",
        "time_window",
        "recommended_actions",
    }
    assert set(d.transformed) == {"location", "site"}
    assert d.transformed["location"].value == {"lat": 25.1, "lon": 62.3}
    assert d.withheld == {"summary": DROP, "indicators": NOT_IN_POLICY, "source": WITHHELD_LABEL}
    assert "recommended_actions" in run(pol, peer_stats=stats(5)).released
    assert run(pol, peer_stats=stats(4)).withheld["recommended_actions"] == RECIPROCITY
    assert run(pol, tlp="amber+strict").withheld == dict.fromkeys(REPORT, TLP_ABOVE_MAX)


# ---- docs/THREATS.md P10: policy bypass by omission -------------------------------------------------

P10_REFUSED = [
    ("empty-file", "", "policy.empty", "peer"),
    ("only-comments", "# nothing\n", "policy.empty", "peer"),
    ("empty-peer-table", "[peer]\n", "policy.empty", "peer"),
    ("peer-without-schema", '[peer.cn-mps]\nmax_tlp = "amber"\n', "policy.empty", "schema"),
    (
        "missing-schema-id",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema]\nrelease_labels = ["public"]\n',
        "policy.unknown_schema",
        "release_labels",
    ),
    (
        "schema-without-major",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert"]\n'
        'release_labels = ["public"]\n',
        "policy.unknown_schema",
        "schema.threat-alert",
    ),
    (
        "unknown-schema",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@2"]\n'
        'release_labels = ["public"]\n',
        "policy.unknown_schema",
        '"threat-alert@2"',
    ),
    (
        "empty-allow-lists",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        "release_labels = []\nrelease = []\n",
        "policy.empty",
        '"threat-alert@1"',
    ),
    (
        "only-withhold-rules",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'withhold_labels = ["public"]\n',
        "policy.empty",
        '"threat-alert@1"',
    ),
    (
        "unknown-field",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release = ["sitee"]\n',
        "policy.unknown_field",
        "release",
    ),
    (
        "field-under-another-name",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release = ["Site"]\n',
        "policy.unknown_field",
        "release",
    ),
    (
        "field-of-another-schema",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release = ["affected_persons"]\n',
        "policy.unknown_field",
        "release",
    ),
    (
        "wildcard-field",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release = ["*"]\n',
        "policy.unknown_field",
        "release",
    ),
    (
        "unknown-label",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["secret"]\n',
        "policy.unknown_label",
        "release_labels",
    ),
    (
        "wildcard-label",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["all"]\n',
        "policy.unknown_label",
        "release_labels",
    ),
    (
        "unknown-withhold-label",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\nwithhold_labels = ["sensitive_source"]\n',
        "policy.unknown_label",
        "withhold_labels",
    ),
    (
        "misspelt-key",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_label = ["public"]\n',
        "policy.unknown_key",
        "release_label",
    ),
    (
        "unknown-peer-key",
        '[peer.cn-mps]\nmax_tlp = "amber"\nrelease_all = true\n'
        '[peer.cn-mps.schema."threat-alert@1"]\nrelease_labels = ["public"]\n',
        "policy.unknown_key",
        "release_all",
    ),
    (
        "unknown-top-level-key",
        'default = "release"\n[peer.cn-mps]\nmax_tlp = "amber"\n'
        '[peer.cn-mps.schema."threat-alert@1"]\nrelease_labels = ["public"]\n',
        "policy.unknown_key",
        "default",
    ),
    (
        "bad-peer-id",
        '[peer."../cn"]\nmax_tlp = "amber"\n[peer."../cn".schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n',
        "policy.bad_peer",
        '"../cn"',
    ),
    (
        "upper-case-peer-id",
        '[peer.CN-MPS]\nmax_tlp = "amber"\n[peer.CN-MPS.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n',
        "policy.bad_peer",
        "CN-MPS",
    ),
    (
        "missing-max-tlp",
        '[peer.cn-mps.schema."threat-alert@1"]\nrelease_labels = ["public"]\n',
        "policy.missing_key",
        "max_tlp",
    ),
    (
        "unknown-tlp",
        '[peer.cn-mps]\nmax_tlp = "white"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n',
        "policy.bad_value",
        "max_tlp",
    ),
    (
        "release-not-a-list",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release = "title"\n',
        "policy.bad_value",
        "release",
    ),
    (
        "unknown-transform",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["operational"]\ntransform = { site = "hash" }\n',
        "policy.unknown_transform",
        "transform.site",
    ),
    (
        "round-without-digits",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["operational"]\ntransform = { location = "round:" }\n',
        "policy.unknown_transform",
        "transform.location",
    ),
    (
        "round-too-many-digits",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["operational"]\ntransform = { location = "round:11" }\n',
        "policy.unknown_transform",
        "transform.location",
    ),
    (
        "transform-of-unknown-field",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["operational"]\ntransform = { coords = "round:1" }\n',
        "policy.unknown_field",
        "transform.coords",
    ),
    (
        "transform-of-unreleased-field",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\ntransform = { site = "pseudonym" }\n',
        "policy.bad_value",
        "transform.site",
    ),
    (
        "reciprocity-without-labels",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n[peer.cn-mps.reciprocity]\nmin_reports = 1\n'
        "window_days = 30\n",
        "policy.empty",
        "reciprocity.labels",
    ),
    (
        "reciprocity-zero-window",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n[peer.cn-mps.reciprocity]\nlabels = ["tactical"]\n'
        "min_reports = 1\nwindow_days = 0\n",
        "policy.bad_value",
        "reciprocity.window_days",
    ),
    (
        "reciprocity-float-count",
        '[peer.cn-mps]\nmax_tlp = "amber"\n[peer.cn-mps.schema."threat-alert@1"]\n'
        'release_labels = ["public"]\n[peer.cn-mps.reciprocity]\nlabels = ["tactical"]\n'
        "min_reports = 2.5\nwindow_days = 30\n",
        "policy.bad_value",
        "reciprocity.min_reports",
    ),
    ("toml-syntax", "[peer.cn-mps\nmax_tlp = 1\n", "policy.syntax", "(file)"),
    ("duplicate-key", "[peer.cn-mps]\nmax_tlp = 'red'\nmax_tlp = 'red'\n", "policy.syntax", ""),
]


@pytest.mark.parametrize(
    ("text", "code", "key"), [r[1:] for r in P10_REFUSED], ids=[r[0] for r in P10_REFUSED]
)
@pytest.mark.threat("P10")
def test_p10_policy_bypass_by_omission_is_refused(text: str, code: str, key: str) -> None:
    e = refused(text)
    codes = {p.code for p in e.problems}
    assert code in codes, e.message
    assert any(key in p.key for p in e.problems if p.code == code), e.message
    assert isinstance(e, PolicyError) and e.next_step
    # the message always names the key; a line whenever the key appears in the file
    for p in e.problems:
        assert p.key in e.message
        if p.code != "policy.syntax" and "[" in text:
            assert p.line is not None, p


def test_toml_syntax_error_names_its_line() -> None:
    e = refused('[peer.cn-mps]\nmax_tlp = "amber"\nrelease = [1 2]\n')
    assert e.code == "policy.syntax" and e.problems[0].line == 3
    assert "not valid TOML" in e.message


@pytest.mark.threat("P10")
def test_p10_problems_name_key_and_line() -> None:
    text = textwrap.dedent(
        """\
        [peer.cn-mps]
        max_tlp = "amber"

        [peer.cn-mps.schema."threat-alert@1"]
        release_labels = ["public", "operational"]
        release = ["sitee"]
        transform = { location = "round:1", site = "md5" }
        """
    )
    e = refused(text)
    found = {(p.key, p.line, p.code) for p in e.problems}
    assert ('peer.cn-mps.schema."threat-alert@1".release', 6, "policy.unknown_field") in found
    assert (
        'peer.cn-mps.schema."threat-alert@1".transform.site',
        7,
        "policy.unknown_transform",
    ) in found
    assert "(line 6)" in e.message and "(line 7)" in e.message
    assert e.code == "policy.unknown_field"  # the first problem by line


@pytest.mark.threat("P10")
def test_p10_lines_found_for_dotted_keys_and_implicit_tables() -> None:
    text = (
        "# header comment\n"
        'peer.cn-mps.max_tlp = "purple"\n'
        'peer.cn-mps.schema."threat-alert@1".release = ["nope"]\n'
    )
    e = refused(text)
    lines = {p.key: p.line for p in e.problems}
    assert lines["peer.cn-mps.max_tlp"] == 2
    assert lines['peer.cn-mps.schema."threat-alert@1".release'] == 3


@pytest.mark.threat("P10")
def test_p10_every_problem_is_listed_at_once() -> None:
    e = refused(
        """
        [peer.cn-mps]
        max_tlp = "amber"
        [peer.cn-mps.schema."threat-alert@1"]
        release = ["sitee", "Title"]
        withhold_labels = ["secret"]
        [peer.us-dos.schema."nope@1"]
        release = ["x"]
        """
    )
    assert len(e.problems) >= 5
    assert {"policy.unknown_field", "policy.unknown_label", "policy.unknown_schema"} <= {
        p.code for p in e.problems
    }


P10_DENIED = [
    ("report-schema-not-in-policy", {"schema": IR, "ceil": ceiling(schema=IR)}, NOT_IN_POLICY),
    ("missing-schema-id", {"schema": "", "ceil": ceiling(schema="")}, NOT_IN_POLICY),
    ("peer-not-in-policy", {"peer": OTHER, "ceil": ceiling(receiver=OTHER)}, NOT_IN_POLICY),
    ("no-agreement", {"ceil": None}, NO_AGREEMENT),
    ("ceiling-of-another-peer", {"ceil": ceiling(receiver=OTHER)}, NO_AGREEMENT),
    ("ceiling-of-another-schema", {"ceil": ceiling(schema=IR)}, NO_AGREEMENT),
]


@pytest.mark.parametrize(
    ("args", "reason"), [r[1:] for r in P10_DENIED], ids=[r[0] for r in P10_DENIED]
)
@pytest.mark.threat("P10")
def test_p10_decision_denies_by_default(args: dict[str, Any], reason: str) -> None:
    pol = policy(ALL_PUBLIC)
    if "ceil" in args and args["ceil"] is None:
        d = decide(REPORT, "clear", TA, SCHEMAS[TA], pol, None, PEER, stats(0), NOW, KEY)
    else:
        d = run(pol, tlp="clear", **args)
    assert d.released == () and not d.transformed and not d.releases_anything
    assert d.withheld == dict.fromkeys(REPORT, reason)


@pytest.mark.threat("P10")
def test_p10_report_field_under_another_name_is_withheld() -> None:
    pol = policy(ALL_PUBLIC)
    report = {"Severity": "high", "severity ": "high", "region": "Sindh", "regions": "Sindh"}
    d = run(pol, report, tlp="clear")
    assert d.released == ("region",)
    assert d.withheld == {
        "Severity": NOT_IN_SCHEMA,
        "severity ": NOT_IN_SCHEMA,
        "regions": NOT_IN_SCHEMA,
    }


@pytest.mark.threat("P10")
def test_p10_field_with_unknown_label_is_withheld_even_when_named() -> None:
    pol = policy(
        """
        [peer.cn-mps]
        max_tlp = "red"
        [peer.cn-mps.schema."threat-alert@1"]
        release = ["title"]
        """
    )
    labels = {**SCHEMAS[TA], "title": "*"}
    d = run(pol, {"title": "x"}, labels=labels)
    assert d.withheld == {"title": UNKNOWN_LABEL}


@pytest.mark.threat("P10")
def test_p10_empty_report_releases_nothing() -> None:
    d = run(policy(ALL_PUBLIC), {})
    assert not d.releases_anything and d.to_log_event()["releases_anything"] is False


# ---- withhold wins, TLP, personal data, reciprocity --------------------------------------------


def test_withhold_wins_over_release_by_name_and_label() -> None:
    pol = policy(
        """
        [peer.cn-mps]
        max_tlp = "red"
        [peer.cn-mps.schema."threat-alert@1"]
        release_labels = ["public", "sensitive-source"]
        release = ["source", "title", "summary"]
        withhold_labels = ["sensitive-source"]
        transform = { summary = "drop" }
        """
    )
    d = run(pol)
    assert d.withheld["source"] == WITHHELD_LABEL
    assert d.withheld["summary"] == DROP
    assert "title" in d.released and "region" in d.released


@pytest.mark.parametrize(
    ("tlp", "max_tlp", "tlp_max", "reason"),
    [
        ("amber", "green", "red", TLP_ABOVE_MAX),
        ("red", "amber+strict", "red", TLP_ABOVE_MAX),
        ("amber+strict", "red", "amber", ABOVE_CEILING),
        ("amber", "amber", "amber", None),
        ("clear", "clear", "clear", None),
        ("white", "red", "red", TLP_ABOVE_MAX),
        ("AMBER", "red", "red", TLP_ABOVE_MAX),
    ],
)
def test_tlp_maximum(tlp: str, max_tlp: str, tlp_max: str, reason: str | None) -> None:
    pol = policy(ALL_PUBLIC.replace('"red"', f'"{max_tlp}"'))
    d = run(pol, tlp=tlp, ceil=ceiling(tlp_max=tlp_max))
    if reason is None:
        assert set(d.released) == {"threat_type", "severity", "region"}
    else:
        assert d.withheld == dict.fromkeys(REPORT, reason)


PERSONAL_RULE = """
    [peer.cn-mps]
    max_tlp = "red"
    [peer.cn-mps.schema."incident-report@1"]
    release_labels = ["public", "personal"]
"""


def test_personal_field_without_legal_basis_is_refused() -> None:
    e = refused(PERSONAL_RULE)
    assert e.code == "policy.no_legal_basis"
    assert "affected_persons" in e.message and "release_labels" in e.problems[0].key
    by_name = PERSONAL_RULE.replace(
        '"public", "personal"]', '"public"]\nrelease = ["affected_persons"]'
    )
    assert refused(by_name).problems[0].key.endswith(".release")


@pytest.mark.parametrize(
    ("legal_basis", "code"),
    [
        ('{ affected_persons = "" }', "policy.no_legal_basis"),
        ('{ affected_persons = "   " }', "policy.no_legal_basis"),
        ("{ affected_persons = 1 }", "policy.no_legal_basis"),
        ('{ narrative = "Art. 6(1)(e)" }', "policy.bad_value"),
        ('{ victims = "Art. 6(1)(e)" }', "policy.unknown_field"),
    ],
)
def test_legal_basis_must_be_named_for_a_personal_field(legal_basis: str, code: str) -> None:
    e = refused(PERSONAL_RULE + f"    legal_basis = {legal_basis}\n")
    assert code in {p.code for p in e.problems}


def test_personal_field_with_legal_basis_is_released() -> None:
    pol = policy(PERSONAL_RULE + '    legal_basis = { affected_persons = "MoU 2025 art. 4" }\n')
    report = {"affected_persons": [{"name": "x"}], "region": "Sindh", "narrative": "n"}
    d = run(pol, report, schema=IR, ceil=ceiling(fields=ALL_IR_FIELDS, schema=IR))
    assert set(d.released) == {"affected_persons", "region"}
    assert d.withheld == {"narrative": NOT_IN_POLICY}
    # The legal basis and labels of what was released are logged (audit disclosures).
    event = d.to_log_event()
    assert event["legal_basis"] == {"affected_persons": "MoU 2025 art. 4"}
    assert event["labels"] == {"affected_persons": "personal", "region": "public"}


def test_decide_withholds_personal_field_of_an_unchecked_policy() -> None:
    rule = SchemaRule(frozenset({"personal"}), frozenset(), frozenset(), {}, {})
    pol = Policy({PEER: PeerPolicy("red", {IR: rule}, None)})
    report = {"affected_persons": [{"name": "x"}]}
    d = run(pol, report, schema=IR, ceil=ceiling(fields=ALL_IR_FIELDS, schema=IR))
    assert d.withheld == {"affected_persons": NO_LEGAL_BASIS}


RECIPROCAL = """
    [peer.cn-mps]
    max_tlp = "red"
    [peer.cn-mps.schema."threat-alert@1"]
    release_labels = ["public", "tactical"]
    [peer.cn-mps.reciprocity]
    labels = ["tactical"]
    min_reports = 3
    window_days = 30
"""


def test_reciprocity_turns_labels_on_and_off_as_the_window_moves() -> None:
    pol = policy(RECIPROCAL)
    received = PeerStats(
        (
            datetime(2026, 5, 1, tzinfo=UTC),
            datetime(2026, 5, 10, tzinfo=UTC),
            datetime(2026, 5, 20, tzinfo=UTC),
        )
    )
    tactical = {"indicators", "recommended_actions"}

    def released_at(now: datetime) -> set[str]:
        return set(run(pol, peer_stats=received, now=now).released)

    # before the third report arrived: only two in the window
    assert not tactical & released_at(datetime(2026, 5, 15, tzinfo=UTC))
    # all three within the last 30 days
    assert tactical <= released_at(datetime(2026, 5, 20, tzinfo=UTC))
    assert tactical <= released_at(datetime(2026, 5, 30, 23, 59, 59, tzinfo=UTC))
    # exactly 30 days after the first: it has left the window (since < t <= now)
    assert not tactical & released_at(datetime(2026, 5, 31, tzinfo=UTC))
    assert not tactical & released_at(datetime(2026, 6, 1, tzinfo=UTC))
    d = run(pol, peer_stats=received, now=datetime(2026, 6, 1, tzinfo=UTC))
    assert {f: d.withheld[f] for f in tactical} == dict.fromkeys(tactical, RECIPROCITY)
    # public fields never depend on reciprocity
    assert {"threat_type", "severity", "region"} <= set(d.released)


def test_reciprocity_window_edges() -> None:
    pol = policy(RECIPROCAL)
    start = reciprocity_window_start(pol, PEER, NOW)
    assert start == NOW - timedelta(days=30)
    assert reciprocity_window_start(pol, OTHER, NOW) is None
    assert reciprocity_window_start(policy(ALL_PUBLIC), PEER, NOW) is None
    on_edge = PeerStats((start, NOW, NOW))  # the one at ``start`` does not count
    assert "indicators" not in run(pol, peer_stats=on_edge).released
    inside = PeerStats((start + timedelta(seconds=1), NOW, NOW))
    assert "indicators" in run(pol, peer_stats=inside).released
    future = PeerStats((NOW + timedelta(seconds=1),) * 5 + (NOW, NOW))
    assert "indicators" not in run(pol, peer_stats=future).released


def test_reciprocity_gates_but_never_grants() -> None:
    pol = policy(RECIPROCAL.replace('"public", "tactical"', '"public"'))
    d = run(pol, peer_stats=stats(100))
    assert d.withheld["indicators"] == NOT_IN_POLICY


# ---- transforms --------------------------------------------------------------------------------


def _t(spec: str) -> Transform:
    t = Transform.parse(spec)
    assert t is not None
    return t


def _apply(spec: str, value: object, peer: str = PEER, field: str = "f", key: bytes = KEY) -> Any:
    out = apply_transform(_t(spec), value, peer=peer, field_name=field, pseudonym_key=key)
    return None if out is None else out[0]


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ("round:1", {"lat": 25.1264, "lon": 62.3225}, {"lat": 25.1, "lon": 62.3}),
        ("round:2", {"lat": -25.1264, "lon": 62}, {"lat": -25.13, "lon": 62}),
        ("round:0", 12.6, 13.0),
        ("round:3", 1.23456, 1.235),
        ("round:2", 7, 7),
        ("round:1", True, None),
        ("round:1", "12.5", None),
        ("round:1", {"lat": 1.0}, None),
        ("round:1", {"lat": 1.0, "lon": 2.0, "alt": 3.0}, None),
        ("round:1", {"lat": "1", "lon": 2.0}, None),
        ("round:1", [1.25], None),
        ("round:1", float("nan"), None),
        ("coarsen:region", {"lat": 25.1264, "lon": 62.7225}, {"lat": 25, "lon": 63}),
        ("coarsen:region", "Hub staff camp, Hub, Balochistan", "Balochistan"),
        ("coarsen:region", "Gate 3,Karachi ", "Karachi"),
        ("coarsen:region", "Hub power plant staff camp", None),
        ("coarsen:region", "camp,  ", None),
        ("coarsen:region", 25.1, None),
        ("coarsen:region", ["a, b"], None),
    ],
)
def test_transform_table(spec: str, value: object, expected: object) -> None:
    assert _apply(spec, value) == expected


def test_transform_specs() -> None:
    for spec in ("round:0", "round:10", "coarsen:region", "pseudonym", "drop"):
        assert _t(spec).spec == spec
    for bad in ("round", "round:-1", "round:11", "round:1.5", "coarsen", "coarsen:city", "hash"):
        assert Transform.parse(bad) is None
    assert Transform.parse(["drop"]) is None and Transform.parse(None) is None


def test_pseudonym_is_stable_per_partner_and_unlinkable_across_partners() -> None:
    site = "Hub power plant staff camp"
    p1 = _apply("pseudonym", site)
    assert p1 == _apply("pseudonym", site)
    assert len(p1) == 22 and p1 == pseudonym(KEY, PEER, "f", site)
    assert p1 != _apply("pseudonym", site + ".")
    assert p1 != _apply("pseudonym", site, peer=OTHER)  # same key, another partner
    assert p1 != _apply("pseudonym", site, key=b"q" * 32)  # the other partner's key
    assert p1 != _apply("pseudonym", site, field="g")  # same value in another field
    assert _apply("pseudonym", {"lat": 1, "lon": 2}) == _apply("pseudonym", {"lon": 2, "lat": 1})
    assert site not in p1


def test_transforms_in_a_decision_record_their_source_and_spec() -> None:
    pol = policy(
        """
        [peer.cn-mps]
        max_tlp = "red"
        [peer.cn-mps.schema."threat-alert@1"]
        release_labels = ["public", "operational"]
        transform = { location = "coarsen:region", site = "coarsen:region", title = "drop", region = "pseudonym" }
        """
    )
    d = run(pol)
    assert d.transformed["location"].value == {"lat": 25, "lon": 62}
    assert d.transformed["location"].transform == "coarsen:region"
    assert d.transformed["location"].name == "location"
    assert d.transformed["region"].value == pseudonym(KEY, PEER, "region", "Balochistan")
    assert d.withheld["site"] == TRANSFORM_UNSUPPORTED  # no comma: never sent as it is
    assert d.withheld["title"] == DROP
    assert "site" not in d.released and "region" not in d.released
    assert d.to_log_event()["transformed"] == {"location": "coarsen:region", "region": "pseudonym"}


def test_pseudonym_key_must_be_long_enough() -> None:
    with pytest.raises(PolicyError) as e:
        run(policy(ALL_PUBLIC), key=b"short")
    assert e.value.code == "policy.pseudonym_key"


# ---- the ceiling, sender and receiver -----------------------------------------------------------


def test_decision_never_exceeds_the_ceiling() -> None:
    pol = policy(EXAMPLE)
    d = run(pol, ceil=ceiling(fields=frozenset({"title", "location"})))
    assert d.released == ("title",)
    assert set(d.transformed) == {"location"}
    assert d.withheld["region"] == ABOVE_CEILING and d.withheld["site"] == ABOVE_CEILING


def _verified_agreement(ceil: list[Any]) -> Any:
    signers = {PEER: Ed25519Signer(b"\x01" * 32), ME: Ed25519Signer(b"\x02" * 32)}
    a = propose(
        agreement_id="a1",
        parties=[ME, PEER],
        schemas={TA: "sha256:" + "bb" * 32, IR: "sha256:" + "cc" * 32},
        ceiling=ceil,
        suite=SUITE_HYBRID,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=1),
    )
    signed = sign_agreement(sign_agreement(a, ME, signers[ME]), PEER, signers[PEER])
    keys = {n: s.public_key for n, s in signers.items()}
    return verify_agreement(signed, keys, NOW)


def _ceilings(ceil: list[Any]) -> dict[str, dict[str, Ceiling]]:
    v = _verified_agreement(ceil)
    digests = {TA: "sha256:" + "bb" * 32, IR: "sha256:" + "cc" * 32}
    return {PEER: ceilings_between(v, ME, PEER, SCHEMAS, digests)}


def test_policy_above_the_agreement_ceiling_is_refused() -> None:
    narrow = _ceilings([direction(ME, PEER, "green", {TA: (["recommended_actions"], ["public"])})])
    e = refused(EXAMPLE, ceilings=narrow)
    assert e.code == "policy.above_ceiling"
    keys = {p.key for p in e.problems if p.code == "policy.above_ceiling"}
    assert 'peer.cn-mps.schema."threat-alert@1".release_labels' in keys  # title, site, ...
    assert "peer.cn-mps.max_tlp" in keys  # amber > green
    assert all(p.line is not None for p in e.problems)
    wide = _ceilings(
        [direction(ME, PEER, "amber", {TA: (["recommended_actions"], ["public", "operational"])})]
    )
    assert (
        parse_policy(EXAMPLE, SCHEMAS, ceilings=wide).digest
        == parse_policy(EXAMPLE, SCHEMAS).digest
    )


def test_policy_for_a_schema_outside_the_agreement_is_refused() -> None:
    only_ir = _ceilings([direction(ME, PEER, "red", {IR: ([], ["public"])})])
    e = refused(EXAMPLE, ceilings=only_ir)
    assert any(
        p.code == "policy.above_ceiling" and p.key == 'peer.cn-mps.schema."threat-alert@1"'
        for p in e.problems
    )
    # a direction the agreement leaves out: no ceiling at all for this peer
    reverse_only = _ceilings([direction(PEER, ME, "red", {TA: ([], ["public"])})])
    assert reverse_only == {PEER: {}}
    assert "policy.above_ceiling" in {
        p.code for p in refused(EXAMPLE, ceilings=reverse_only).problems
    }
    # peers without an agreement in ``ceilings`` are shape-checked only
    parse_policy(EXAMPLE, SCHEMAS, ceilings={})


def test_ceiling_from_a_verified_agreement_drives_the_decision() -> None:
    v = _verified_agreement([direction(ME, PEER, "amber", {TA: (["site"], ["public"])})])
    c = ceiling_for(v, ME, PEER, TA, SCHEMAS[TA], "sha256:" + "bb" * 32)
    d = run(policy(EXAMPLE), ceil=c, peer_stats=stats(10))
    assert set(d.released) == {"threat_type", "severity", "region"}
    assert set(d.transformed) == {"site"}
    assert d.agreement_digest == v.digest
    check_within_ceiling(d.released, d.transformed, "amber", TA, SCHEMAS[TA], c)


P14 = [
    ("disclosed-field-above-ceiling", ["title", "source"], [], "amber", TA, "peer.above_ceiling"),
    ("derived-field-above-ceiling", ["title"], ["location"], "amber", TA, "peer.above_ceiling"),
    ("field-not-in-schema", ["title", "sitee"], [], "amber", TA, "peer.above_ceiling"),
    ("tlp-above-ceiling", ["title"], [], "red", TA, "peer.above_ceiling"),
    ("unknown-tlp", ["title"], [], "white", TA, "peer.above_ceiling"),
    ("other-schema", ["title"], [], "amber", IR, "peer.above_ceiling"),
]


@pytest.mark.parametrize(
    ("disclosed", "derived", "tlp", "schema", "code"),
    [r[1:] for r in P14],
    ids=[r[0] for r in P14],
)
@pytest.mark.threat("P14")
def test_p14_release_above_the_agreed_ceiling_is_rejected(
    disclosed: list[str], derived: list[str], tlp: str, schema: str, code: str
) -> None:
    c = ceiling(fields=frozenset({"title", "region", "site"}), tlp_max="amber")
    with pytest.raises(PeerDataError) as e:
        check_within_ceiling(disclosed, derived, tlp, schema, SCHEMAS[TA], c)
    assert e.value.code == code
    for value in REPORT.values():  # the rule is named, never a value
        assert json.dumps(value) not in e.value.message


@pytest.mark.threat("P14")
def test_p14_release_without_agreement_is_rejected() -> None:
    with pytest.raises(PeerDataError) as e:
        check_within_ceiling(["title"], [], "clear", TA, SCHEMAS[TA], None)
    assert e.value.code == "peer.no_agreement"


@pytest.mark.threat("P14")
def test_p14_release_within_the_ceiling_passes() -> None:
    c = ceiling(fields=frozenset({"title", "region", "site"}), tlp_max="amber")
    check_within_ceiling(["title", "region"], ["site"], "green", TA, SCHEMAS[TA], c)
    check_within_ceiling([], [], "amber", TA, SCHEMAS[TA], c)


# ---- digest, log event, repr --------------------------------------------------------------------


def test_policy_digest_ignores_layout_and_follows_content() -> None:
    a = parse_policy(EXAMPLE, SCHEMAS)
    stripped = "\n".join(line.split("#")[0].rstrip() for line in EXAMPLE.splitlines())
    assert parse_policy(stripped, SCHEMAS).digest == a.digest
    assert parse_policy(EXAMPLE.replace('"amber"', '"green"'), SCHEMAS).digest != a.digest
    assert a.digest.startswith("sha256:") and len(a.digest) == 71
    assert run(a).policy_digest == a.digest


def test_log_event_and_repr_hold_names_and_reasons_never_values() -> None:
    pol = policy(EXAMPLE)
    report = {**REPORT, "site": "Camp MARKER-SITE, Hub", "summary": "MARKER-SUMMARY"}
    d = run(pol, report, peer_stats=stats(10))
    event = json.dumps(d.to_log_event())
    shown = repr(d)
    derived = d.transformed["site"].value
    for text in (event, shown):
        for value in report.values():
            for part in (json.dumps(value), str(value)):
                assert part not in text
        assert "MARKER" not in text
        assert derived not in text and "25.1" not in text
    assert set(json.loads(event)) == {
        "kind",
        "peer",
        "schema",
        "tlp",
        "released",
        "transformed",
        "withheld",
        "policy_digest",
        "agreement_digest",
        "releases_anything",
        "labels",
        "legal_basis",
    }
    assert d.rows()[0] == ("indicators", "withheld", NOT_IN_POLICY)


def test_decision_is_frozen() -> None:
    d = run(policy(EXAMPLE))
    with pytest.raises(AttributeError):
        d.released = ("source",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.withheld["source"] = "released"  # type: ignore[index]


# ---- property: nothing outside the decision's allowance, no value in the log --------------------

FIELD_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
SORTED_LABELS = sorted(LABELS)
SPECS = ["round:1", "round:0", "coarsen:region", "pseudonym", "drop"]


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(FIELD_NAMES, min_size=3, max_size=10, unique=True))
    labels = {n: draw(st.sampled_from(SORTED_LABELS)) for n in names}
    subset_f = st.lists(st.sampled_from(names), unique=True)
    subset_l = st.lists(st.sampled_from(SORTED_LABELS), unique=True)
    wide_l = st.just(SORTED_LABELS) | subset_l  # often everything, so that fields do flow
    ceiling_fields = draw(subset_f)
    ceiling_labels = draw(wide_l)
    if not ceiling_fields and not ceiling_labels:
        ceiling_labels = ["public"]
    rule: dict[str, Any] = {
        "release_labels": draw(wide_l),
        "release": draw(subset_f),
        "withhold_labels": draw(st.lists(st.sampled_from(SORTED_LABELS), unique=True, max_size=1)),
        "transform": draw(st.dictionaries(st.sampled_from(names), st.sampled_from(SPECS))),
        "legal_basis": {n: "Art. 6" for n in draw(subset_f) if labels[n] == "personal"},
    }
    reciprocity = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "labels": st.lists(st.sampled_from(SORTED_LABELS), min_size=1, unique=True),
                "min_reports": st.integers(1, 5),
                "window_days": st.integers(1, 30),
            }
        )
    )
    markers = iter(range(10_000))

    def value() -> st.SearchStrategy[Any]:
        m = f"zqmark{next(markers):04d}"
        return st.sampled_from(
            [
                m,
                f"{m}a, {m}b, {m}c",
                [m],
                {"lat": 1.0 + int(m[-4:]) / 10_007, "lon": 2.0},
                {"k": m},
            ]
        )

    high_tlp = st.just("red") | st.sampled_from(TLP_LEVELS)
    report_names = names + draw(st.lists(FIELD_NAMES, max_size=2))
    report = {n: draw(value()) for n in dict.fromkeys(report_names) if draw(st.integers(0, 4))}
    return {
        "labels": labels,
        "ceiling": (ceiling_fields, ceiling_labels, draw(high_tlp)),
        "covered": draw(st.sampled_from(["yes"] * 6 + ["no-direction", "no-schema"])),
        "max_tlp": draw(high_tlp),
        "rule": rule,
        "reciprocity": reciprocity,
        "received": draw(st.integers(0, 6)),
        "tlp": draw(st.sampled_from(TLP_LEVELS[:2]) | st.sampled_from(TLP_LEVELS)),
        "report": report,
    }


SIGNERS_P = {PEER: Ed25519Signer(b"\x05" * 32), ME: Ed25519Signer(b"\x06" * 32)}
KEYS_P = {n: s.public_key for n, s in SIGNERS_P.items()}
S, S_DIGEST, OTHER_S = "random@1", "sha256:" + "dd" * 32, "other@1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_released_is_within_policy_and_ceiling_and_no_value_is_logged(
    sc: dict[str, Any],
) -> None:
    labels: dict[str, str] = sc["labels"]
    fields, ceil_labels, tlp_max = sc["ceiling"]
    per_schema = {S: (fields, ceil_labels)}
    if sc["covered"] == "no-schema":
        per_schema = {OTHER_S: (["x"], [])}
    dirs = [direction(PEER, ME, "red", {S: ([], ["public"])})]
    if sc["covered"] != "no-direction":
        dirs.insert(0, direction(ME, PEER, tlp_max, per_schema))
    a = propose(
        agreement_id="prop",
        parties=[ME, PEER],
        schemas={S: S_DIGEST, OTHER_S: "sha256:" + "ee" * 32},
        ceiling=dirs,
        suite=SUITE_HYBRID,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=1),
    )
    signed = sign_agreement(sign_agreement(a, ME, SIGNERS_P[ME]), PEER, SIGNERS_P[PEER])
    verified = verify_agreement(signed, KEYS_P, NOW)
    ceil: Ceiling | None
    try:
        ceil = ceiling_for(verified, ME, PEER, S, labels, S_DIGEST)
    except PolicyError:
        ceil = None

    # the policy as TOML, parsed when the parser accepts it; the same rule unchecked otherwise
    raw = sc["rule"]
    peer_doc: dict[str, Any] = {"max_tlp": sc["max_tlp"], "schema": {S: raw}}
    if sc["reciprocity"] is not None:
        peer_doc["reciprocity"] = sc["reciprocity"]
    text = tomli_w.dumps({"peer": {PEER: peer_doc}})
    transforms = {f: Transform.parse(s) for f, s in raw["transform"].items()}
    rule = SchemaRule(
        frozenset(raw["release_labels"]),
        frozenset(raw["release"]),
        frozenset(raw["withhold_labels"]),
        MappingProxyType({f: t for f, t in transforms.items() if t is not None}),
        MappingProxyType(raw["legal_basis"]),
    )
    rec = sc["reciprocity"]
    reciprocity = (
        None
        if rec is None
        else Reciprocity(frozenset(rec["labels"]), rec["min_reports"], rec["window_days"])
    )
    unchecked = Policy({PEER: PeerPolicy(sc["max_tlp"], {S: rule}, reciprocity)})
    try:
        pol = parse_policy(text, {S: labels})
        assert pol.digest == unchecked.digest
    except PolicyInvalid as e:
        assert all(p.line is not None for p in e.problems), e.message
        assert "zqmark" not in e.message
        pol = unchecked

    peer_stats = stats(sc["received"])
    report: dict[str, Any] = sc["report"]
    d = decide(report, sc["tlp"], S, labels, pol, ceil, PEER, peer_stats, NOW, KEY)

    out = set(d.released) | set(d.transformed)
    event(f"parsed={pol is not unchecked} ceiling={ceil is not None} released={bool(d.released)}")
    event(f"transformed={bool(d.transformed)}")
    for r in set(d.withheld.values()):
        event(r)
    # every field has exactly one outcome, with a known reason when withheld
    assert sorted([*d.released, *d.transformed, *d.withheld]) == sorted(report)
    assert set(d.withheld.values()) <= set(REASONS)
    # subset of the policy's allowance AND of the ceiling
    assert all(rule.releases(f, labels.get(f)) for f in out)
    assert all(labels.get(f) not in rule.withhold_labels for f in out)
    assert all(f not in raw["transform"] or raw["transform"][f] != "drop" for f in out)
    if ceil is None:
        assert not out
    else:
        assert out <= ceil.fields
        assert out <= {f for f in labels if f in fields or labels[f] in ceil_labels}
    # TLP, personal data, reciprocity
    tlp_rank = TLP_LEVELS.index
    if out:
        assert tlp_rank(sc["tlp"]) <= tlp_rank(sc["max_tlp"])
        assert tlp_rank(sc["tlp"]) <= tlp_rank(tlp_max)
    assert all(f in raw["legal_basis"] for f in out if labels[f] == "personal")
    if reciprocity is not None and sc["received"] < reciprocity.min_reports:
        assert not any(labels[f] in reciprocity.labels for f in out)
    # the receiver accepts whatever the sender decided
    if out:
        assert ceil is not None
        check_within_ceiling(d.released, d.transformed, sc["tlp"], S, labels, ceil)
    # no value, not even a derived one, in the log event or repr
    logged = json.dumps(d.to_log_event())
    shown = repr(d)
    for text_out in (logged, shown):
        assert "zqmark" not in text_out
        for t in d.transformed.values():
            assert json.dumps(t.value) not in text_out
    # a receiver-side refusal names no value either
    withheld = [f for f in d.withheld if f in labels]
    if ceil is not None and withheld:
        try:
            check_within_ceiling(withheld, [], sc["tlp"], S, labels, ceil)
        except AccordError as e:
            assert "zqmark" not in e.message
