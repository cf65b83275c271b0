"""The local release policy and the release decision (docs/DESIGN.md §6): pure, deny by default.

``parse_policy`` reads the policy TOML (shape binding, docs/DESIGN.md §6) and refuses, all
problems at once, anything vacuous, unknown or above the agreement's ceiling; each problem
names the offending key and its line. ``decide`` returns a frozen ``ReleaseDecision`` for
one report and one partner; it sends nothing and reads no clock. ``check_within_ceiling``
is the receiver's check that a partner did not send more than agreed (docs/THREATS.md P14).

A field is released only if ALL hold: an agreement ceiling exists for the partner and
schema, the report's TLP is within the policy's ``max_tlp`` and the ceiling's ``tlp_max``,
the policy releases the field (by name or label), no withhold rule matches (withhold wins),
the ceiling allows it, a personal field has a named legal basis, and a reciprocity label
has been earned (the partner sent at least ``min_reports`` in the last ``window_days``).

Sections: the policy value, parsing (with a best-effort TOML line locator), the decision,
transforms, the receiver's check. One module, past our ~500-line guide, so that what the
parser refuses and what ``decide`` enforces are read side by side (ADR 0004).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, TypeGuard

from exchange.agreement import (
    FIELD_NAME_RE,
    LABELS,
    SCHEMA_NAME_RE,
    TLP_LEVELS,
    Ceiling,
    tlp_at_most,
)
from exchange.canonical import b64url, canonical_json, sha256_digest
from exchange.errors import InputError, PeerDataError, PolicyError
from exchange.names import NODE_ID_RE

POLICY_TYPE: Final = "accord.policy/v1"
MAX_POLICY_CHARS: Final = 256 * 1024
MAX_ROUND_DIGITS: Final = 10
MAX_WINDOW_DAYS: Final = 3660
MAX_LEGAL_BASIS_CHARS: Final = 200
PSEUDONYM_KEY_MIN_BYTES: Final = 32
PSEUDONYM_BYTES: Final = 16  # 128 bits of HMAC-SHA256, 22 base64url characters
PERSONAL: Final = "personal"

# Reason codes for withheld fields (stable: logged, shown by 'accord policy explain').
NO_AGREEMENT: Final = "no-agreement"
NOT_IN_POLICY: Final = "not-in-policy"
NOT_IN_SCHEMA: Final = "not-in-schema"
UNKNOWN_LABEL: Final = "unknown-label"
WITHHELD_LABEL: Final = "withheld-label"
DROP: Final = "drop"
ABOVE_CEILING: Final = "above-ceiling"
NO_LEGAL_BASIS: Final = "no-legal-basis"
RECIPROCITY: Final = "reciprocity"
TLP_ABOVE_MAX: Final = "tlp-above-max"
TRANSFORM_UNSUPPORTED: Final = "transform-unsupported"
REASONS: Final = (
    NO_AGREEMENT,
    NOT_IN_POLICY,
    NOT_IN_SCHEMA,
    UNKNOWN_LABEL,
    WITHHELD_LABEL,
    DROP,
    ABOVE_CEILING,
    NO_LEGAL_BASIS,
    RECIPROCITY,
    TLP_ABOVE_MAX,
    TRANSFORM_UNSUPPORTED,
)

_PEER_KEYS: Final = frozenset({"max_tlp", "schema", "reciprocity"})
_RULE_KEYS: Final = frozenset(
    {"release_labels", "release", "withhold_labels", "transform", "legal_basis"}
)
_RECIPROCITY_KEYS: Final = frozenset({"labels", "min_reports", "window_days"})
_ROUND_RE: Final = re.compile(r"round:([0-9]{1,2})")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


# ---- the policy value ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """``round:N`` | ``coarsen:region`` | ``pseudonym`` | ``drop``."""

    kind: str
    digits: int = 0

    @property
    def spec(self) -> str:
        if self.kind == "round":
            return f"round:{self.digits}"
        return "coarsen:region" if self.kind == "coarsen" else self.kind

    @classmethod
    def parse(cls, spec: object) -> Transform | None:
        if spec in ("pseudonym", "drop"):
            return cls(str(spec))
        if spec == "coarsen:region":
            return cls("coarsen")
        m = _ROUND_RE.fullmatch(spec) if isinstance(spec, str) else None
        if m is not None and int(m.group(1)) <= MAX_ROUND_DIGITS:
            return cls("round", int(m.group(1)))
        return None


@dataclass(frozen=True)
class SchemaRule:
    """``[peer.<id>.schema."<name>@<v>"]``: what this policy releases of one schema."""

    release_labels: frozenset[str]
    release: frozenset[str]
    withhold_labels: frozenset[str]
    transform: Mapping[str, Transform]
    legal_basis: Mapping[str, str]

    def releases(self, name: str, label: str | None) -> bool:
        """Released by name or label, and not withheld by label or ``drop``."""
        by_rule = name in self.release or (label is not None and label in self.release_labels)
        return by_rule and not self.withholds(name, label)

    def withholds(self, name: str, label: str | None) -> bool:
        dropped = name in self.transform and self.transform[name].kind == "drop"
        return dropped or (label is not None and label in self.withhold_labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "release_labels": sorted(self.release_labels),
            "release": sorted(self.release),
            "withhold_labels": sorted(self.withhold_labels),
            "transform": {f: self.transform[f].spec for f in sorted(self.transform)},
            "legal_basis": {f: self.legal_basis[f] for f in sorted(self.legal_basis)},
        }


@dataclass(frozen=True)
class Reciprocity:
    """``[peer.<id>.reciprocity]``: these labels flow only while the partner gives back."""

    labels: frozenset[str]
    min_reports: int
    window_days: int

    def met(self, stats: PeerStats, now: datetime) -> bool:
        return stats.count_since(now - timedelta(days=self.window_days), now) >= self.min_reports

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": sorted(self.labels),
            "min_reports": self.min_reports,
            "window_days": self.window_days,
        }


@dataclass(frozen=True)
class PeerPolicy:
    max_tlp: str
    schemas: Mapping[str, SchemaRule]
    reciprocity: Reciprocity | None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tlp": self.max_tlp,
            "schemas": {s: self.schemas[s].to_json() for s in sorted(self.schemas)},
            "reciprocity": None if self.reciprocity is None else self.reciprocity.to_json(),
        }


@dataclass(frozen=True)
class Policy:
    """A checked release policy; only ``parse_policy`` makes one from text."""

    peers: Mapping[str, PeerPolicy]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", sha256_digest(canonical_json(self.to_json())))

    def to_json(self) -> dict[str, Any]:
        """The canonical form the digest is taken over (comments and layout do not count)."""
        return {
            "type": POLICY_TYPE,
            "peers": {p: self.peers[p].to_json() for p in sorted(self.peers)},
        }


@dataclass(frozen=True)
class PeerStats:
    """Times at which reports from the partner were received (any order, aware UTC)."""

    received_at: tuple[datetime, ...] = ()

    def count_since(self, since: datetime, now: datetime) -> int:
        """Reports received in the window ``since < t <= now``."""
        return sum(1 for t in self.received_at if since < t <= now)


def reciprocity_window_start(policy: Policy, peer: str, now: datetime) -> datetime | None:
    """The earliest receive time that counts for ``peer`` now (None: no reciprocity rule);
    the store needs only the times after it to build ``PeerStats``."""
    p = policy.peers.get(peer)
    if p is None or p.reciprocity is None:
        return None
    return now - timedelta(days=p.reciprocity.window_days)


# ---- parsing and checking -----------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file: the key (TOML dotted path), its line, the rule."""

    key: str
    line: int | None
    code: str
    rule: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "line unknown"
        return f"{self.key} ({where}): {self.rule}"


