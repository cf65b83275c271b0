"""SOP schema pack and report validation: docs/DESIGN.md §4, docs/THREATS.md B01 and L04."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
import rfc8785

from exchange.errors import InputError
from exchange.sop import (
    DEFAULT_REPORT_LIMITS,
    LABELS,
    Problem,
    Report,
    ReportInvalid,
    SchemaPackInvalid,
    SchemaRegistry,
    UnknownSchema,
    check_report_document,
    disclosed_field_problems,
    parse_report_unverified,
    validate_report,
)
from sop import load_shipped_rules, load_shipped_schemas

SENTINEL = "Zebra-Sentinel-7731"  # a value that must never appear in an error text


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_documents(load_shipped_schemas())


def threat_fields() -> dict[str, Any]:
    return {
        "title": "Planned attack on convoy route near Gwadar port",
        "threat_type": "armed-attack",
        "severity": "high",
        "region": "Balochistan",
        "site": "Port access road",
        "location": {"lat": 25.1264, "lon": 62.3225},
        "time_window": {"start": "2026-06-01T00:00:00Z", "end": "2026-06-07T23:59:59+05:00"},
        "indicators": ["White pickup seen photographing the gate"],
        "recommended_actions": ["Suspend road moves", "Vary departure times"],
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    }


def doc(fields: dict[str, Any], *, sop: str = "threat-alert@1", tlp: str = "amber") -> bytes:
    return json.dumps({"sop": sop, "tlp": tlp, "fields": fields}).encode()


def problems_of(registry: SchemaRegistry, data: bytes, fmt: str = "json") -> set[tuple[str, str]]:
    with pytest.raises(ReportInvalid) as info:
        check_report_document(registry, data, fmt)  # type: ignore[arg-type]
    return {(p.path, p.rule) for p in info.value.problems}


# ---- the shipped pack ---------------------------------------------------------------------


def test_shipped_pack_loads_with_the_four_schemas(registry: SchemaRegistry) -> None:
    assert registry.names() == [
        "incident-report@1",
        "response@1",
        "threat-alert@1",
        "travel-advisory@1",
    ]


def test_shipped_files_are_bytes_and_ids_match_names() -> None:
    for name, data in load_shipped_schemas().items():
        assert isinstance(data, bytes)
        assert json.loads(data)["$id"] == f"accord:sop:{name}"


def test_digest_is_sha256_of_rfc8785_form(registry: SchemaRegistry) -> None:
    for name, data in load_shipped_schemas().items():
        expected = "sha256:" + hashlib.sha256(rfc8785.dumps(json.loads(data))).hexdigest()
        assert registry.digest(name) == expected
        assert registry.canonical(name) == rfc8785.dumps(json.loads(data))


def test_every_top_level_property_is_labelled(registry: SchemaRegistry) -> None:
    for name in registry.names():
        schema = registry.schema(name)
        labels = registry.labels(name)
        assert set(labels) == set(schema["properties"])
        assert set(labels.values()) <= LABELS
        assert "tlp" not in schema["properties"]  # TLP belongs to the envelope
    assert "personal" in registry.labels("incident-report@1").values()
    assert "personal" in registry.labels("travel-advisory@1").values()
    assert registry.labels("response@1")["point_of_contact"] == "personal"
    assert registry.labels("response@1")["in_reply_to"] == "public"
    assert registry.labels("threat-alert@1")["source"] == "sensitive-source"


def test_schema_returns_a_copy(registry: SchemaRegistry) -> None:
    registry.schema("threat-alert@1")["properties"].clear()
    assert registry.labels("threat-alert@1")


def test_unknown_schema_is_named_error(registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchema) as info:
        registry.digest("nope@1")
    assert info.value.code == "input.unknown_schema"


def _pack_with(mutate: Any) -> dict[str, bytes]:
    schema = json.loads(load_shipped_schemas()["threat-alert@1"])
    mutate(schema)
    return {"threat-alert@1": json.dumps(schema).encode()}


def _set(path: list[str], value: Any) -> Any:
    def mutate(schema: dict[str, Any]) -> None:
        node = schema
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: list[str]) -> Any:
    def mutate(schema: dict[str, Any]) -> None:
        node = schema
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


PACK_ERRORS = [
    ("id_mismatch", _set(["$id"], "accord:sop:other@1"), "$id"),
    ("dialect", _set(["$schema"], "http://json-schema.org/draft-07/schema#"), "$schema"),
    ("top_level_not_object", _set(["type"], "array"), "type"),
    ("open_top_level", _set(["additionalProperties"], True), "(top level)"),
    ("missing_label", _delete(["properties", "severity", "x-accord-label"]), "severity"),
    ("unknown_label", _set(["properties", "severity", "x-accord-label"], "secret"), "severity"),
    (
        "open_nested_object",
        _delete(["properties", "location", "additionalProperties"]),
        "/properties/location",
    ),
    ("unbounded_string", _delete(["properties", "title", "maxLength"]), "/properties/title"),
    ("unbounded_array", _delete(["properties", "indicators", "maxItems"]), "indicators"),
    (
        "reserved_field_name",
        _set(["properties", "iss"], {"x-accord-label": "public", "type": "integer"}),
        "iss",
    ),
    (
        "external_ref",
        _set(["properties", "site", "$ref"], "https://evil.example/schema.json"),
        "site",
    ),
    ("invalid_json_schema", _set(["properties", "severity", "type"], "colour"), "severity"),
]


@pytest.mark.parametrize(("case", "mutate", "named"), PACK_ERRORS, ids=[c[0] for c in PACK_ERRORS])
def test_schema_pack_errors_name_schema_and_property(case: str, mutate: Any, named: str) -> None:
    with pytest.raises(SchemaPackInvalid) as info:
        SchemaRegistry.from_documents(_pack_with(mutate))
    assert isinstance(info.value, InputError)
    assert "threat-alert@1" in info.value.message
    assert named in info.value.message


@pytest.mark.parametrize(
    "documents",
    [
        {},
        {"../evil@1": b"{}"},
        {"threat-alert@1": b"not json"},
        {"threat-alert@1": b"[]"},
        {"threat-alert@1": b'{"a": 1, "a": 2}'},
    ],
    ids=["empty", "path_name", "not_json", "not_object", "duplicate_key"],
)
def test_broken_pack_documents_are_refused(documents: dict[str, bytes]) -> None:
    with pytest.raises(SchemaPackInvalid):
        SchemaRegistry.from_documents(documents)


# ---- valid reports ------------------------------------------------------------------------


def test_valid_threat_alert_passes_and_carries_digest(registry: SchemaRegistry) -> None:
    valid = check_report_document(registry, doc(threat_fields()), "json")
    assert valid.report.sop == "threat-alert@1"
    assert valid.report.tlp == "amber"
    assert valid.sop_digest == registry.digest("threat-alert@1")
    assert valid.labels["location"] == "operational"


def test_minimal_reports_for_every_shipped_schema(registry: SchemaRegistry) -> None:
    minimal: dict[str, dict[str, Any]] = {
        "incident-report@1": {
            "title": "Gunmen fired on staff bus",
            "incident_type": "armed-attack",
            "occurred_at": "2026-05-14T06:40:00+05:00",
            "region": "Sindh",
            "status": "contained",
            "affected_persons": [{"name": "Li Wei", "nationality": "CN", "condition": "injured"}],
        },
        "travel-advisory@1": {
            "title": "Heightened kidnapping risk",
            "country": "PK",
            "advisory_level": "reconsider-travel",
            "valid_from": "2026-06-01T00:00:00Z",
            "guidance": "Travel only with escort.",
            "contact": {"name": "Duty officer", "phone": "+925112345678"},
        },
        "response@1": {
            "in_reply_to": "01890a5d-ac96-774b-bcce-b302099a8057",
            "status": "measures-taken",
            "title": "Convoy moves suspended",
        },
    }
    for sop, fields in minimal.items():
        assert check_report_document(registry, doc(fields, sop=sop), "json").report.fields == fields


def test_toml_report_with_offset_datetime(registry: SchemaRegistry) -> None:
    text = b"""
