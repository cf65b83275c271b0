"""SOP schemas and report validation (docs/DESIGN.md §4): pure, bytes in, verified values out.

A ``SchemaRegistry`` is built from schema documents (bytes) and refuses a pack that breaks
the Accord rules. A report is read with ``parse_report_unverified`` (syntax and shape only)
and checked with ``validate_report``; ``check_report_document`` does both and lists every
problem at once. Problems name the path, the rule and the JSON type of the bad value,
never the value itself.

Cross-field rules (docs/adr/0020) live beside the schemas, one optional rules document per
schema (``sop/rules/<name>@<major>.json``), because a schema's bytes are pinned by digest in
signed agreements and a rule added inside it would change that digest::

    {"type": "accord.sop-rules/v1", "sop": "threat-alert@1",
     "rules": [{"rule": "not_earlier", "field": "time_window.end",
                "than": "time_window.start"}]}

Kinds: ``not_earlier`` (the field's instant is the same as or after ``than``'s) and
``not_later``. Both paths must name ``date-time`` strings of the schema; they are compared
as instants (offsets honoured, fractions exact), and a rule whose fields are absent or not
valid date-times is skipped (the schema already reports those). ``validate_report`` and
``check_report_document`` (the author's node: validate, submit, new) apply them;
``disclosed_field_problems`` (a receiver) does not, because the rules are not pinned by the
agreement and partners may ship different ones.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError

from exchange.canonical import canonical_json, parse_json_unverified, sha256_digest
from exchange.errors import ConfigError, InputError
from exchange.fastschema import Check, compile_check

LABELS: Final = frozenset({"public", "operational", "tactical", "sensitive-source", "personal"})
TLP_LEVELS: Final = ("clear", "green", "amber", "amber+strict", "red")
SOP_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}@[1-9][0-9]{0,3}")
FIELD_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
# Names a field may not take: SD-JWT's own and every claim of the issuer JWT (docs/DESIGN.md §5).
RESERVED_FIELD_NAMES: Final = frozenset(
    {"_sd", "_sd_alg", "...", "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf"}
    | {"sop", "sop_digest", "tlp", "version", "supersedes"}
)
MAX_SAFE_INTEGER: Final = 2**53 - 1
MAX_SCHEMA_BYTES: Final = 1 << 20
DOCUMENT_PATH: Final = "(document)"
MAX_PROBLEMS_SHOWN: Final = 100  # in the message; ``problems`` keeps them all
RULES_TYPE: Final = "accord.sop-rules/v1"
RULE_KINDS: Final = ("not_earlier", "not_later")
MAX_RULES: Final = 64  # per schema
_RULE_KEYS: Final = frozenset({"rule", "field", "than"})
_ENVELOPE_KEYS: Final = ("sop", "tlp", "fields")
# C0 and C1 controls other than TAB, LF and CR: terminal escapes and NUL have no place in a report.
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")
# Any character _string_problems reports (NUL, control, lone surrogate): one search per string.
_SUSPECT_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_RFC3339_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)

ReportFormat = Literal["json", "toml"]


@dataclass(frozen=True)
class ReportLimits:
    """Bounds on an officer's report document (docs/THREATS.md L01, L04)."""

    max_bytes: int = 256 * 1024
    max_depth: int = 16
    max_string_chars: int = 64 * 1024
    max_key_chars: int = 128

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_depth", "max_string_chars", "max_key_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"ReportLimits.{name} must be a positive integer")


DEFAULT_REPORT_LIMITS: Final = ReportLimits()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a report: where, which rule, what JSON type was found."""

    path: str
    rule: str
    json_type: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail} (rule '{self.rule}', found {self.json_type})"


class ReportInvalid(InputError):
    """The officer's report failed parsing or validation; ``problems`` lists every finding."""

    code = "input.report_invalid"
    default_next_step = "Fix every listed field and run 'accord report validate FILE' again."

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]):
        unique = dict.fromkeys(problems)  # one per (path, rule, type), in a stable order
        self.problems = tuple(sorted(unique, key=lambda p: (p.path, p.rule)))
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        if count > MAX_PROBLEMS_SHOWN:
            lines += f"\n  ... and {count - MAX_PROBLEMS_SHOWN} more"
        super().__init__(f"report has {count} problem{'s' if count != 1 else ''}:\n{lines}")