class PolicyInvalid(PolicyError):
    """The policy file is refused; ``problems`` lists every finding, each with key and line."""

    def __init__(self, problems: Iterable[PolicyProblem]):
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(
            f"release policy refused, {count} problem{'s' if count != 1 else ''}:\n{lines}",
            code=self.problems[0].code if self.problems else "policy.invalid",
            next_step="Fix each named key and run 'accord policy check FILE' again.",
        )


def parse_policy(
    text: str,
    schema_labels: Mapping[str, Mapping[str, str]],
    *,
    ceilings: Mapping[str, Mapping[str, Ceiling]] | None = None,
) -> Policy:
    """Parse and check a release policy. Raises ``PolicyInvalid`` listing every problem.

    ``schema_labels`` maps each known schema name to its field -> label mapping.
    ``ceilings`` maps a peer id to its ceilings by schema (see
    ``exchange.agreement.ceilings_between``): for every peer named there, a policy that
    releases more than the ceiling, or a schema outside it, is refused. Peers not in
    ``ceilings`` are checked for shape only (``decide`` still enforces the ceiling).
    """
    if len(text) > MAX_POLICY_CHARS:
        raise PolicyInvalid(
            [PolicyProblem("(file)", None, "policy.too_large", f"over {MAX_POLICY_CHARS} chars")]
        )
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        at = re.search(r"at line ([0-9]+)", str(e))
        line = int(at.group(1)) if at else None
        problem = PolicyProblem("(file)", line, "policy.syntax", f"not valid TOML: {e}")
        raise PolicyInvalid([problem]) from e
    checker = _Checker(text, schema_labels, ceilings)
    peers = checker.document(doc)
    if checker.problems:
        by_line = sorted(checker.problems, key=lambda p: (p.line is None, p.line or 0))
        raise PolicyInvalid(by_line)
    return Policy(MappingProxyType(peers))


