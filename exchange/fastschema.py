"""A compiled "is this certainly valid?" check for the JSON Schema subset SOP schemas use.

jsonschema stays the judge: it lists every problem and words every error. This module only
lets the common case, a valid report or release, skip it. ``compile_check(schema)`` returns a
function that answers True only for an instance the Draft 2020-12 validator (with the
registry's format checks) accepts, and False whenever it may not: a False answer means "ask
jsonschema", never "invalid". A schema with any keyword outside the subset compiles to None,
and then jsonschema checks every instance, as before.

The subset: type, enum, properties, required, additionalProperties, items, minItems,
maxItems, uniqueItems, minLength, maxLength, pattern, format, minimum, maximum,
exclusiveMinimum, exclusiveMaximum, boolean schemas, and annotations (title, description,
examples, $id, $schema, $comment, default, x-*). Where jsonschema's semantics have a corner
(an integer-valued float is an "integer", ``1 == 1.0`` in enum and uniqueItems, ``True != 1``)
the check answers False and lets jsonschema decide. tests/exchange/test_fastschema.py checks
the implication on generated schemas and instances, and that every shipped SOP schema
compiles.

Measured (docs/PERFORMANCE.md): jsonschema was about a third of submit's CPU per report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

Check = Callable[[Any], bool]

ANNOTATIONS: Final = frozenset(
    {"$id", "$schema", "$comment", "title", "description", "examples", "default"}
)
_TYPES: Final[dict[str, Check]] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    # Certain only for these; a float equal to an integer is jsonschema's call.
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
}
_NUMBER: Final = (int, float)


def _is_number(v: object) -> bool:
    return type(v) is int or type(v) is float


def compile_check(schema: object, formats: Mapping[str, Check] | None = None) -> Check | None:
    """The certain-validity check of ``schema``, or None if it uses a keyword outside the
    subset. ``formats`` are the format checks the validator runs (name -> True if valid for
    that value); any other format is not checked, as with jsonschema's FormatChecker."""
    try:
        return _compile(schema, formats or {})
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _compile(schema: object, formats: Mapping[str, Check]) -> Check:
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    if not isinstance(schema, dict):
        raise _Unsupported
    checks: list[Check] = []
    for key, value in schema.items():
        if key in ANNOTATIONS or (isinstance(key, str) and key.startswith("x-")):
            continue
        make = _KEYWORDS.get(key)
        if make is None:
            raise _Unsupported
        check = make(value, schema, formats)
        if check is not None:
            checks.append(check)
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    frozen = tuple(checks)
    return lambda v: all(c(v) for c in frozen)


_Maker = Callable[[Any, dict[str, Any], Mapping[str, Check]], Check | None]


def _type(value: Any, _schema: dict[str, Any], _f: Mapping[str, Check]) -> Check:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
        raise _Unsupported
    tests = tuple(_TYPES[n] for n in names)
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(t(v) for t in tests)


def _enum(value: Any, _schema: dict[str, Any], _f: Mapping[str, Check]) -> Check:
    if not isinstance(value, list):
        raise _Unsupported
    strings = frozenset(e for e in value if isinstance(e, str))
    others = tuple(e for e in value if isinstance(e, bool | int | float) or e is None)

    def check(v: Any) -> bool:
        if type(v) is str:
            return v in strings
        # Same type and equal: jsonschema's equal() agrees; anything else is its call.
        return any(type(e) is type(v) and e == v for e in others)

    return check


def _properties(value: Any, schema: dict[str, Any], formats: Mapping[str, Check]) -> Check:
    if not isinstance(value, dict):
        raise _Unsupported
    subs = {name: _compile(sub, formats) for name, sub in value.items()}
    extra_schema = schema.get("additionalProperties", True)
    extra = None if extra_schema is True else _compile(extra_schema, formats)
    items = tuple(subs.items())

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for name, sub in items:
            if name in v and not sub(v[name]):
                return False
        if extra is not None:
            for name, item in v.items():
                if name not in subs and not extra(item):
                    return False
        return True

    return check


def _additional(value: Any, schema: dict[str, Any], formats: Mapping[str, Check]) -> Check | None:
    if "properties" in schema:
        return None  # checked with the properties, which define what is "additional"
    if value is True:
        return None
    extra = _compile(value, formats)
    return lambda v: not isinstance(v, dict) or all(extra(item) for item in v.values())


def _required(value: Any, _schema: dict[str, Any], _f: Mapping[str, Check]) -> Check:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise _Unsupported
    names = tuple(value)
    return lambda v: not isinstance(v, dict) or all(n in v for n in names)


def _items(value: Any, _schema: dict[str, Any], formats: Mapping[str, Check]) -> Check:
    sub = _compile(value, formats)
    return lambda v: not isinstance(v, list) or all(sub(item) for item in v)


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _size(kind: type[list[Any]] | type[str], smallest: bool) -> _Maker:
    """minItems/maxItems (lists) and minLength/maxLength (strings, in code points, as
    jsonschema counts them): a length bound on values of one kind."""

    def make(value: Any, _s: dict[str, Any], _f: Mapping[str, Check]) -> Check:
        n = _count(value)
        if smallest:
            return lambda v: not isinstance(v, kind) or len(v) >= n
        return lambda v: not isinstance(v, kind) or len(v) <= n

    return make


def _unique(value: Any, _s: dict[str, Any], _f: Mapping[str, Check]) -> Check | None:
    if value is False:
        return None
    if value is not True:
        raise _Unsupported

    def check(v: Any) -> bool:
        if not isinstance(v, list):
            return True
        # Certain for strings only (no 1 == 1.0 == True corner); the rest is jsonschema's.
        return all(type(item) is str for item in v) and len(set(v)) == len(v)

    return check


def _pattern(value: Any, _s: dict[str, Any], _f: Mapping[str, Check]) -> Check:
    if not isinstance(value, str):
        raise _Unsupported
    try:
        search = re.compile(value).search  # what jsonschema runs: re.search(pattern, value)
    except re.error as e:
        raise _Unsupported from e
    return lambda v: not isinstance(v, str) or search(v) is not None


def _format(value: Any, _s: dict[str, Any], formats: Mapping[str, Check]) -> Check | None:
    test = formats.get(value) if isinstance(value, str) else None
    if test is None:
        return None  # a format the validator does not check
    return test


def _bound(compare: Callable[[Any, Any], bool]) -> _Maker:
    def make(value: Any, _s: dict[str, Any], _f: Mapping[str, Check]) -> Check:
        if not _is_number(value):
            raise _Unsupported
        return lambda v: not _is_number(v) or compare(v, value)

    return make


_KEYWORDS: Final[dict[str, _Maker]] = {
    "type": _type,
    "enum": _enum,
    "properties": _properties,
    "additionalProperties": _additional,
    "required": _required,
    "items": _items,
    "minItems": _size(list, smallest=True),
    "maxItems": _size(list, smallest=False),
    "uniqueItems": _unique,
    "minLength": _size(str, smallest=True),
    "maxLength": _size(str, smallest=False),
    "pattern": _pattern,
    "format": _format,
    "minimum": _bound(lambda v, b: v >= b),
    "maximum": _bound(lambda v, b: v <= b),
    "exclusiveMinimum": _bound(lambda v, b: v > b),
    "exclusiveMaximum": _bound(lambda v, b: v < b),
}
