"""The fast check may only skip jsonschema where jsonschema finds nothing (exchange/fastschema.py).

The claim is one implication: ``check(x)`` is True only if the Draft 2020-12 validator (with
the registry's format checks) reports no error for ``x``. Attacked with generated schemas of
the subset and generated instances, and with mutations of real reports against every shipped
SOP schema; plus the corners where Python equality and JSON Schema's differ.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from exchange.fastschema import compile_check
from exchange.sop import (
    DEFAULT_REPORT_LIMITS,
    ReportInvalid,
    SchemaRegistry,
    check_report_document,
    disclosed_field_problems,
)
from sop import load_shipped_rules, load_shipped_schemas
from tests.builders import ALERT


def _rfc3339(value: object) -> bool:
    # A stand-in format with the shape of the registry's: True for non-strings.
    return not isinstance(value, str) or value.endswith("Z")


FORMATS = {"date-time": _rfc3339}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    checker = FormatChecker(formats=())
    checker.checks("date-time")(_rfc3339)
    return Draft202012Validator(schema, format_checker=checker)


def valid(schema: dict[str, Any], instance: object) -> bool:
    return not list(validator(schema).iter_errors(instance))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.sampled_from([0.0, 1.0, -0.0, 2.5, 1e300])
    | st.sampled_from(["", "a", "ab", "abc", "A1", "2026-01-01T00:00:00Z", "x" * 9, "é"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = ["string", "object", "array", "boolean", "null", "integer", "number"]


def schemas() -> st.SearchStrategy[Any]:
    def node(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keyword = st.one_of(
            st.tuples(
                st.just("type"),
                st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
            ),
            st.tuples(st.just("enum"), st.lists(json_values, min_size=1, max_size=4)),
            st.tuples(
                st.just("properties"),
                st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
            ),
            st.tuples(
                st.just("required"),
                st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True),
            ),
            st.tuples(st.just("additionalProperties"), st.booleans() | inner),
            st.tuples(st.just("items"), st.booleans() | inner),
            st.tuples(
                st.sampled_from(["minItems", "maxItems", "minLength", "maxLength"]),
                st.integers(0, 3),
            ),
            st.tuples(st.just("uniqueItems"), st.booleans()),
            st.tuples(st.just("pattern"), st.sampled_from(["^a", "b$", "[0-9]", "^.{2}$"])),
            st.tuples(st.just("format"), st.sampled_from(["date-time", "email", "uuid"])),
            st.tuples(
                st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]),
                st.integers(-2, 2) | st.sampled_from([0.5, -1.5]),
            ),
            st.tuples(st.sampled_from(["title", "description", "x-accord-label"]), st.just("note")),
        )
        return st.lists(keyword, max_size=3).map(dict) | st.booleans()

    return st.recursive(st.lists(st.nothing(), max_size=0).map(dict), node, max_leaves=6)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas(), instances=st.lists(json_values, min_size=1, max_size=8))
def test_a_generated_schema_is_certain_only_where_jsonschema_agrees(
    schema: Any, instances: list[Any]
) -> None:
    check = compile_check(schema, FORMATS)
    assert check is not None  # every generated keyword is in the subset
    for instance in instances:
        if check(instance):
            assert valid(schema, instance), (schema, instance)


def test_the_subset_is_used_where_it_can_be() -> None:
    # Not a vacuous implication: valid instances of a rich schema are answered True.
    schema = {
        "type": "object",
        "required": ["a"],
        "additionalProperties": False,
        "properties": {
            "a": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^a"},
            "b": {"type": "array", "items": {"enum": ["x", "y", 3]}, "uniqueItems": True},
            "c": {"type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 10},
            "d": {"type": "string", "format": "date-time"},
        },
    }
    check = compile_check(schema, FORMATS)
    assert check is not None
    good = {"a": "ab", "b": ["x", "y"], "c": 3, "d": "2026-01-01T00:00:00Z"}
    assert check(good) and valid(schema, good)
    assert check({"a": "a", "c": None})
    for bad in (
        {},
        {"a": ""},
        {"a": "ba"},
        {"a": "a", "e": 1},
        {"a": "a", "b": ["x", "x"]},
        {"a": "a", "c": 10},
        {"a": "a", "c": -1},
        {"a": "a", "d": "2026-01-01T00:00:00+01:00"},
    ):
        assert not check(bad), bad
        assert not valid(schema, bad), bad


# Values where Python's and JSON Schema's equality agree (no integral floats, no bools
# beside numbers in one list): here the fast check must be exact, not just safe.
CORPUS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -3,
    2.5,
    -1.5,
    "",
    "a",
    "ab",
    "abc",
    "abcd",
    "b9",
    "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00+01:00",
    [],
    ["a"],
    ["a", "a"],
    ["b", "a"],
    ["a", "b", "c", "d"],
    {},
    {"a": "x"},
    {"a": 1, "b": 2},
    {"c": None},
    {"a": "ab", "d": []},
]
SINGLE: list[Any] = [
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "object"},
    {"type": "array"},
    {"type": "boolean"},
    {"type": "null"},
    {"type": ["string", "null"]},
    {"enum": ["a", "ab", 1, None]},
    {"enum": [True]},
    {"enum": [2.5, 0]},
    {"minLength": 2},
    {"maxLength": 2},
    {"minItems": 1},
    {"maxItems": 1},
    {"uniqueItems": True},
    {"uniqueItems": False},
    {"pattern": "^a"},
    {"pattern": "[0-9]"},
    {"format": "date-time"},
    {"format": "email"},
    {"minimum": 1},
    {"maximum": 1},
    {"exclusiveMinimum": 1},
    {"exclusiveMaximum": 0.5},
    {"required": ["a"]},
    {"required": ["a", "b"]},
    {"properties": {"a": {"type": "string"}}},
    {"properties": {"a": {"minLength": 2}}},
    {"properties": {"a": {}}, "additionalProperties": False},
    {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
    {"additionalProperties": {"type": "string"}},
    {"additionalProperties": False},
    {"items": {"type": "string", "maxLength": 1}},
    {"items": False},
    {"items": True},
    True,
    False,
    {},
]


@pytest.mark.parametrize("schema", SINGLE, ids=lambda s: json.dumps(s))
def test_each_keyword_agrees_exactly_with_jsonschema_where_equality_agrees(schema: Any) -> None:
    check = compile_check(schema, FORMATS)
    assert check is not None
    for instance in CORPUS:
        assert check(instance) == valid(schema, instance), instance


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"type": "integer"}, 1.0),  # an integer-valued float is an "integer" to JSON Schema
        ({"enum": [1]}, 1.0),  # 1 == 1.0
        ({"enum": [1]}, True),  # but True is not 1 in JSON Schema
        ({"enum": [[1]]}, [1]),  # containers are jsonschema's to compare
        ({"uniqueItems": True}, [1, True]),
        ({"uniqueItems": True}, [{"a": 1}, {"a": 1}]),
    ],
)
def test_the_corners_of_equality_go_to_jsonschema(schema: dict[str, Any], instance: Any) -> None:
    check = compile_check(schema, FORMATS)
    assert check is not None
    assert check(instance) is False  # never certain here: jsonschema decides


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/a", "$defs": {"a": {}}},
        {"allOf": [{}]},
        {"anyOf": [{}]},
        {"oneOf": [{}]},
        {"not": {}},
        {"const": 1},
        {"multipleOf": 2},
        {"patternProperties": {"^a": {}}},
        {"prefixItems": [{}]},
        {"if": {}, "then": {}},
        {"dependentRequired": {"a": ["b"]}},
        {"unevaluatedProperties": False},
        {"contains": {}},
        {"propertyNames": {"maxLength": 1}},
        {"type": "decimal"},
        {"pattern": "("},
        {"minLength": -1},
        {"properties": {"a": {"allOf": []}}},
        "not a schema",
    ],
)
def test_a_keyword_outside_the_subset_leaves_every_instance_to_jsonschema(schema: Any) -> None:
    assert compile_check(schema, FORMATS) is None


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.from_documents(load_shipped_schemas(), load_shipped_rules())


def threat_fields() -> dict[str, Any]:
    fields: dict[str, Any] = copy.deepcopy(ALERT["fields"])
    return fields


def test_every_shipped_sop_schema_compiles(registry: SchemaRegistry) -> None:
    for name in registry.names():
        assert registry.fast_check(name) is not None, name
        assert registry.fast_check(name, partial=True) is not None, name
    check = registry.fast_check("threat-alert@1")
    assert check is not None and check(threat_fields())


def _mutations() -> st.SearchStrategy[tuple[str, Any, str]]:
    keys = [*threat_fields(), "unknown_key"]
    return st.tuples(
        st.sampled_from(keys),
        json_values | st.sampled_from([[], {}, {"lat": 91, "lon": 0}, {"start": "x", "end": "y"}]),
        st.sampled_from(["set", "drop", "nest"]),
    )


@settings(max_examples=300, deadline=None)
@given(changes=st.lists(_mutations(), min_size=1, max_size=3))
def test_a_mutated_report_is_certain_only_where_jsonschema_agrees(
    registry: SchemaRegistry, changes: list[tuple[str, Any, str]]
) -> None:
    fields: dict[str, Any] = copy.deepcopy(threat_fields())
    for key, value, how in changes:
        if how == "drop":
            fields.pop(key, None)
        elif how == "nest" and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], "lat": value}
        else:
            fields[key] = value
    for partial in (False, True):
        check = registry.fast_check("threat-alert@1", partial=partial)
        assert check is not None
        if check(fields):
            found = list(registry.validator("threat-alert@1", partial=partial).iter_errors(fields))
            assert not found, (fields, partial)


def test_validation_problems_are_the_same_with_the_fast_path(registry: SchemaRegistry) -> None:
    # A report the fast check is unsure of gets jsonschema's full list, as before.
    fields = {**threat_fields(), "severity": "extreme", "title": "x", "extra": 1}
    data = json.dumps({"sop": "threat-alert@1", "tlp": "amber", "fields": fields}).encode()
    with pytest.raises(ReportInvalid) as raised:
        check_report_document(registry, data, "json")
    found = {(p.path, p.rule) for p in raised.value.problems}
    assert found >= {
        ("fields.severity", "enum"),
        ("fields.title", "minLength"),
        ("fields.extra", "additionalProperties"),
    }
    release = {"severity": "extreme"}
    problems = disclosed_field_problems(
        registry, "threat-alert@1", release, limits=DEFAULT_REPORT_LIMITS
    )
    assert [(p.path, p.rule) for p in problems] == [("fields.severity", "enum")]