class _Checker:
    def __init__(
        self,
        text: str,
        schema_labels: Mapping[str, Mapping[str, str]],
        ceilings: Mapping[str, Mapping[str, Ceiling]] | None,
    ) -> None:
        self.locate = _Locator(text)
        self.schema_labels = schema_labels
        self.ceilings = ceilings
        self.problems: list[PolicyProblem] = []

    def fail(self, path: tuple[str, ...], code: str, rule: str) -> None:
        self.problems.append(PolicyProblem(_key_text(path), self.locate(path), code, rule))

    def unknown_keys(
        self, table: dict[str, Any], allowed: frozenset[str], path: tuple[str, ...]
    ) -> None:
        for key in sorted(set(table) - allowed):
            self.fail(
                (*path, key),
                "policy.unknown_key",
                f"unknown key; allowed: {', '.join(sorted(allowed))}",
            )

    def document(self, doc: dict[str, Any]) -> dict[str, PeerPolicy]:
        self.unknown_keys(doc, frozenset({"peer"}), ())
        peers = doc.get("peer")
        if not isinstance(peers, dict) or not peers:
            self.fail(
                ("peer",), "policy.empty", "the policy names no partner: nothing would be released"
            )
            return {}
        out: dict[str, PeerPolicy] = {}
        for peer_id in sorted(peers):
            parsed = self.peer(peer_id, peers[peer_id])
            if parsed is not None:
                out[peer_id] = parsed
        return out

    def peer(self, peer_id: str, table: object) -> PeerPolicy | None:
        path = ("peer", peer_id)
        if NODE_ID_RE.fullmatch(peer_id) is None:
            self.fail(path, "policy.bad_peer", "not a node id (3-32 of a-z, 0-9, '-')")
            return None
        if not isinstance(table, dict):
            self.fail(path, "policy.bad_value", "must be a table")
            return None
        self.unknown_keys(table, _PEER_KEYS, path)
        max_tlp = table.get("max_tlp")
        if max_tlp not in TLP_LEVELS:
            self.fail(
                (*path, "max_tlp"),
                "policy.missing_key" if max_tlp is None else "policy.bad_value",
                f"max_tlp is required, one of {', '.join(TLP_LEVELS)}",
            )
            max_tlp = None
        reciprocity = self.reciprocity(path, table.get("reciprocity"))
        schemas = table.get("schema")
        if not isinstance(schemas, dict) or not schemas:
            self.fail(
                (*path, "schema"),
                "policy.empty",
                "the partner has no schema rule: nothing would be released",
            )
            return None
        peer_ceilings = None if self.ceilings is None else self.ceilings.get(peer_id)
        rules: dict[str, SchemaRule] = {}
        for name in sorted(schemas):
            rule = self.rule(path, name, schemas[name], peer_ceilings)
            if rule is not None:
                rules[name] = rule
        if peer_ceilings and max_tlp is not None:
            tlp_max = min((c.tlp_max for c in peer_ceilings.values()), key=TLP_LEVELS.index)
            if not tlp_at_most(max_tlp, tlp_max):
                self.fail(
                    (*path, "max_tlp"),
                    "policy.above_ceiling",
                    f"max_tlp is above the agreement's TLP ceiling {tlp_max}",
                )
        if max_tlp is None:
            return None
        return PeerPolicy(str(max_tlp), MappingProxyType(rules), reciprocity)

    def names(
        self, path: tuple[str, ...], raw: object, known: Iterable[str], what: str
    ) -> frozenset[str]:
        if raw is None:
            return frozenset()
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.fail(path, "policy.bad_value", f"must be a list of {what} names")
            return frozenset()
        known_set = frozenset(known)
        code = "policy.unknown_label" if what == "label" else "policy.unknown_field"
        for x in raw:
            if x not in known_set:
                self.fail(path, code, f"unknown {what} {_shown(x)}")
        if len(set(raw)) != len(raw):
            self.fail(path, "policy.bad_value", f"lists a {what} twice")
        return frozenset(x for x in raw if x in known_set)

    def reciprocity(self, peer_path: tuple[str, ...], raw: object) -> Reciprocity | None:
        if raw is None:
            return None
        path = (*peer_path, "reciprocity")
        if not isinstance(raw, dict):
            self.fail(path, "policy.bad_value", "must be a table")
            return None
        self.unknown_keys(raw, _RECIPROCITY_KEYS, path)
        labels = self.names((*path, "labels"), raw.get("labels"), LABELS, "label")
        if not labels:
            self.fail((*path, "labels"), "policy.empty", "reciprocity needs at least one label")
        numbers = []
        for key, top in (("min_reports", 1_000_000), ("window_days", MAX_WINDOW_DAYS)):
            value = raw.get(key)
            if type(value) is not int or not 1 <= value <= top:
                self.fail(
                    (*path, key), "policy.bad_value", f"{key} must be an integer from 1 to {top}"
                )
                value = 0
            numbers.append(value)
        if not labels or 0 in numbers:
            return None
        return Reciprocity(labels, numbers[0], numbers[1])

    def rule(
        self,
        peer_path: tuple[str, ...],
        name: str,
        raw: object,
        peer_ceilings: Mapping[str, Ceiling] | None,
    ) -> SchemaRule | None:
        path = (*peer_path, "schema", name)
        labels = self.schema_labels.get(name)
        if SCHEMA_NAME_RE.fullmatch(name) is None or labels is None:
            self.fail(
                path,
                "policy.unknown_schema",
                "unknown schema (write name@major, e.g. threat-alert@1)",
            )
            return None
        if not isinstance(raw, dict):
            self.fail(path, "policy.bad_value", "must be a table")
            return None
        self.unknown_keys(raw, _RULE_KEYS, path)
        fields = [f for f in labels if FIELD_NAME_RE.fullmatch(f)]
        rule = SchemaRule(
            release_labels=self.names(
                (*path, "release_labels"), raw.get("release_labels"), LABELS, "label"
            ),
            release=self.names((*path, "release"), raw.get("release"), fields, "field"),
            withhold_labels=self.names(
                (*path, "withhold_labels"), raw.get("withhold_labels"), LABELS, "label"
            ),
            transform=MappingProxyType(self.transforms(path, raw.get("transform"), labels)),
            legal_basis=MappingProxyType(self.legal_basis(path, raw.get("legal_basis"), labels)),
        )
        if not rule.release and not rule.release_labels:
            self.fail(path, "policy.empty", "releases nothing: name release or release_labels")
        released = sorted(f for f in labels if rule.releases(f, labels[f]))
        for f, t in sorted(rule.transform.items()):
            if t.kind != "drop" and f not in released:
                self.fail(
                    (*path, "transform", f),
                    "policy.bad_value",
                    f"transform for field {f}, which this rule does not release",
                )
        for f in released:
            key = "release" if f in rule.release else "release_labels"
            if labels[f] == PERSONAL and not rule.legal_basis.get(f):
                self.fail(
                    (*path, key),
                    "policy.no_legal_basis",
                    f"releases personal field {f} without a legal_basis entry for it",
                )
        if peer_ceilings is not None:
            ceiling = peer_ceilings.get(name)
            if ceiling is None:
                self.fail(
                    path,
                    "policy.above_ceiling",
                    "the agreement lets no field of this schema flow to this partner",
                )
            else:
                for f in released:
                    if f not in ceiling.fields:
                        key = "release" if f in rule.release else "release_labels"
                        self.fail(
                            (*path, key),
                            "policy.above_ceiling",
                            f"releases field {f}, which the agreement ceiling does not allow",
                        )
        return rule

    def transforms(
        self, path: tuple[str, ...], raw: object, labels: Mapping[str, str]
    ) -> dict[str, Transform]:
        out: dict[str, Transform] = {}
        if raw is None:
            return out
        path = (*path, "transform")
        if not isinstance(raw, dict):
            self.fail(path, "policy.bad_value", 'must be a table of field = "transform"')
            return out
        for f in sorted(raw):
            t = Transform.parse(raw[f])
            if f not in labels:
                self.fail((*path, f), "policy.unknown_field", f"unknown field {_shown(f)}")
            elif t is None:
                self.fail(
                    (*path, f),
                    "policy.unknown_transform",
                    f"unknown transform; use round:0..{MAX_ROUND_DIGITS}, coarsen:region, "
                    "pseudonym or drop",
                )
            else:
                out[f] = t
        return out

    def legal_basis(
        self, path: tuple[str, ...], raw: object, labels: Mapping[str, str]
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        if raw is None:
            return out
        path = (*path, "legal_basis")
        if not isinstance(raw, dict):
            self.fail(path, "policy.bad_value", 'must be a table of field = "legal basis"')
            return out
        for f in sorted(raw):
            basis = raw[f]
            if f not in labels:
                self.fail((*path, f), "policy.unknown_field", f"unknown field {_shown(f)}")
            elif labels[f] != PERSONAL:
                self.fail((*path, f), "policy.bad_value", f"field {f} is not labelled personal")
            elif (
                not isinstance(basis, str)
                or not basis.strip()
                or len(basis) > MAX_LEGAL_BASIS_CHARS
                or not basis.isprintable()
            ):
                self.fail(
                    (*path, f),
                    "policy.no_legal_basis",
                    f"the legal basis must be 1-{MAX_LEGAL_BASIS_CHARS} printable characters",
                )
            else:
                out[f] = basis
        return out


def _shown(name: str) -> str:
    return json.dumps(name[:64], ensure_ascii=True)


def _key_text(path: tuple[str, ...]) -> str:
    if not path:
        return "(top level)"
    return ".".join(p if _BARE_KEY_RE.fullmatch(p) else _shown(p) for p in path)


class _Locator:
    """Best-effort line numbers for TOML keys (tomllib does not report them).

    Each line gets the dotted path it defines: a ``[table]`` header, or header + ``key =``.
    A key's line is the line defining exactly that path; else the first line defining
    something inside it (an implicit table); else the first line sharing the longest
    leading part of the path (an entry of an inline table, or a missing key's table).
    """

    _HEADER = re.compile(r"\s*\[\[?(.+?)\]\]?\s*(?:#.*)?")
    _KEY = re.compile(
        r"\s*((?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[A-Za-z0-9_-]+)"
        r"(?:\s*\.\s*(?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*="
    )

    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, tuple[str, ...]]] = []
        header: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            m = self._HEADER.fullmatch(line)
            if m is not None:
                parts = _split_dotted(m.group(1))
                if parts is not None:
                    header = parts
                    self.lines.append((number, header))
                continue
            k = self._KEY.match(line)
            if k is not None:
                parts = _split_dotted(k.group(1))
                if parts is not None:
                    self.lines.append((number, header + parts))
                    inline = line[k.end() :]
                    for sub in re.finditer(r"([A-Za-z0-9_-]+|\"(?:[^\"\\]|\\.)*\")\s*=", inline):
                        sub_parts = _split_dotted(sub.group(1))
                        if sub_parts is not None:
                            self.lines.append((number, header + parts + sub_parts))

    def __call__(self, path: tuple[str, ...]) -> int | None:
        for number, p in self.lines:
            if p == path:
                return number
        for number, p in self.lines:
            if p[: len(path)] == path:
                return number
        best: tuple[int, int] | None = None
        for number, p in self.lines:
            common = next(
                (i for i, (x, y) in enumerate(zip(p, path, strict=False)) if x != y), None
            )
            shared = min(len(p), len(path)) if common is None else common
            if shared and (best is None or shared > best[0]):
                best = (shared, number)
        return None if best is None else best[1]