class UnknownSchema(InputError):
    code = "input.unknown_schema"
    default_next_step = "List the known schemas with 'accord schema list'."


class SchemaPackInvalid(InputError):
    code = "input.schema_pack_invalid"
    default_next_step = "Fix the named schema file; every node must load the same pack."


@dataclass(frozen=True)
class FieldRule:
    """A cross-field rule of one schema: ``field`` is ``kind`` (``not_earlier`` /
    ``not_later``) ``than``; paths are property names from the top level."""

    kind: str
    field: tuple[str, ...]
    than: tuple[str, ...]

    @property
    def field_path(self) -> str:
        return _fields_path(self.field)

    @property
    def than_path(self) -> str:
        return _fields_path(self.than)

    def to_json(self) -> dict[str, str]:
        return {"rule": self.kind, "field": ".".join(self.field), "than": ".".join(self.than)}


def _fields_path(parts: tuple[str, ...]) -> str:
    where = "fields"
    for part in parts:
        where = join_path(where, part)
    return where


@dataclass(frozen=True)
class Report:
    """A report as the officer wrote it: schema name, TLP and top-level fields.

    Not yet validated against its schema: pass it through ``validate_report``.
    """

    sop: str
    tlp: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class ValidReport:
    """A report that passed ``validate_report``; the only kind the node may seal."""

    report: Report
    sop_digest: str
    labels: Mapping[str, str]


def json_type(value: object) -> str:
    """The JSON type name of a parsed value (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def join_path(parent: str, key: str | int) -> str:
    """``fields.location.lat`` / ``fields.indicators[3]``; odd keys are shown JSON-escaped."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _PLAIN_KEY_RE.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    shown = json.dumps(key[:64], ensure_ascii=True) + ("..." if len(key) > 64 else "")
    return f"{parent}[{shown}]"