sop = "threat-alert@1"
tlp = "amber+strict"
[fields]
title = "Planned attack on convoy route"
threat_type = "ied"
severity = "critical"
region = "Balochistan"
[fields.time_window]
start = 2026-06-01T00:00:00Z
end = "2026-06-02T00:00:00Z"
[fields.source]
kind = "liaison"
reliability = "A"
credibility = 1
"""
    valid = check_report_document(registry, text, "toml")
    assert valid.report.fields["time_window"]["start"] == "2026-06-01T00:00:00+00:00"
    assert valid.report.tlp == "amber+strict"


@pytest.mark.parametrize("tlp", ["clear", "green", "amber", "amber+strict", "red"])
def test_every_tlp_level_is_accepted(registry: SchemaRegistry, tlp: str) -> None:
    assert check_report_document(registry, doc(threat_fields(), tlp=tlp), "json").report.tlp == tlp


def test_parse_then_validate_equals_check(registry: SchemaRegistry) -> None:
    report = parse_report_unverified(doc(threat_fields()), "json")
    assert isinstance(report, Report)
    assert validate_report(registry, report).report == report


# ---- B01: every problem at once -------------------------------------------------------------


@pytest.mark.threat("B01")
def test_b01_every_problem_listed_at_once_with_path_rule_and_type(
    registry: SchemaRegistry,
) -> None:
    fields = threat_fields()
    fields["title"] = "ab"
    fields["severity"] = SENTINEL
    fields["location"] = {"lat": 91, "lon": SENTINEL, "alt": 3}
    fields["time_window"]["start"] = "2026-13-01T00:00:00Z"
    fields["source"]["credibility"] = 7
    del fields["region"]
    fields["extra_" + "field"] = SENTINEL
    data = json.dumps({"sop": "threat-alert@1", "tlp": "amber-ish", "fields": fields, "x": 1})
    with pytest.raises(ReportInvalid) as info:
        check_report_document(registry, data.encode(), "json")
    found = {(p.path, p.rule, p.json_type) for p in info.value.problems}
    assert found == {
        ("x", "additionalProperties", "-"),
        ("tlp", "enum", "string"),
        ("fields.title", "minLength", "string"),
        ("fields.severity", "enum", "string"),
        ("fields.location.lat", "maximum", "integer"),
        ("fields.location.lon", "type", "string"),
        ("fields.location.alt", "additionalProperties", "integer"),
        ("fields.time_window.start", "format", "string"),
        ("fields.source.credibility", "maximum", "integer"),
        ("fields.region", "required", "absent"),
        ("fields.extra_field", "additionalProperties", "string"),
    }
    text = info.value.diagnostics()
    assert SENTINEL not in text
    assert "91" not in text and "amber-ish" not in text and "2026-13" not in text
    assert info.value.code == "input.report_invalid"


@pytest.mark.threat("B01")
def test_b01_problems_are_deduplicated_and_sorted(registry: SchemaRegistry) -> None:
    fields = threat_fields()
    for key in ("region", "severity", "threat_type"):
        del fields[key]
    with pytest.raises(ReportInvalid) as info:
        check_report_document(registry, doc(fields), "json")
    paths = [p.path for p in info.value.problems]
    assert paths == ["fields.region", "fields.severity", "fields.threat_type"]


@pytest.mark.parametrize(
    ("data", "fmt", "rule"),
    [
        (b'{"sop": "threat-alert@1", "tlp": ', "json", "json-syntax"),
        (b'{"sop": "a@1", "sop": "b@1"}', "json", "json-syntax"),
        (b"[1, 2]", "json", "type"),
        (b"sop = ", "toml", "toml-syntax"),
        (b'sop = "a@1"\nsop = "b@1"\n', "toml", "toml-syntax"),
        (b"{}", "yaml", "format"),
    ],
    ids=["truncated_json", "duplicate_key_json", "array", "bad_toml", "duplicate_key_toml", "fmt"],
)
@pytest.mark.threat("B01")
def test_b01_malformed_documents(
    registry: SchemaRegistry, data: bytes, fmt: str, rule: str
) -> None:
    assert {r for _, r in problems_of(registry, data, fmt)} == {rule}


@pytest.mark.threat("B01")
def test_b01_missing_envelope_parts_all_listed(registry: SchemaRegistry) -> None:
    assert problems_of(registry, b"{}") == {
        ("sop", "required"),
        ("tlp", "required"),
        ("fields", "required"),
    }


@pytest.mark.threat("B01")
def test_b01_wrong_envelope_types(registry: SchemaRegistry) -> None:
    data = json.dumps({"sop": 1, "tlp": None, "fields": []}).encode()
    assert problems_of(registry, data) == {
        ("sop", "pattern"),
        ("tlp", "enum"),
        ("fields", "type"),
    }


@pytest.mark.threat("B01")
def test_b01_unknown_schema(registry: SchemaRegistry) -> None:
    assert problems_of(registry, doc({}, sop="threat-alert@2")) == {("sop", "unknown-schema")}


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    fields = threat_fields()
    node = fields
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return fields


BOUNDARIES = [
    (["location", "lat"], 90, None),
    (["location", "lat"], -90.0, None),
    (["location", "lat"], 90.000001, "maximum"),
    (["location", "lon"], -180.5, "minimum"),
    (["location", "lon"], True, "type"),
    (["source", "credibility"], 1, None),
    (["source", "credibility"], 6, None),
    (["source", "credibility"], 0, "minimum"),
    (["source", "credibility"], 7, "maximum"),
    (["source", "credibility"], "3", "type"),
    (["source", "reliability"], "G", "enum"),
    (["title"], "x" * 200, None),
    (["title"], "x" * 201, "maxLength"),
    (["indicators"], ["i"] * 50, None),
    (["indicators"], ["i"] * 51, "maxItems"),
    (["indicators", 0], "", "minLength"),
    (["time_window", "end"], "2026-06-07 23:59:59Z", "format"),
    (["time_window", "end"], "2026-06-07T23:59:59", "format"),
    (["time_window", "end"], "2026-02-30T00:00:00Z", "format"),
    (["time_window", "end"], "2026-06-30T23:59:60Z", None),
]


@pytest.mark.parametrize(("path", "value", "rule"), BOUNDARIES)
@pytest.mark.threat("B01")
def test_b01_boundary_values(
    registry: SchemaRegistry, path: list[Any], value: Any, rule: str | None
) -> None:
    data = doc(_with(path, value))
    if rule is None:
        check_report_document(registry, data, "json")
    else:
        where = "fields" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)
        assert problems_of(registry, data) == {(where, rule)}


# ---- L04: parser bombs and Unicode ------------------------------------------------------------


@pytest.mark.threat("L04")
def test_l04_deep_nesting_json(registry: SchemaRegistry) -> None:
    bomb = b'{"sop": "threat-alert@1", "tlp": "red", "fields": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert problems_of(registry, bomb) == {("(document)", "json-syntax")}


@pytest.mark.threat("L04")
def test_l04_deep_nesting_toml(registry: SchemaRegistry) -> None:
    bomb = b"x = " + b"[" * 5000 + b"]" * 5000
    rules = {rule for _, rule in problems_of(registry, bomb, "toml")}
    assert rules <= {"max-depth", "toml-syntax"} and rules


@pytest.mark.threat("L04")
def test_l04_moderate_nesting_is_bounded_by_the_walker(registry: SchemaRegistry) -> None:
    fields = _with(["indicators"], [[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]])
    found = problems_of(registry, doc(fields))
    assert ("fields.indicators[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]", "max-depth") in found


@pytest.mark.threat("L04")
def test_l04_huge_integers(registry: SchemaRegistry) -> None:
    digits = b'{"sop": "threat-alert@1", "tlp": "red", "fields": {"title": ' + b"9" * 5000 + b"}}"
    assert problems_of(registry, digits) == {("(document)", "json-syntax")}
    found = problems_of(registry, doc(_with(["source", "credibility"], 2**60)))
    assert ("fields.source.credibility", "safe-integer") in found


@pytest.mark.threat("L04")
def test_l04_non_finite_number(registry: SchemaRegistry) -> None:
    data = doc(threat_fields()).replace(b"25.1264", b"1e400")
    assert ("fields.location.lat", "finite-number") in problems_of(registry, data)


@pytest.mark.threat("L04")
def test_l04_oversized_document(registry: SchemaRegistry) -> None:
    data = doc(_with(["summary"], "x" * (300 * 1024)))
    assert problems_of(registry, data) == {("(document)", "max-bytes")}


@pytest.mark.threat("L04")
def test_l04_long_string_within_document_limit(registry: SchemaRegistry) -> None:
    found = problems_of(registry, doc(_with(["summary"], "x" * (70 * 1024))))
    assert found == {("fields.summary", "max-length"), ("fields.summary", "maxLength")}


@pytest.mark.threat("L04")
def test_l04_invalid_utf8(registry: SchemaRegistry) -> None:
    data = doc(threat_fields()).replace(b"Balochistan", b"Baloch\xffstan")
    assert problems_of(registry, data) == {("(document)", "json-syntax")}
    assert problems_of(registry, b'sop = "\xff"', "toml") == {("(document)", "utf-8")}


@pytest.mark.threat("L04")
def test_l04_nul_raw_and_escaped(registry: SchemaRegistry) -> None:
    raw = doc(threat_fields()).replace(b"Balochistan", b"Baloch\x00stan")
    assert problems_of(registry, raw) == {("(document)", "json-syntax")}
    escaped = doc(_with(["region"], "Baloch\x00stan"))
    assert b"\\u0000" in escaped
    assert problems_of(registry, escaped) == {("fields.region", "nul")}


@pytest.mark.threat("L04")
def test_l04_lone_surrogate_and_control_characters(registry: SchemaRegistry) -> None:
    data = doc(threat_fields()).replace(b"Balochistan", b"Baloch\\ud800stan")
    assert problems_of(registry, data) == {("fields.region", "unicode")}
    escape = doc(_with(["title"], "Attack \x1b[31mred"))
    assert problems_of(registry, escape) == {("fields.title", "control-character")}
    c1 = doc(_with(["title"], "Attack \x9b31m"))
    assert problems_of(registry, c1) == {("fields.title", "control-character")}


@pytest.mark.threat("L04")
def test_l04_confusables_are_rejected_and_shown_escaped(registry: SchemaRegistry) -> None:
    fields = threat_fields()
    fields["t\u0456tle"] = fields.pop("title")  # Cyrillic i
    data = json.dumps(
        {"sop": "thr\u0435at-alert@1", "tlp": "\u0430mber", "fields": fields}, ensure_ascii=False
    ).encode()
    with pytest.raises(ReportInvalid) as info:
        check_report_document(registry, data, "json")
    assert {(p.path, p.rule) for p in info.value.problems} == {
        ("sop", "pattern"),
        ("tlp", "enum"),
    }
    good = doc(fields)
    found = problems_of(registry, good)
    assert found == {
        ("fields.title", "required"),
        ('fields["t\\u0456tle"]', "additionalProperties"),
    }


def test_toml_local_datetime_is_a_problem(registry: SchemaRegistry) -> None:
    text = b'sop = "threat-alert@1"\ntlp = "red"\n[fields]\nx = 2026-06-01T00:00:00\n'
    assert ("fields.x", "json-type") in problems_of(registry, text, "toml")


def test_toml_non_finite_float(registry: SchemaRegistry) -> None:
    text = b'sop = "threat-alert@1"\ntlp = "red"\n[fields.location]\nlat = inf\nlon = nan\n'
    found = problems_of(registry, text, "toml")
    assert {("fields.location.lat", "finite-number"), ("fields.location.lon", "finite-number")} <= (
        found
    )


def test_validate_report_checks_a_hand_built_report(registry: SchemaRegistry) -> None:
    report = Report(sop="threat-alert@1", tlp="purple", fields=_with(["severity"], "mild"))
    with pytest.raises(ReportInvalid) as info:
        validate_report(registry, report)
    assert {(p.path, p.rule) for p in info.value.problems} == {
        ("tlp", "enum"),
        ("fields.severity", "enum"),
    }


def test_many_problems_are_all_kept_but_the_message_is_bounded(registry: SchemaRegistry) -> None:
    data = doc(_with(["indicators"], [1] * 1000))
    with pytest.raises(ReportInvalid) as info:
        check_report_document(registry, data, "json")
    assert len(info.value.problems) == 1001  # maxItems + one type problem per item
    assert "... and 901 more" in info.value.message
    assert len(info.value.message) < 20_000


def test_problem_text_names_path_rule_and_type() -> None:
    text = str(Problem("fields.location.lat", "maximum", "number", "must be <= 90"))
    assert text == "fields.location.lat: must be <= 90 (rule 'maximum', found number)"


# ---- a partner's disclosed subset -------------------------------------------------------------


def test_disclosed_subset_needs_no_required_fields(registry: SchemaRegistry) -> None:
    subset = {"title": "Attack", "location": {"lat": 1.0, "lon": 2.0}}
    assert disclosed_field_problems(registry, "threat-alert@1", subset, limits=_limits()) == []


def test_disclosed_subset_still_checks_values_and_names(registry: SchemaRegistry) -> None:
    subset = {"location": {"lat": 100}, "unknown": 1}
    found = {
        (p.path, p.rule)
        for p in disclosed_field_problems(registry, "threat-alert@1", subset, limits=_limits())
    }
    assert found == {
        ("fields.location.lat", "maximum"),
        ("fields.location.lon", "required"),
        ("fields.unknown", "additionalProperties"),
    }
    unknown = disclosed_field_problems(registry, "nope@1", {}, limits=_limits())
    assert [(p.path, p.rule) for p in unknown] == [("sop", "unknown-schema")]


def _limits() -> Any:
    from exchange.sop import DEFAULT_REPORT_LIMITS

    return copy.copy(DEFAULT_REPORT_LIMITS)


# ---- cross-field rules (docs/adr/0020) -----------------------------------------------------

SENTINEL_TIME = "2026-06-01T00:00:00Z"
RULE_TA = {"rule": "not_earlier", "field": "time_window.end", "than": "time_window.start"}


@pytest.fixture(scope="module")
def ruled() -> SchemaRegistry:
    return SchemaRegistry.from_documents(load_shipped_schemas(), load_shipped_rules())


def rules_doc(*rules: dict[str, Any], sop: str = "threat-alert@1", **extra: Any) -> bytes:
    body = {"type": "accord.sop-rules/v1", "sop": sop, "rules": list(rules), **extra}
    return json.dumps(body).encode()


def window(start: str, end: str) -> bytes:
    return doc({**threat_fields(), "time_window": {"start": start, "end": end}})


def test_shipped_rules_load_and_leave_every_schema_digest_alone(
    registry: SchemaRegistry, ruled: SchemaRegistry
) -> None:
    assert set(load_shipped_rules()) == {"threat-alert@1", "travel-advisory@1"}
    assert [r.to_json() for r in ruled.rules("threat-alert@1")] == [RULE_TA]
    assert ruled.rules("response@1") == ()
    assert registry.rules("threat-alert@1") == ()  # a registry built without rules has none
    for name in registry.names():
        assert ruled.digest(name) == registry.digest(name)


def test_reversed_time_window_is_refused_naming_the_field_and_rule(ruled: SchemaRegistry) -> None:
    data = window("2026-06-07T00:00:00Z", SENTINEL_TIME)
    with pytest.raises(ReportInvalid) as info:
        check_report_document(ruled, data, "json")
    [problem] = info.value.problems
    assert (problem.path, problem.rule, problem.json_type) == (
        "fields.time_window.end",
        "not_earlier",
        "string",
    )
    assert "fields.time_window.start" in problem.detail
    assert SENTINEL_TIME not in info.value.message and "2026" not in info.value.message
    report = parse_report_unverified(data, "json")
    with pytest.raises(ReportInvalid, match="not_earlier"):
        validate_report(ruled, report)


@pytest.mark.parametrize(
    ("start", "end", "ok"),
    [
        ("2026-06-01T00:00:00Z", "2026-06-01T00:00:00Z", True),  # an instant window
        ("2026-06-01T05:00:00+05:00", "2026-06-01T00:00:00Z", True),  # same instant
        ("2026-06-01T04:59:59+05:00", "2026-06-01T00:00:00Z", True),  # offsets honoured
        ("2026-06-01T00:00:00Z", "2026-06-01T04:59:59+05:00", False),
        ("2026-06-01T00:00:00-01:00", "2026-06-01T00:30:00Z", False),
        ("2026-06-01T00:00:00.000000002Z", "2026-06-01T00:00:00.000000001Z", False),
        ("2026-06-01T00:00:00.1Z", "2026-06-01T00:00:00.100000000Z", True),
        ("2026-06-30T23:59:60Z", "2026-07-01T00:00:00Z", True),  # leap second
        ("2026-06-30T23:59:60Z", "2026-06-30T23:59:59Z", False),
        ("2026-06-01t00:00:00z", "2026-05-31T23:59:59Z", False),
    ],
)
def test_instants_are_compared_exactly(
    ruled: SchemaRegistry, start: str, end: str, ok: bool
) -> None:
    data = window(start, end)
    if ok:
        check_report_document(ruled, data, "json")
    else:
        assert problems_of(ruled, data) == {("fields.time_window.end", "not_earlier")}


def test_a_rule_is_skipped_when_a_field_is_missing_or_invalid(ruled: SchemaRegistry) -> None:
    # The schema reports the bad start; the rule adds nothing it cannot judge.
    assert problems_of(ruled, window("yesterday", "2026-06-01T00:00:00Z")) == {
        ("fields.time_window.start", "format")
    }
    fields = threat_fields()
    fields["time_window"] = {"end": "2026-06-01T00:00:00Z"}
    assert problems_of(ruled, doc(fields)) == {("fields.time_window.start", "required")}


def test_rule_problems_are_listed_with_every_other_problem(ruled: SchemaRegistry) -> None:
    fields = {**threat_fields(), "severity": "extreme"}
    fields["time_window"] = {"start": "2026-06-02T00:00:00Z", "end": "2026-06-01T00:00:00Z"}
    assert problems_of(ruled, doc(fields)) == {
        ("fields.severity", "enum"),
        ("fields.time_window.end", "not_earlier"),
    }


def test_travel_advisory_validity_must_not_end_before_it_starts(ruled: SchemaRegistry) -> None:
    fields = {
        "title": "Heightened kidnapping risk",
        "country": "PK",
        "advisory_level": "reconsider-travel",
        "valid_from": "2026-06-10T00:00:00Z",
        "valid_until": "2026-06-01T00:00:00Z",
        "guidance": "Travel only with escort.",
    }
    assert problems_of(ruled, doc(fields, sop="travel-advisory@1")) == {
        ("fields.valid_until", "not_earlier")
    }
    del fields["valid_until"]  # optional: no rule to apply
    check_report_document(ruled, doc(fields, sop="travel-advisory@1"), "json")


def test_not_later_rule_kind() -> None:
    rule = {"rule": "not_later", "field": "time_window.start", "than": "time_window.end"}
    reg = SchemaRegistry.from_documents(load_shipped_schemas(), {"threat-alert@1": rules_doc(rule)})
    assert problems_of(reg, window("2026-06-02T00:00:00Z", "2026-06-01T00:00:00Z")) == {
        ("fields.time_window.start", "not_later")
    }


def test_receiver_side_checks_do_not_apply_the_rules(ruled: SchemaRegistry) -> None:
    """A partner's release is judged by the pinned schema only: the rules file is not
    part of the agreement, so a receiver never refuses on it (docs/adr/0020)."""
    fields = {"time_window": {"start": "2026-06-02T00:00:00Z", "end": "2026-06-01T00:00:00Z"}}
    assert (
        disclosed_field_problems(ruled, "threat-alert@1", fields, limits=DEFAULT_REPORT_LIMITS)
        == []
    )


BAD_RULES = [
    (
        "unknown_kind",
        {"threat-alert@1": rules_doc({**RULE_TA, "rule": "before"})},
        "rules[0].rule: unknown rule kind",
    ),
    (
        "unknown_field",
        {"threat-alert@1": rules_doc({**RULE_TA, "field": "time_window.finish"})},
        "rules[0].field: must name a date-time field",
    ),
    (
        "not_a_date_time",
        {"threat-alert@1": rules_doc({**RULE_TA, "than": "title"})},
        "rules[0].than: must name a date-time field",
    ),
    (
        "object_not_leaf",
        {"threat-alert@1": rules_doc({**RULE_TA, "than": "time_window"})},
        "rules[0].than",
    ),
    (
        "same_field",
        {"threat-alert@1": rules_doc({**RULE_TA, "than": "time_window.end"})},
        "different fields",
    ),
    (
        "extra_key",
        {"threat-alert@1": rules_doc({**RULE_TA, "strict": True})},
        "exactly rule, field and than",
    ),
    ("repeated", {"threat-alert@1": rules_doc(RULE_TA, RULE_TA)}, "rules[1]: repeats"),
    ("no_rules", {"threat-alert@1": rules_doc()}, "must list 1 to 64 rules"),
    (
        "wrong_sop",
        {"threat-alert@1": rules_doc(RULE_TA, sop="response@1")},
        "sop: must be threat-alert@1",
    ),
    (
        "wrong_type",
        {"threat-alert@1": rules_doc(RULE_TA).replace(b"sop-rules/v1", b"sop-rules/v2")},
        "type: must be",
    ),
    (
        "unknown_top_key",
        {"threat-alert@1": rules_doc(RULE_TA, note="x")},
        "exactly type, sop and rules",
    ),
    ("unknown_schema", {"nope@1": rules_doc(RULE_TA, sop="nope@1")}, "no schema of that name"),
    ("not_json", {"threat-alert@1": b"{"}, "rules of threat-alert@1"),
]


@pytest.mark.parametrize(("case", "rules", "says"), BAD_RULES, ids=[c[0] for c in BAD_RULES])
def test_a_pack_with_a_broken_rule_is_refused_when_loaded(
    case: str, rules: dict[str, bytes], says: str
) -> None:
    with pytest.raises(SchemaPackInvalid) as info:
        SchemaRegistry.from_documents(load_shipped_schemas(), rules)
    assert says in info.value.message, case