def _split_dotted(key: str) -> tuple[str, ...] | None:
    parts: list[str] = []
    i, s = 0, key.strip()
    while i < len(s):
        if s[i] == '"':
            m = re.compile(r"\"(?:[^\"\\]|\\.)*\"").match(s, i)
            if m is None:
                return None
            try:
                parts.append(json.loads(m.group(0)))
            except ValueError:
                parts.append(m.group(0)[1:-1])
            i = m.end()
        elif s[i] == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            parts.append(s[i + 1 : j])
            i = j + 1
        else:
            m = _BARE_KEY_RE.match(s, i)
            if m is None:
                return None
            parts.append(m.group(0))
            i = m.end()
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s):
            if s[i] != ".":
                return None
            i += 1
            while i < len(s) and s[i] in " \t":
                i += 1
    return tuple(parts) if parts else None


# ---- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformedField:
    """A derived value sent instead of the field ``name`` (its source). The value is left
    out of ``repr`` and of every log event: only the envelope carries it."""

    name: str
    transform: str
    value: Any = field(repr=False)


@dataclass(frozen=True)
class ReleaseDecision:
    """What may leave for one partner and one report. Names and reasons only, except the
    derived values in ``transformed`` (never logged, never in ``repr``)."""

    peer: str
    schema: str
    tlp: str
    released: tuple[str, ...]
    transformed: Mapping[str, TransformedField]
    withheld: Mapping[str, str]
    policy_digest: str
    agreement_digest: str | None
    # Of each released or transformed field: its schema label, and the policy's legal basis
    # where it names one (personal fields must), for ``accord audit disclosures``.
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    legal_basis: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def releases_anything(self) -> bool:
        return bool(self.released or self.transformed)

    def rows(self) -> list[tuple[str, str, str]]:
        """``(field, outcome, detail)`` sorted by field, for ``accord policy explain``:
        outcome ``released`` / ``transformed`` (detail: the transform) / ``withheld``
        (detail: the reason code)."""
        rows = [(f, "released", "") for f in self.released]
        rows += [(f, "transformed", t.transform) for f, t in self.transformed.items()]
        rows += [(f, "withheld", r) for f, r in self.withheld.items()]
        return sorted(rows)

    def to_log_event(self) -> dict[str, Any]:
        """The ``release.decided`` event body: field names, transforms and reasons, digests.
        No value, not even a derived one. The caller adds type, at and the envelope digest."""
        return {
            "kind": "release.decided",
            "peer": self.peer,
            "schema": self.schema,
            "tlp": self.tlp,
            "released": list(self.released),
            "transformed": {f: self.transformed[f].transform for f in sorted(self.transformed)},
            "withheld": {f: self.withheld[f] for f in sorted(self.withheld)},
            "policy_digest": self.policy_digest,
            "agreement_digest": self.agreement_digest,
            "releases_anything": self.releases_anything,
            "labels": {f: self.labels[f] for f in sorted(self.labels)},
            "legal_basis": {f: self.legal_basis[f] for f in sorted(self.legal_basis)},
        }