def value_problems(value: Any, *, path: str, limits: ReportLimits) -> list[Problem]:
    """Parser-bomb and Unicode checks on a parsed JSON value (docs/THREATS.md L04).

    Iterative, so depth is bounded without recursion: nesting, unsafe integers,
    non-finite numbers, NUL and control characters, lone surrogates, oversized strings.
    A path is spelled out only for a value with a problem (most values have none).
    """
    problems: list[Problem] = []
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(value, (), 0)]
    max_chars, max_key = limits.max_string_chars, limits.max_key_chars

    def where(keys: tuple[str | int, ...]) -> str:
        out = path
        for key in keys:
            out = join_path(out, key)
        return out

    while stack:
        item, keys, depth = stack.pop()
        if depth > limits.max_depth:
            detail = f"nested deeper than {limits.max_depth} levels"
            problems.append(Problem(where(keys), "max-depth", json_type(item), detail))
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                detail = "integer outside the interoperable range of +/-(2^53-1)"
                problems.append(Problem(where(keys), "safe-integer", "integer", detail))
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(Problem(where(keys), "finite-number", "number", "must be finite"))
        elif isinstance(item, str):
            if len(item) > max_chars or _SUSPECT_RE.search(item) is not None:
                problems.extend(_string_problems(item, where(keys), max_chars))
        elif isinstance(item, list):
            stack.extend((v, (*keys, i), depth + 1) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for key, v in item.items():
                child = (*keys, key)
                if len(key) > max_key or _SUSPECT_RE.search(key) is not None:
                    problems.extend(_string_problems(key, where(child), max_key, key=True))
                stack.append((v, child, depth + 1))
        else:
            detail = "is not a JSON value (write dates as quoted RFC 3339 strings)"
            problems.append(Problem(where(keys), "json-type", json_type(item), detail))
    return problems


def _string_problems(text: str, where: str, max_chars: int, *, key: bool = False) -> list[Problem]:
    what = "object key" if key else "string"
    found: list[Problem] = []
    if len(text) > max_chars:
        detail = f"{what} is {len(text)} characters long; the limit is {max_chars}"
        found.append(Problem(where, "max-length", "string", detail))
    if "\x00" in text:
        found.append(Problem(where, "nul", "string", f"{what} contains a NUL character"))
    elif _CONTROL_RE.search(text):
        found.append(Problem(where, "control-character", "string", f"{what} has a control char"))
    if _SURROGATE_RE.search(text):
        detail = f"{what} contains a lone UTF-16 surrogate"
        found.append(Problem(where, "unicode", "string", detail))
    return found


def _is_rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True  # format applies to strings only; "type" catches the rest
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    offset = match.group(8)
    if offset not in ("Z", "z") and (int(offset[1:3]) > 23 or int(offset[4:6]) > 59):
        return False
    try:
        dt.datetime(year, month, day, hour, minute, min(second, 59))  # 60 = leap second
    except ValueError:
        return False
    return second <= 60


# The formats the validators check (FormatChecker) and the fast checks use: the same functions.
_FORMATS: Final[dict[str, Check]] = {"date-time": _is_rfc3339}


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, test in _FORMATS.items():
        checker.checks(name)(test)
    return checker


class SchemaRegistry:
    """The agreed SOP schemas, checked once, with their digests, labels and validators."""

    def __init__(
        self,
        schemas: Mapping[str, dict[str, Any]],
        rules: Mapping[str, tuple[FieldRule, ...]] | None = None,
    ) -> None:
        """Use ``from_documents``; this constructor trusts its (already checked) input."""
        self._schemas = dict(sorted(schemas.items()))
        self._rules = {n: tuple((rules or {}).get(n, ())) for n in self._schemas}
        self._canonical = {n: canonical_json(s) for n, s in self._schemas.items()}
        self._digests = {n: sha256_digest(b) for n, b in self._canonical.items()}
        self._labels = {
            n: {p: sub["x-accord-label"] for p, sub in s["properties"].items()}
            for n, s in self._schemas.items()
        }
        checker = _format_checker()
        self._validators = {
            n: Draft202012Validator(s, format_checker=checker) for n, s in self._schemas.items()
        }
        self._partial_validators = {
            n: Draft202012Validator({**s, "required": []}, format_checker=checker)
            for n, s in self._schemas.items()
        }
        # Certain-validity checks that let a valid instance skip jsonschema (exchange/
        # fastschema.py); None for a schema outside their subset.
        self._fast = {n: compile_check(s, _FORMATS) for n, s in self._schemas.items()}
        self._partial_fast = {
            n: compile_check({**s, "required": []}, _FORMATS) for n, s in self._schemas.items()
        }

    @classmethod
    def from_documents(
        cls, documents: Mapping[str, bytes], rules: Mapping[str, bytes] | None = None
    ) -> SchemaRegistry:
        """Parse and check every schema, and each schema's cross-field rules document
        (``rules`` maps a schema name to its bytes); a broken pack, or a rule naming an
        unknown schema, field or kind, raises ``SchemaPackInvalid``."""
        if not documents:
            raise SchemaPackInvalid("the schema pack is empty")
        schemas: dict[str, dict[str, Any]] = {}
        for name, data in documents.items():
            schemas[name] = _check_schema(name, data)
        checked: dict[str, tuple[FieldRule, ...]] = {}
        for name, data in (rules or {}).items():
            if name not in schemas:
                shown = json.dumps(str(name)[:80], ensure_ascii=True)
                raise SchemaPackInvalid(f"rules {shown}: no schema of that name in the pack")
            checked[name] = _check_rules(name, data, schemas[name])
        return cls(schemas, checked)

    def names(self) -> list[str]:
        return list(self._schemas)

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def schema(self, name: str) -> dict[str, Any]:
        """A deep copy of the parsed schema (callers cannot alter the registry)."""
        return copy.deepcopy(self._schemas[self._known(name)])

    def canonical(self, name: str) -> bytes:
        """The schema's RFC 8785 bytes, the form its digest is taken over."""
        return self._canonical[self._known(name)]

    def digest(self, name: str) -> str:
        return self._digests[self._known(name)]

    def labels(self, name: str) -> dict[str, str]:
        return dict(self._labels[self._known(name)])

    def rules(self, name: str) -> tuple[FieldRule, ...]:
        """The schema's cross-field rules (none when the pack ships no rules for it)."""
        return self._rules[self._known(name)]

    def validator(self, name: str, *, partial: bool = False) -> Draft202012Validator:
        """The cached validator; ``partial`` drops top-level ``required`` (for disclosures)."""
        known = self._known(name)
        return self._partial_validators[known] if partial else self._validators[known]

    def fast_check(self, name: str, *, partial: bool = False) -> Check | None:
        """True only for fields the validator accepts (False: ask the validator); None when
        the schema is outside the fast subset."""
        known = self._known(name)
        return self._partial_fast[known] if partial else self._fast[known]

    def _known(self, name: str) -> str:
        if name not in self._schemas:
            shown = json.dumps(name[:80], ensure_ascii=True) if isinstance(name, str) else "?"
            raise UnknownSchema(f"unknown SOP schema {shown}")
        return name


def _check_schema(name: str, data: bytes) -> dict[str, Any]:
    if not isinstance(name, str) or SOP_NAME_RE.fullmatch(name) is None:
        shown = json.dumps(str(name)[:80], ensure_ascii=True)
        raise SchemaPackInvalid(f"schema name {shown} is not <name>@<major> (a-z, 0-9, '-')")

    def fail(where: str, rule: str) -> SchemaPackInvalid:
        return SchemaPackInvalid(f"schema {name}: {where}: {rule}")

    try:
        schema = parse_json_unverified(data, what=f"schema {name}", max_bytes=MAX_SCHEMA_BYTES)
    except InputError as e:
        raise SchemaPackInvalid(e.message) from e
    if not isinstance(schema, dict):
        raise fail("(document)", "must be a JSON object")
    if schema.get("$schema") != JSON_SCHEMA_DIALECT:
        raise fail("$schema", f"must be {JSON_SCHEMA_DIALECT}")
    if schema.get("$id") != f"accord:sop:{name}":
        raise fail("$id", f"must be accord:sop:{name}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(document)"
        raise fail(where, f"not valid JSON Schema 2020-12 (keyword '{e.validator}')") from e
    if schema.get("type") != "object":
        raise fail("type", "the top level must be an object")
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise fail("properties", "must name at least one property")
    for prop, sub in properties.items():
        if FIELD_NAME_RE.fullmatch(prop) is None or prop in RESERVED_FIELD_NAMES:
            shown = json.dumps(prop[:80], ensure_ascii=True)
            raise fail(f"properties/{shown}", "name must match [a-z][a-z0-9_]* and not be reserved")
        label = sub.get("x-accord-label") if isinstance(sub, dict) else None
        if label not in LABELS:
            raise fail(f"properties/{prop}", f"x-accord-label must be one of {sorted(LABELS)}")
    for where, sub in _subschemas(schema, ""):
        _check_subschema(where or "(top level)", sub, fail)
    return schema


def _subschemas(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key in ("properties", "patternProperties", "$defs"):
        for prop, sub in schema.get(key, {}).items():
            yield from _subschemas(sub, f"{where}/{key}/{prop}")
    for key in ("items", "additionalItems", "contains", "not", "if", "then", "else"):
        if key in schema:
            yield from _subschemas(schema[key], f"{where}/{key}")
    for key in ("prefixItems", "allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from _subschemas(sub, f"{where}/{key}/{i}")


def _check_subschema(where: str, sub: dict[str, Any], fail: Any) -> None:
    for ref_key in ("$ref", "$dynamicRef"):
        ref = sub.get(ref_key)
        if isinstance(ref, str) and not ref.startswith("#"):
            raise fail(where, f"{ref_key} must be local ('#...'); the pack is self-contained")
    kinds = sub.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if ("object" in kinds or "properties" in sub) and sub.get("additionalProperties") is not False:
        raise fail(where, "objects must set additionalProperties: false")
    if "string" in kinds and not ({"maxLength", "enum", "const"} & sub.keys()):
        raise fail(where, "strings must be bounded by maxLength (or enum/const)")
    if "array" in kinds and "maxItems" not in sub:
        raise fail(where, "arrays must be bounded by maxItems")


def _check_rules(name: str, data: bytes, schema: dict[str, Any]) -> tuple[FieldRule, ...]:
    def fail(where: str, rule: str) -> SchemaPackInvalid:
        return SchemaPackInvalid(f"rules of {name}: {where}: {rule}")

    try:
        doc = parse_json_unverified(data, what=f"rules of {name}", max_bytes=MAX_SCHEMA_BYTES)
    except InputError as e:
        raise SchemaPackInvalid(e.message) from e
    if not isinstance(doc, dict) or set(doc) != {"type", "sop", "rules"}:
        raise fail("(document)", "must be an object with exactly type, sop and rules")
    if doc["type"] != RULES_TYPE:
        raise fail("type", f"must be {RULES_TYPE}")
    if doc["sop"] != name:
        raise fail("sop", f"must be {name}")
    raw = doc["rules"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_RULES:
        raise fail("rules", f"must list 1 to {MAX_RULES} rules")
    out: list[FieldRule] = []
    for i, entry in enumerate(raw):
        where = f"rules[{i}]"
        if not isinstance(entry, dict) or set(entry) != _RULE_KEYS:
            raise fail(where, "must be an object with exactly rule, field and than")
        if entry["rule"] not in RULE_KINDS:
            raise fail(f"{where}.rule", f"unknown rule kind (one of {', '.join(RULE_KINDS)})")
        paths = []
        for key in ("field", "than"):
            path = _date_time_path(schema, entry[key])
            if path is None:
                raise fail(f"{where}.{key}", "must name a date-time field of the schema")
            paths.append(path)
        if paths[0] == paths[1]:
            raise fail(where, "field and than must name different fields")
        rule = FieldRule(entry["rule"], paths[0], paths[1])
        if rule in out:
            raise fail(where, "repeats an earlier rule")
        out.append(rule)
    return tuple(out)


def _date_time_path(schema: dict[str, Any], path: object) -> tuple[str, ...] | None:
    """``("time_window", "end")`` when ``path`` names a ``date-time`` string property."""
    if not isinstance(path, str) or not path:
        return None
    parts = tuple(path.split("."))
    node: Any = schema
    for part in parts:
        properties = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(properties, dict) or part not in properties:
            return None
        node = properties[part]
    kinds = node.get("type") if isinstance(node, dict) else None
    if kinds != "string" or node.get("format") != "date-time":
        return None
    return parts


# ---- reports -----------------------------------------------------------------------------


def parse_report_unverified(
    data: bytes, fmt: ReportFormat, *, limits: ReportLimits = DEFAULT_REPORT_LIMITS
) -> Report:
    """Read an officer's report (JSON or TOML): syntax, L04 checks and the envelope shape.

    The fields are not checked against their schema: that is ``validate_report``.
    Raises ``ReportInvalid`` listing every problem found.
    """
    document = _parse_document(data, fmt, limits)
    sop, tlp, fields, problems = _envelope(document, limits)
    if problems:
        raise ReportInvalid(problems)
    return Report(sop=sop, tlp=tlp, fields=fields)


def validate_report(
    registry: SchemaRegistry, report: Report, *, limits: ReportLimits = DEFAULT_REPORT_LIMITS
) -> ValidReport:
    """Check a report against its SOP schema; raise ``ReportInvalid`` with every problem."""
    document = {"sop": report.sop, "tlp": report.tlp, "fields": report.fields}
    sop, _tlp, fields, problems = _envelope(document, limits)
    problems.extend(_schema_problems(registry, sop, fields))
    problems.extend(field_rule_problems(registry, sop, fields))
    if problems:
        raise ReportInvalid(problems)
    return ValidReport(report, registry.digest(sop), registry.labels(sop))


def check_report_document(
    registry: SchemaRegistry,
    data: bytes,
    fmt: ReportFormat,
    *,
    limits: ReportLimits = DEFAULT_REPORT_LIMITS,
) -> ValidReport:
    """Parse and validate in one pass, so envelope and field problems are listed together.

    This is what ``accord report validate`` and ``accord report submit`` call.
    """
    document = _parse_document(data, fmt, limits)
    sop, tlp, fields, problems = _envelope(document, limits)
    problems.extend(_schema_problems(registry, sop, fields))
    problems.extend(field_rule_problems(registry, sop, fields))
    if problems:
        raise ReportInvalid(problems)
    return ValidReport(Report(sop, tlp, fields), registry.digest(sop), registry.labels(sop))


def disclosed_field_problems(
    registry: SchemaRegistry, sop: str, fields: Mapping[str, Any], *, limits: ReportLimits
) -> list[Problem]:
    """Problems of a *subset* of a report's fields (a partner's release): no ``required``.

    An unknown ``sop`` is a problem at path ``sop``. The caller decides the error family
    (a partner's data is a ``PeerDataError``).
    """
    problems = value_problems(dict(fields), path="fields", limits=limits)
    if sop not in registry:
        return [*problems, Problem("sop", "unknown-schema", "string", "is not a known schema")]
    fast = registry.fast_check(sop, partial=True)
    instance = dict(fields)
    if fast is None or not fast(instance):
        errors = registry.validator(sop, partial=True).iter_errors(instance)
        problems.extend(p for e in errors for p in _problems_of(e, "fields"))
    unique = dict.fromkeys(problems)
    return sorted(unique, key=lambda p: (p.path, p.rule))


def field_rule_problems(registry: SchemaRegistry, sop: object, fields: object) -> list[Problem]:
    """The cross-field rules of ``sop`` that ``fields`` break, one problem each at the
    rule's ``field`` path naming the rule and the other path (never a value). Rules whose
    fields are absent or not valid date-times are skipped. An unknown ``sop`` has none."""
    if not isinstance(sop, str) or sop not in registry or not isinstance(fields, dict):
        return []
    problems: list[Problem] = []
    for rule in registry.rules(sop):
        a, b = _instant(_lookup(fields, rule.field)), _instant(_lookup(fields, rule.than))
        if a is None or b is None:
            continue
        if rule.kind == "not_earlier" and a < b:
            detail = f"must not be earlier than {rule.than_path}"
        elif rule.kind == "not_later" and a > b:
            detail = f"must not be later than {rule.than_path}"
        else:
            continue
        problems.append(Problem(rule.field_path, rule.kind, "string", detail))
    return problems


def _lookup(fields: Mapping[str, Any], path: tuple[str, ...]) -> object:
    node: object = fields
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _instant(value: object) -> tuple[int, int] | None:
    """An RFC 3339 date-time as (UTC POSIX seconds, nanoseconds), exact; ``None`` if not one.
    A leap second (:60) counts as the first second of the next minute."""
    if not isinstance(value, str) or not _is_rfc3339(value):
        return None
    match = _RFC3339_RE.fullmatch(value)
    assert match is not None  # _is_rfc3339 matched it
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    offset = match.group(8)
    sign = -1 if offset[0] == "-" else 1
    shift = 0 if offset in ("Z", "z") else sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    base = dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=dt.UTC)
    seconds = int(base.timestamp()) + (second - min(second, 59)) - shift
    fraction = (match.group(7) or ".")[1:]
    return seconds, int(fraction.ljust(9, "0"))


def _parse_document(data: bytes, fmt: ReportFormat, limits: ReportLimits) -> Any:
    def fail(rule: str, detail: str) -> ReportInvalid:
        return ReportInvalid([Problem(DOCUMENT_PATH, rule, "document", detail)])

    if not isinstance(data, bytes | bytearray):
        raise fail("type", "a report document must be bytes")
    if len(data) > limits.max_bytes:
        raise fail("max-bytes", f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if fmt == "json":
        try:
            return parse_json_unverified(bytes(data), what="report", max_bytes=limits.max_bytes)
        except InputError as e:
            raise fail("json-syntax", e.message) from e
    if fmt == "toml":
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail("utf-8", f"report: not valid UTF-8 (byte {e.start})") from e
        if "\x00" in text:
            raise fail("nul", "report: contains a NUL character")
        try:
            return _toml_to_json(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise fail("toml-syntax", f"report: malformed TOML ({e})") from e
        except (RecursionError, MemoryError) as e:
            raise fail("max-depth", "report: TOML nested too deeply") from e
        except ValueError as e:  # int too large for str->int conversion limit
            raise fail("toml-syntax", f"report: {e}") from e
    raise fail("format", "format must be 'json' or 'toml'")


def _toml_to_json(value: Any) -> Any:
    """TOML's offset date-times become RFC 3339 strings; local ones are left for a problem."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, v in list(pairs):
            if isinstance(v, dt.datetime) and v.tzinfo is not None:
                item[key] = v.isoformat()
            elif isinstance(v, dict | list):
                stack.append(v)
    return value


def _envelope(document: Any, limits: ReportLimits) -> tuple[Any, Any, Any, list[Problem]]:
    """Shape of ``{"sop", "tlp", "fields"}`` plus L04 checks; every problem is collected."""
    if not isinstance(document, dict):
        detail = 'a report must be an object {"sop", "tlp", "fields"}'
        return None, None, None, [Problem(DOCUMENT_PATH, "type", json_type(document), detail)]
    problems = value_problems(document, path="", limits=limits)
    for key in document:
        if key not in _ENVELOPE_KEYS:
            detail = "is not allowed; a report has only sop, tlp and fields"
            problems.append(Problem(join_path("", key), "additionalProperties", "-", detail))
    sop, tlp, fields = (document.get(k) for k in _ENVELOPE_KEYS)
    for key in _ENVELOPE_KEYS:
        if key not in document:
            problems.append(Problem(key, "required", "absent", "is required"))
    if "sop" in document and (not isinstance(sop, str) or SOP_NAME_RE.fullmatch(sop) is None):
        detail = "must name a schema as <name>@<major>, e.g. threat-alert@1"
        problems.append(Problem("sop", "pattern", json_type(sop), detail))
    if "tlp" in document and tlp not in TLP_LEVELS:
        detail = f"must be one of {', '.join(TLP_LEVELS)} (TLP 2.0)"
        problems.append(Problem("tlp", "enum", json_type(tlp), detail))
    if "fields" in document and not isinstance(fields, dict):
        problems.append(Problem("fields", "type", json_type(fields), "must be an object"))
    return sop, tlp, fields, problems


def _schema_problems(registry: SchemaRegistry, sop: Any, fields: Any) -> list[Problem]:
    if not isinstance(sop, str) or SOP_NAME_RE.fullmatch(sop) is None:
        return []
    if sop not in registry:
        detail = f"is not a known schema (known: {', '.join(registry.names())})"
        return [Problem("sop", "unknown-schema", "string", detail)]
    if not isinstance(fields, dict):
        return []
    fast = registry.fast_check(sop)
    if fast is not None and fast(fields):
        return []  # certainly valid: jsonschema would find nothing
    errors = registry.validator(sop).iter_errors(fields)
    return [p for e in errors for p in _problems_of(e, "fields")]


def _problems_of(error: ValidationError, root: str) -> list[Problem]:
    """Our own wording from the schema side of the error; jsonschema's text shows values."""
    where = root
    for part in error.absolute_path:
        where = join_path(where, part)
    rule, limit, instance = str(error.validator), error.validator_value, error.instance
    if rule == "required" and isinstance(instance, dict):
        missing = [p for p in limit if p not in instance]
        return [Problem(join_path(where, p), "required", "absent", "is required") for p in missing]
    if rule == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = [k for k in instance if k not in known]
        detail = "is not a field of this schema"
        return [Problem(join_path(where, k), rule, json_type(instance[k]), detail) for k in extra]
    return [Problem(where, rule, json_type(instance), _describe(rule, limit))]


_DESCRIPTIONS: Final = {
    "type": "must be of type {limit}",
    "enum": "must be one of {limit}",
    "const": "must equal the value the schema fixes",
    "minLength": "must be at least {limit} characters",
    "maxLength": "must be at most {limit} characters",
    "minimum": "must be >= {limit}",
    "maximum": "must be <= {limit}",
    "exclusiveMinimum": "must be > {limit}",
    "exclusiveMaximum": "must be < {limit}",
    "minItems": "must have at least {limit} items",
    "maxItems": "must have at most {limit} items",
    "uniqueItems": "items must be unique",
    "pattern": "must match the pattern {limit}",
    "format": "must be a valid {limit}",
    "minProperties": "must have at least {limit} properties",
    "maxProperties": "must have at most {limit} properties",
}


def _describe(rule: str, limit: Any) -> str:
    """Wording from the schema's side of a rule (limits, enums), never the instance."""
    if rule == "enum" and isinstance(limit, list):
        shown = ", ".join(json.dumps(v) for v in limit)
    elif rule == "type" and isinstance(limit, list):
        shown = " or ".join(str(v) for v in limit)
    elif rule == "format" and limit == "date-time":
        shown = "RFC 3339 date-time with an offset, e.g. 2026-06-01T08:00:00Z"
    else:
        shown = str(limit)
    template = _DESCRIPTIONS.get(rule, "violates the schema keyword '{rule}'")
    return template.format(limit=shown, rule=rule)


__all__ = [
    "DEFAULT_REPORT_LIMITS",
    "LABELS",
    "RULE_KINDS",
    "TLP_LEVELS",
    "FieldRule",
    "Problem",
    "Report",
    "ReportFormat",
    "ReportInvalid",
    "ReportLimits",
    "SchemaPackInvalid",
    "SchemaRegistry",
    "UnknownSchema",
    "ValidReport",
    "check_report_document",
    "disclosed_field_problems",
    "field_rule_problems",
    "json_type",
    "parse_report_unverified",
    "validate_report",
    "value_problems",
]