def decide(
    report_fields: Mapping[str, object],
    tlp: str,
    schema: str,
    labels: Mapping[str, str],
    policy: Policy,
    ceiling: Ceiling | None,
    peer: str,
    peer_stats: PeerStats,
    now: datetime,
    pseudonym_key: bytes,
) -> ReleaseDecision:
    """Decide, field by field, what of one report may be released to ``peer``. Pure.

    ``labels`` is the schema's field -> label mapping; ``ceiling`` comes from
    ``exchange.agreement.ceiling_for`` (None: no current agreement, nothing flows);
    ``pseudonym_key`` is this partner's pseudonym key (at least 32 bytes).
    """
    if len(pseudonym_key) < PSEUDONYM_KEY_MIN_BYTES:
        raise PolicyError(
            f"the pseudonym key must be at least {PSEUDONYM_KEY_MIN_BYTES} bytes",
            code="policy.pseudonym_key",
            next_step="Pass the partner's pseudonym key from the keyring.",
        )
    names = sorted(report_fields)
    peer_policy = policy.peers.get(peer)
    rule = None if peer_policy is None else peer_policy.schemas.get(schema)
    everything: str | None = None
    if ceiling is None or ceiling.receiver != peer or ceiling.schema != schema:
        everything = NO_AGREEMENT
    elif peer_policy is None or rule is None:
        everything = NOT_IN_POLICY
    elif not tlp_at_most(tlp, peer_policy.max_tlp):
        everything = TLP_ABOVE_MAX
    elif not ceiling.allows_tlp(tlp):
        everything = ABOVE_CEILING

    def result(
        released: list[str], transformed: dict[str, TransformedField], withheld: dict[str, str]
    ) -> ReleaseDecision:
        out = sorted([*released, *transformed])
        basis = {} if rule is None else rule.legal_basis
        return ReleaseDecision(
            labels=MappingProxyType({f: labels[f] for f in out if f in labels}),
            legal_basis=MappingProxyType({f: basis[f] for f in out if basis.get(f)}),
            peer=peer,
            schema=schema,
            tlp=tlp,
            released=tuple(released),
            transformed=MappingProxyType(transformed),
            withheld=MappingProxyType(withheld),
            policy_digest=policy.digest,
            agreement_digest=None if ceiling is None else ceiling.agreement_digest,
        )

    if everything is not None or peer_policy is None or rule is None or ceiling is None:
        return result([], {}, dict.fromkeys(names, everything or NOT_IN_POLICY))

    earned = peer_policy.reciprocity is None or peer_policy.reciprocity.met(peer_stats, now)
    gated = frozenset() if peer_policy.reciprocity is None else peer_policy.reciprocity.labels
    released: list[str] = []
    transformed: dict[str, TransformedField] = {}
    withheld: dict[str, str] = {}
    for name in names:
        label = labels.get(name)
        reason: str | None
        if label is None:
            reason = NOT_IN_SCHEMA
        elif label not in LABELS:
            reason = UNKNOWN_LABEL
        elif label in rule.withhold_labels:
            reason = WITHHELD_LABEL
        elif name in rule.transform and rule.transform[name].kind == "drop":
            reason = DROP
        elif not rule.releases(name, label):
            reason = NOT_IN_POLICY
        elif name not in ceiling.fields:
            reason = ABOVE_CEILING
        elif label == PERSONAL and not rule.legal_basis.get(name):
            reason = NO_LEGAL_BASIS
        elif label in gated and not earned:
            reason = RECIPROCITY
        else:
            reason = None
        if reason is not None:
            withheld[name] = reason
            continue
        t = rule.transform.get(name)
        if t is None:
            released.append(name)
            continue
        derived = apply_transform(
            t, report_fields[name], peer=peer, field_name=name, pseudonym_key=pseudonym_key
        )
        if derived is None:
            withheld[name] = TRANSFORM_UNSUPPORTED
        else:
            transformed[name] = TransformedField(name, t.spec, derived[0])
    return result(released, transformed, withheld)


# ---- transforms ---------------------------------------------------------------------------------


def _number(value: object) -> TypeGuard[int | float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _point(value: object) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"lat", "lon"}
        and _number(value["lat"])
        and _number(value["lon"])
    )


def pseudonym(pseudonym_key: bytes, peer: str, field_name: str, value: object) -> str:
    """base64url of the first 16 bytes of HMAC-SHA256(key, peer 0x00 field 0x00 JCS(value)).

    Same value, field and partner key: same pseudonym. Another partner (another key and
    another peer id in the input): unrelated pseudonyms that cannot be joined.
    """
    message = (
        peer.encode("utf-8")
        + b"\x00"
        + field_name.encode("utf-8")
        + b"\x00"
        + canonical_json(value)
    )
    mac = hmac.new(pseudonym_key, message, hashlib.sha256).digest()
    return b64url(mac[:PSEUDONYM_BYTES])


def apply_transform(
    transform: Transform, value: object, *, peer: str, field_name: str, pseudonym_key: bytes
) -> tuple[Any] | None:
    """``(derived value,)``, or None when the transform does not fit the value's type
    (the field is then withheld as ``transform-unsupported``; never sent untransformed).

    - ``round:N``: a number rounded to N decimals (Python ``round``, half to even on the
      binary value); an integer stays as it is; ``{lat, lon}`` rounds both.
    - ``coarsen:region``: ``{lat, lon}`` -> both rounded to whole degrees (integers, a cell
      of about 111 km); a string written specific-to-general ("camp, town, province") ->
      the part after its last comma, trimmed; a string without a comma has no coarser part
      and is unsupported.
    - ``pseudonym``: see ``pseudonym``; any JSON value.
    - ``drop``: never applied (the field is withheld with reason ``drop``).
    """
    if transform.kind == "round":
        if _number(value):
            return (_round(value, transform.digits),)
        if isinstance(value, dict) and _point(value):
            return ({k: _round(value[k], transform.digits) for k in ("lat", "lon")},)
        return None
    if transform.kind == "coarsen":
        if isinstance(value, dict) and _point(value):
            return ({k: round(value[k]) for k in ("lat", "lon")},)
        if isinstance(value, str) and "," in value:
            region = value.rsplit(",", 1)[1].strip()
            return (region,) if region else None
        return None
    if transform.kind == "pseudonym":
        try:
            return (pseudonym(pseudonym_key, peer, field_name, value),)
        except InputError:
            return None
    return None


def _round(value: int | float, digits: int) -> int | float:
    return value if isinstance(value, int) else round(value, digits)


# ---- receiver side ------------------------------------------------------------------------------


def check_within_ceiling(
    disclosed_fields: Iterable[str],
    derived_fields: Iterable[str],
    tlp: str,
    schema: str,
    labels: Mapping[str, str],
    ceiling: Ceiling | None,
) -> None:
    """The receiver's check (docs/THREATS.md P14): every disclosed field and every field a
    derived value came from must be in the schema and allowed by the ceiling of the
    direction sender -> us, and the report's TLP within ``tlp_max``.

    Raises ``PeerDataError`` naming the rule (never a value): ``peer.no_agreement`` when
    there is no ceiling, ``peer.above_ceiling`` otherwise.
    """
    if ceiling is None:
        raise PeerDataError(
            "release received without a current agreement covering it",
            code="peer.no_agreement",
        )
    if ceiling.schema != schema:
        raise PeerDataError(
            "release is of a schema the agreement's ceiling does not cover",
            code="peer.above_ceiling",
        )
    if not ceiling.allows_tlp(tlp):
        raise PeerDataError(
            f"release TLP is above the agreed TLP ceiling {ceiling.tlp_max}",
            code="peer.above_ceiling",
        )
    for kind, names in (("disclosed", disclosed_fields), ("derived", derived_fields)):
        for name in sorted(names):
            if name not in labels:
                raise PeerDataError(
                    f"release has a {kind} field {_shown(name)} that schema {schema} lacks",
                    code="peer.above_ceiling",
                )
            if name not in ceiling.fields:
                raise PeerDataError(
                    f"release has a {kind} field {_shown(name)} above the agreed ceiling "
                    f"for {schema}",
                    code="peer.above_ceiling",
                )
