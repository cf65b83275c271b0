"""The bilateral agreement (docs/DESIGN.md §6): what may flow between two nodes, signed by both.

An agreement is canonical JSON (RFC 8785)::

    {"type": "accord.agreement/v1", "id": "...", "version": 1,
     "parties": ["cn-mps", "pk-moi"],                       # sorted node ids
     "schemas": {"threat-alert@1": "sha256:..."},          # schema name -> schema digest
     "ceiling": [                                           # one entry per direction, sorted
        {"from": "pk-moi", "to": "cn-mps", "tlp_max": "amber",
         "schemas": {"threat-alert@1": {"fields": ["recommended_actions"],
                                        "labels": ["operational", "public"]}}}],
     "suite": "MLKEM768_X25519/HKDF_SHA256/CHACHA20_POLY1305",
     "not_before": "2026-01-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z",
     "response": {"threat-alert@1": {"critical": {"acknowledge": "PT15M",   # optional
                                                  "respond": "P1D"}}}}

``response`` (docs/adr/0020) holds the response rules: per schema and severity, how soon
whoever *receives* a report must acknowledge it and (optionally) respond, as canonical
ISO 8601 durations (``exchange.times.format_duration``). They bind both directions. The key
is left out of the bytes when there are no rules, so agreements without rules keep the
bytes and digest they always had; no other key is optional at the top level.

Each party signs ``"accord/v1/agreement\\n" + agreement bytes`` with its identity key. A
*signed agreement* carries the exact bytes and the signatures by node id; only
``verify_agreement`` turns one into a ``VerifiedAgreement``, and only a verified agreement
yields a ``Ceiling``. A direction missing from ``ceiling`` means nothing flows that way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from exchange.canonical import (
    b64,
    b64_decode,
    canonical_json,
    parse_json_unverified,
    sha256_digest,
)
from exchange.card import SUITE_HYBRID, SUITE_X25519
from exchange.crypto import Signer, verify_ed25519
from exchange.errors import InputError, PeerDataError, PolicyError
from exchange.names import NODE_ID_RE
from exchange.purpose import Purpose, signed_message
from exchange.times import format_duration, format_time, parse_duration, parse_time

AGREEMENT_TYPE: Final = "accord.agreement/v1"
SIGNED_AGREEMENT_TYPE: Final = "accord.signed-agreement/v1"
MAX_AGREEMENT_BYTES: Final = 256 * 1024
MAX_SIGNED_AGREEMENT_BYTES: Final = 512 * 1024
MAX_AGREEMENT_VERSION: Final = 2**31 - 1
MAX_SCHEMAS: Final = 64
MAX_FIELDS: Final = 256
# The clock skew tolerated at both ends of an agreement's validity window (docs/THREATS.md C03).
AGREEMENT_CLOCK_SKEW: Final = timedelta(minutes=5)

# TLP 2.0, lowest to highest. Also defined by exchange.sop; kept here so the agreement and
# policy core depend on nothing but plain inputs (a test asserts both lists agree).
TLP_LEVELS: Final = ("clear", "green", "amber", "amber+strict", "red")
LABELS: Final = frozenset({"public", "operational", "tactical", "sensitive-source", "personal"})
SUITES: Final = (SUITE_HYBRID, SUITE_X25519)

SCHEMA_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}@[1-9][0-9]{0,3}")
FIELD_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
LABEL_RE: Final = re.compile(r"[a-z][a-z-]{0,31}")
AGREEMENT_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
SEVERITY_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_RESPONSE_RULES: Final = 256  # (schema, severity) pairs in one agreement

_AGREEMENT_KEYS: Final = frozenset(
    {"type", "id", "version", "parties", "schemas", "ceiling", "suite", "not_before", "not_after"}
)
_DIRECTION_KEYS: Final = frozenset({"from", "to", "tlp_max", "schemas"})
_ONWARD_KEYS: Final = frozenset({"default", "schemas"})
_OPTIONAL_AGREEMENT_KEYS: Final = frozenset({"response"})
_RESPONSE_RULE_KEYS: Final = frozenset({"acknowledge", "respond"})

# Onward dissemination (docs/adr/0014): the classes of domestic recipient the receiving node
# may pass a report on to, per TLP level (optionally per schema). "any" means every class.
# TLP:RED never goes onward, so it cannot be named.
RECIPIENT_CLASSES: Final = (
    "any",
    "cert",
    "counter-terrorism",
    "customs",
    "government",
    "intelligence",
    "military",
    "police",
)
ONWARD_TLPS: Final = ("clear", "green", "amber", "amber+strict")
_SCHEMA_CEILING_KEYS: Final = frozenset({"fields", "labels"})


def tlp_rank(tlp: str) -> int:
    """Position of ``tlp`` in clear < green < amber < amber+strict < red.

    Raises ``InputError`` for anything else.
    """
    try:
        return TLP_LEVELS.index(tlp)
    except ValueError:
        raise InputError(
            f"TLP must be one of {', '.join(TLP_LEVELS)}",
            next_step="Use a TLP 2.0 level in lower case.",
        ) from None


def tlp_at_most(tlp: str, maximum: str) -> bool:
    """True when ``tlp`` is known and not above ``maximum``; unknown levels are never allowed."""
    if tlp not in TLP_LEVELS or maximum not in TLP_LEVELS:
        return False
    return TLP_LEVELS.index(tlp) <= TLP_LEVELS.index(maximum)


# ---- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaCeiling:
    """What may flow of one schema in one direction: fields by name, or by label."""

    fields: frozenset[str]
    labels: frozenset[str]

    def allows(self, field: str, label: str | None) -> bool:
        return field in self.fields or (label is not None and label in self.labels)

    def to_json(self) -> dict[str, list[str]]:
        return {"fields": sorted(self.fields), "labels": sorted(self.labels)}


TlpClasses = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class OnwardRules:
    """Whom the receiver may pass reports of one direction on to: per TLP level the classes
    of domestic recipient (``default``), replaced for a schema named in ``schemas``. A level
    not listed lets nothing onward; no rules at all (the default) mean nothing onward."""

    default: TlpClasses = field(default_factory=lambda: MappingProxyType({}))
    schemas: Mapping[str, TlpClasses] = field(default_factory=lambda: MappingProxyType({}))

    def classes(self, tlp: str, schema: str) -> frozenset[str]:
        rules = self.schemas.get(schema, self.default)
        return rules.get(tlp, frozenset()) if tlp in ONWARD_TLPS else frozenset()

    def allows(self, tlp: str, schema: str, recipient_class: str) -> bool:
        """May a report of ``schema`` at ``tlp`` go to a recipient of ``recipient_class``?"""
        allowed = self.classes(tlp, schema)
        return recipient_class in RECIPIENT_CLASSES and (
            "any" in allowed or recipient_class in allowed
        )

    def is_empty(self) -> bool:
        return not self.default and not self.schemas

    def to_json(self) -> dict[str, Any]:
        def levels(m: TlpClasses) -> dict[str, list[str]]:
            return {tlp: sorted(m[tlp]) for tlp in sorted(m)}

        return {
            "default": levels(self.default),
            "schemas": {name: levels(self.schemas[name]) for name in sorted(self.schemas)},
        }


NO_ONWARD: Final = OnwardRules()


@dataclass(frozen=True)
class ResponseRule:
    """How soon the receiver of a report must acknowledge it and, optionally, respond
    (``acknowledge <= respond``), counted from when the report reached it."""

    acknowledge: timedelta
    respond: timedelta | None = None

    def to_json(self) -> dict[str, str]:
        out = {"acknowledge": format_duration(self.acknowledge)}
        if self.respond is not None:
            out["respond"] = format_duration(self.respond)
        return out


# schema name -> severity -> rule
ResponseRules = Mapping[str, Mapping[str, ResponseRule]]
NO_RESPONSE_RULES: Final[ResponseRules] = MappingProxyType({})


@dataclass(frozen=True)
class DirectionCeiling:
    """The ceiling for one direction ``sender -> receiver``, and what ``receiver`` may pass
    onward (``onward``: an optional key, left out of the bytes when there are no rules, so
    agreements without onward rules keep the bytes and digest they always had)."""

    sender: str
    receiver: str
    tlp_max: str
    schemas: Mapping[str, SchemaCeiling]
    onward: OnwardRules = NO_ONWARD

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from": self.sender,
            "to": self.receiver,
            "tlp_max": self.tlp_max,
            "schemas": {name: self.schemas[name].to_json() for name in sorted(self.schemas)},
        }
        if not self.onward.is_empty():
            out["onward"] = self.onward.to_json()
        return out


@dataclass(frozen=True)
class Agreement:
    """An agreement's content. Build with ``propose``; from bytes only by verifying."""

    id: str
    version: int
    parties: tuple[str, str]
    schemas: Mapping[str, str]
    ceiling: tuple[DirectionCeiling, ...]
    suite: str
    not_before: str
    not_after: str
    response: ResponseRules = field(default_factory=lambda: NO_RESPONSE_RULES)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": AGREEMENT_TYPE,
            "id": self.id,
            "version": self.version,
            "parties": list(self.parties),
            "schemas": {name: self.schemas[name] for name in sorted(self.schemas)},
            "ceiling": [d.to_json() for d in self.ceiling],
            "suite": self.suite,
            "not_before": self.not_before,
            "not_after": self.not_after,
        }
        if self.response:
            out["response"] = {
                sop: {sev: rules[sev].to_json() for sev in sorted(rules)}
                for sop, rules in sorted(self.response.items())
            }
        return out

    def response_rule(self, sop: str, severity: str) -> ResponseRule | None:
        """The rule for a report of ``sop`` at ``severity``, whichever party receives it;
        ``None`` when the agreement sets none (no deadline)."""
        return self.response.get(sop, {}).get(severity)

    def to_bytes(self) -> bytes:
        """The exact canonical bytes both parties sign."""
        return canonical_json(self.to_json())

    def direction(self, sender: str, receiver: str) -> DirectionCeiling | None:
        for d in self.ceiling:
            if d.sender == sender and d.receiver == receiver:
                return d
        return None

    def peer_of(self, node: str) -> str:
        """The other party; ``PolicyError`` when ``node`` is not a party."""
        if node not in self.parties:
            raise PolicyError(
                "the node is not a party to this agreement", code="policy.not_a_party"
            )
        return self.parties[1] if self.parties[0] == node else self.parties[0]


@dataclass(frozen=True)
class SignedAgreement:
    """Exact agreement bytes with signatures by node id (not yet verified)."""

    agreement_bytes: bytes
    signatures: Mapping[str, bytes]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": SIGNED_AGREEMENT_TYPE,
            "agreement": b64(self.agreement_bytes),
            "signatures": {node: b64(self.signatures[node]) for node in sorted(self.signatures)},
        }

    def to_bytes(self) -> bytes:
        """The file/wire form: canonical JSON carrying the agreement bytes as base64."""
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the agreement bytes (not of the signatures)."""
        return sha256_digest(self.agreement_bytes)


@dataclass(frozen=True)
class VerifiedAgreement:
    """An agreement both parties' signatures verified on, inside its validity window."""

    agreement: Agreement
    agreement_bytes: bytes
    signatures: Mapping[str, bytes]
    digest: str

    @property
    def signed(self) -> SignedAgreement:
        return SignedAgreement(self.agreement_bytes, self.signatures)

    def response_rule(self, sop: str, severity: str) -> ResponseRule | None:
        """The signed response rule for ``sop`` at ``severity`` (either direction), if any."""
        return self.agreement.response_rule(sop, severity)


@dataclass(frozen=True)
class Ceiling:
    """What the agreement lets ``sender`` release to ``receiver`` for one schema.

    ``fields`` are field names resolved against the schema's labels (the agreement may name
    fields or labels); ``tlp_max`` is the highest report TLP that may flow.
    """

    agreement_digest: str
    sender: str
    receiver: str
    schema: str
    schema_digest: str
    tlp_max: str
    fields: frozenset[str]

    def allows_tlp(self, tlp: str) -> bool:
        return tlp_at_most(tlp, self.tlp_max)


# ---- building and signing -----------------------------------------------------------------------


def propose(
    *,
    agreement_id: str,
    parties: Iterable[str],
    schemas: Mapping[str, str],
    ceiling: Sequence[DirectionCeiling],
    suite: str,
    not_before: datetime,
    not_after: datetime,
    version: int = 1,
    schema_labels: Mapping[str, Mapping[str, str]] | None = None,
    response: ResponseRules = NO_RESPONSE_RULES,
    schema_severities: Mapping[str, Iterable[str]] | None = None,
) -> Agreement:
    """Build and check an agreement (unsigned). Raises ``PolicyError`` naming the rule.

    ``schemas`` maps each schema name to its digest. When ``schema_labels`` is given (the
    local schema pack's field -> label mappings), every field a ceiling names must exist.
    ``response`` holds the response rules (``parse_response``); when ``schema_severities``
    is given (each schema's ``severity`` enum), every severity a rule names must be one.
    """
    agreement = Agreement(
        id=agreement_id,
        version=version,
        parties=tuple(sorted(parties)),  # type: ignore[arg-type]  # length checked below
        schemas=MappingProxyType(dict(schemas)),
        ceiling=tuple(sorted(ceiling, key=lambda d: (d.sender, d.receiver))),
        suite=suite,
        not_before=format_time(not_before),
        not_after=format_time(not_after),
        response=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in response.items()}),
    )
    problems = _problems(agreement)
    if schema_labels is not None:
        problems.extend(_field_problems(agreement, schema_labels))
    if schema_severities is not None:
        problems.extend(response_problems(agreement, schema_severities))
    if problems:
        raise PolicyError(
            f"agreement: {problems[0]}",
            code="policy.agreement_invalid",
            next_step="Fix the named key in the terms file and propose again.",
        )
    return agreement


def direction(
    sender: str,
    receiver: str,
    tlp_max: str,
    schemas: Mapping[str, tuple[Iterable[str], Iterable[str]]],
    onward: OnwardRules = NO_ONWARD,
) -> DirectionCeiling:
    """Convenience builder: ``schemas`` maps a name to ``(fields, labels)``."""
    return DirectionCeiling(
        sender=sender,
        receiver=receiver,
        tlp_max=tlp_max,
        schemas=MappingProxyType(
            {
                name: SchemaCeiling(frozenset(fields), frozenset(labels))
                for name, (fields, labels) in schemas.items()
            }
        ),
        onward=onward,
    )


def _onward_levels(raw: object, where: str, *, from_terms: bool) -> TlpClasses:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table of TLP levels to recipient classes")
    out: dict[str, frozenset[str]] = {}
    for tlp, classes in raw.items():
        here = f"{where}.{tlp}" if isinstance(tlp, str) else where
        if tlp == "red":
            raise InputError(f"{here}: TLP:RED never goes onward; leave it out")
        if tlp not in ONWARD_TLPS:
            raise InputError(f"{here}: unknown TLP level (one of {', '.join(ONWARD_TLPS)})")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise InputError(f"{here} must be a list of recipient classes")
        bad = [c for c in classes if c not in RECIPIENT_CLASSES]
        if bad:
            raise InputError(
                f"{here}: unknown recipient class {bad[0][:40]!r} "
                f"(one of {', '.join(RECIPIENT_CLASSES)})"
            )
        if not classes:
            raise InputError(f"{here}: lists no class (leave the level out: nothing onward)")
        if "any" in classes and len(classes) > 1:
            raise InputError(f"{here}: 'any' already names every class; list it alone")
        if not from_terms and classes != sorted(set(classes)):
            raise InputError(f"{here} must be sorted and without duplicates")
        if len(set(classes)) != len(classes):
            raise InputError(f"{here} names a class twice")
        out[tlp] = frozenset(classes)
    return MappingProxyType(out)


def parse_onward(raw: object, where: str, *, from_terms: bool = False) -> OnwardRules:
    """Onward rules from terms (``[send.onward]``: TLP levels, and ``schema."<name>"`` tables
    of levels) or from an agreement's ``onward`` (``default`` and ``schemas``). Raises
    ``InputError`` naming the field: an unknown TLP, RED, or a class not in
    ``RECIPIENT_CLASSES``."""
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table")
    if from_terms:
        levels = {k: v for k, v in raw.items() if k != "schema"}
        per_schema = raw.get("schema", {})
    else:
        if set(raw) != _ONWARD_KEYS:
            raise InputError(f"{where} needs exactly default and schemas")
        levels, per_schema = raw["default"], raw["schemas"]
    if not isinstance(per_schema, dict):
        raise InputError(f"{where}.schema must be a table of schemas")
    sub = "schema" if from_terms else "schemas"
    schemas = {}
    for name, rule in per_schema.items():
        if not isinstance(name, str) or SCHEMA_NAME_RE.fullmatch(name) is None:
            raise InputError(f"{where}.{sub}: a schema name is not of the form name@major")
        schemas[name] = _onward_levels(rule, f"{where}.{sub}.{name}", from_terms=from_terms)
    rules = OnwardRules(
        default=_onward_levels(levels, where, from_terms=from_terms),
        schemas=MappingProxyType(schemas),
    )
    if not from_terms and rules.is_empty():
        raise InputError(f"{where} names no rule (leave it out: nothing onward)")
    return rules


def _response_rule(raw: object, where: str, *, from_terms: bool) -> ResponseRule:
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table with acknowledge and optionally respond")
    unknown = sorted(str(k)[:40] for k in set(raw) - _RESPONSE_RULE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (acknowledge, respond)")
    if "acknowledge" not in raw:
        raise InputError(f"{where}.acknowledge is missing")
    values: dict[str, timedelta] = {}
    for key in sorted(_RESPONSE_RULE_KEYS & set(raw)):
        value = parse_duration(raw[key], field=f"{where}.{key}")
        if not from_terms and format_duration(value) != raw[key]:
            raise InputError(
                f"{where}.{key} is not in canonical form (e.g. PT1H30M, P1D; no weeks, "
                "no zero parts, each part below the next unit)"
            )
        values[key] = value
    rule = ResponseRule(values["acknowledge"], values.get("respond"))
    if rule.respond is not None and rule.respond < rule.acknowledge:
        raise InputError(f"{where}: respond must not be sooner than acknowledge")
    return rule


def parse_response(raw: object, where: str, *, from_terms: bool = False) -> ResponseRules:
    """Response rules from terms (``[response."<schema>".<severity>]``, any valid duration
    spelling) or from an agreement's ``response`` (canonical durations only). Raises
    ``InputError`` naming the key: a bad schema or severity name, an unknown key, a bad
    duration, ``respond`` sooner than ``acknowledge``, or an empty table."""
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a table of schemas")
    if not raw and not from_terms:
        raise InputError(f"{where} names no rule (leave it out: no deadlines)")
    out: dict[str, Mapping[str, ResponseRule]] = {}
    count = 0
    for sop, per_severity in raw.items():
        if not isinstance(sop, str) or SCHEMA_NAME_RE.fullmatch(sop) is None:
            raise InputError(f"{where}: a schema name is not of the form name@major")
        here = f'{where}."{sop}"' if from_terms else f"{where}.{sop}"
        if not isinstance(per_severity, dict) or not per_severity:
            raise InputError(f"{here} must be a table of severities with at least one rule")
        rules: dict[str, ResponseRule] = {}
        for severity, rule in per_severity.items():
            if not isinstance(severity, str) or SEVERITY_RE.fullmatch(severity) is None:
                raise InputError(f"{here}: a severity is not a valid name ([a-z][a-z0-9-]*)")
            rules[severity] = _response_rule(rule, f"{here}.{severity}", from_terms=from_terms)
        count += len(rules)
        if count > MAX_RESPONSE_RULES:
            raise InputError(f"{where} holds more than {MAX_RESPONSE_RULES} rules")
        out[sop] = MappingProxyType(rules)
    return MappingProxyType(out)


def response_problems(
    agreement: Agreement, schema_severities: Mapping[str, Iterable[str]]
) -> list[str]:
    """Every response rule that names a severity its schema does not define.

    ``schema_severities`` maps a schema name to the values of its ``severity`` enum (none,
    or no entry, when the schema has no severity field: no rule can name it then).
    """
    problems: list[str] = []
    for sop in sorted(agreement.response):
        allowed = set(schema_severities.get(sop, ()))
        if not allowed:
            problems.append(f"response.{sop}: the schema has no severity field to key rules by")
            continue
        for severity in sorted(set(agreement.response[sop]) - allowed):
            problems.append(
                f"response.{sop}.{severity}: not a severity of {sop} "
                f"(one of {', '.join(sorted(allowed))})"
            )
    return problems


def onward_rules(agreement: VerifiedAgreement, sender: str, receiver: str) -> OnwardRules:
    """What ``receiver`` may pass onward of what ``sender`` sends; nothing without rules."""
    d = agreement.agreement.direction(sender, receiver)
    return NO_ONWARD if d is None else d.onward


def sign_agreement(
    agreement: Agreement | SignedAgreement, node: str, signer: Signer
) -> SignedAgreement:
    """Add ``node``'s signature over the exact agreement bytes (replacing an earlier one).

    The agreement is checked (shape, canonical bytes) before signing; signatures already
    present are kept as they are and are checked by ``verify_agreement``.
    """
    if isinstance(agreement, Agreement):
        data = agreement.to_bytes()
        existing: dict[str, bytes] = {}
    else:
        data = agreement.agreement_bytes
        existing = dict(agreement.signatures)
    try:
        content = parse_agreement_unverified(data)
    except PeerDataError as e:
        raise PolicyError(e.message, code="policy.agreement_invalid") from e
    if node not in content.parties:
        raise PolicyError(
            "agreement: the signing node is not one of its parties", code="policy.not_a_party"
        )
    existing[node] = signer.sign(signed_message(Purpose.AGREEMENT, data))
    return SignedAgreement(data, MappingProxyType(existing))


# ---- reading and verifying ----------------------------------------------------------------------


def parse_signed_agreement_unverified(data: bytes) -> SignedAgreement:
    """Read the file/wire form of a signed agreement. Checks shape only, no signature."""
    try:
        doc = parse_json_unverified(
            data, what="signed agreement", max_bytes=MAX_SIGNED_AGREEMENT_BYTES
        )
    except InputError as e:
        raise PeerDataError(e.message, code="peer.agreement_invalid") from e
    if (
        not isinstance(doc, dict)
        or set(doc) != {"type", "agreement", "signatures"}
        or doc["type"] != SIGNED_AGREEMENT_TYPE
    ):
        raise PeerDataError(
            f"signed agreement: not an {SIGNED_AGREEMENT_TYPE} document "
            "(exactly type, agreement, signatures)",
            code="peer.agreement_invalid",
        )
    sigs = doc["signatures"]
    if not isinstance(sigs, dict) or len(sigs) > 2:
        raise PeerDataError(
            "signed agreement: signatures must map at most two node ids to signatures",
            code="peer.agreement_invalid",
        )
    try:
        if not isinstance(doc["agreement"], str):
            raise InputError("signed agreement: agreement must be a base64 string")
        signatures: dict[str, bytes] = {}
        for node, sig in sigs.items():
            if NODE_ID_RE.fullmatch(node) is None or not isinstance(sig, str):
                raise InputError("signed agreement: a signature key is not a node id")
            signatures[node] = b64_decode(sig, what="agreement signature")
        agreement_bytes = b64_decode(doc["agreement"], what="agreement")
    except InputError as e:
        raise PeerDataError(e.message, code="peer.agreement_invalid") from e
    return SignedAgreement(agreement_bytes, MappingProxyType(signatures))


def parse_agreement_unverified(data: bytes) -> Agreement:
    """Read agreement bytes: strict JSON, exact keys, canonical form, every rule checked.

    Says nothing about signatures: use ``verify_agreement`` before acting on it.
    Raises ``PeerDataError`` (``peer.agreement_invalid``).
    """
    try:
        doc = parse_json_unverified(data, what="agreement", max_bytes=MAX_AGREEMENT_BYTES)
    except InputError as e:
        raise PeerDataError(e.message, code="peer.agreement_invalid") from e
    try:
        agreement = _from_json(doc)
    except (InputError, PolicyError) as e:
        raise PeerDataError(e.message, code="peer.agreement_invalid") from e
    problems = _problems(agreement)
    if problems:
        raise PeerDataError(f"agreement: {problems[0]}", code="peer.agreement_invalid")
    if agreement.to_bytes() != data:
        raise PeerDataError(
            "agreement: bytes are not canonical JSON (RFC 8785)", code="peer.agreement_invalid"
        )
    return agreement


def verified_signers(signed: SignedAgreement, party_keys: Mapping[str, bytes]) -> frozenset[str]:
    """The parties whose signature is present and valid; any invalid one raises.

    For ``accord agreement show`` and for checking the proposer before counter-signing.
    A signature by a node that is not a party, or by a party without a key in
    ``party_keys``, raises ``PeerDataError``.
    """
    agreement = parse_agreement_unverified(signed.agreement_bytes)
    message = signed_message(Purpose.AGREEMENT, signed.agreement_bytes)
    good: set[str] = set()
    for node in sorted(signed.signatures):
        if node not in agreement.parties:
            raise PeerDataError(
                "agreement: carries a signature by a node that is not a party",
                code="peer.agreement_invalid",
            )
        key = party_keys.get(node)
        if key is None:
            raise PeerDataError(
                f"agreement: no identity key known for party {node}",
                code="peer.agreement_unknown_party",
                next_step="Add the partner's card with 'accord peer add' first.",
            )
        verify_ed25519(key, message, signed.signatures[node], what=f"agreement signature by {node}")
        good.add(node)
    return frozenset(good)


def verify_agreement(
    data: SignedAgreement | bytes,
    party_keys: Mapping[str, bytes],
    now: datetime,
    *,
    skew: timedelta = AGREEMENT_CLOCK_SKEW,
) -> VerifiedAgreement:
    """Verify a signed agreement: canonical bytes, known suite, BOTH parties' signatures
    over ``"accord/v1/agreement\\n" + bytes`` with the keys in ``party_keys``, and
    ``not_before - skew <= now < not_after + skew``.

    ``data`` is a ``SignedAgreement`` or its file/wire bytes. Raises ``PeerDataError``
    (``peer.agreement_invalid``, ``peer.agreement_unsigned``, ``peer.agreement_unknown_party``,
    ``peer.bad_signature``) or ``PolicyError`` (``policy.agreement_not_yet_valid``,
    ``policy.agreement_expired``).
    """
    signed = data if isinstance(data, SignedAgreement) else parse_signed_agreement_unverified(data)
    agreement = parse_agreement_unverified(signed.agreement_bytes)
    missing = [p for p in agreement.parties if p not in signed.signatures]
    if missing:
        raise PeerDataError(
            f"agreement: not signed by party {missing[0]}; both parties must sign",
            code="peer.agreement_unsigned",
            next_step="Have the named party sign with 'accord agreement sign'.",
        )
    if verified_signers(signed, party_keys) != frozenset(agreement.parties):
        raise PeerDataError(  # unreachable: verified_signers raises first; kept as a guard
            "agreement: both parties' signatures are required", code="peer.agreement_unsigned"
        )
    if now.tzinfo is None:
        raise InputError("now must be an aware UTC datetime")
    not_before = parse_time(agreement.not_before, field="agreement not_before")
    not_after = parse_time(agreement.not_after, field="agreement not_after")
    if now < not_before - skew:
        raise PolicyError(
            f"agreement {agreement.id} v{agreement.version} is not valid before "
            f"{agreement.not_before}",
            code="policy.agreement_not_yet_valid",
            next_step="Wait until the agreement starts, or check this node's clock.",
        )
    if now >= not_after + skew:
        raise PolicyError(
            f"agreement {agreement.id} v{agreement.version} expired at {agreement.not_after}",
            code="policy.agreement_expired",
            next_step="Propose a new agreement version with 'accord agreement propose'.",
        )
    return VerifiedAgreement(
        agreement=agreement,
        agreement_bytes=signed.agreement_bytes,
        signatures=MappingProxyType(dict(signed.signatures)),
        digest=sha256_digest(signed.agreement_bytes),
    )


def ceiling_for(
    agreement: VerifiedAgreement,
    sender: str,
    receiver: str,
    schema: str,
    labels: Mapping[str, str],
    schema_digest: str,
) -> Ceiling:
    """The ceiling for ``schema`` from ``sender`` to ``receiver``.

    ``labels`` is the schema's field -> label mapping, ``schema_digest`` its digest in the
    local pack. Raises ``PolicyError`` (``policy.outside_agreement``) when the pair is not
    the agreement's parties, the direction or schema is not in the agreement, or the local
    schema's digest differs from the agreed one: nothing flows then (callers deciding a
    release pass ``ceiling=None`` to ``decide``, which withholds everything).
    """
    content = agreement.agreement
    if sorted((sender, receiver)) != list(content.parties):
        raise PolicyError(
            "the sender and receiver are not the two parties of the agreement",
            code="policy.outside_agreement",
        )
    d = content.direction(sender, receiver)
    if d is None:
        raise PolicyError(
            f"the agreement lets nothing flow from {sender} to {receiver}",
            code="policy.outside_agreement",
        )
    schema_ceiling = d.schemas.get(schema)
    if schema_ceiling is None or schema not in content.schemas:
        raise PolicyError(
            f"schema {schema} is not in the agreement's ceiling from {sender} to {receiver}",
            code="policy.outside_agreement",
        )
    if content.schemas[schema] != schema_digest:
        raise PolicyError(
            f"schema {schema}: the local schema's digest differs from the agreed one",
            code="policy.outside_agreement",
            next_step="Both nodes must load the same schema pack, or agree a new version.",
        )
    allowed = frozenset(f for f, label in labels.items() if schema_ceiling.allows(f, label))
    return Ceiling(
        agreement_digest=agreement.digest,
        sender=sender,
        receiver=receiver,
        schema=schema,
        schema_digest=schema_digest,
        tlp_max=d.tlp_max,
        fields=allowed,
    )


def ceilings_between(
    agreement: VerifiedAgreement,
    sender: str,
    receiver: str,
    schema_labels: Mapping[str, Mapping[str, str]],
    schema_digests: Mapping[str, str],
) -> dict[str, Ceiling]:
    """Every schema's ceiling from ``sender`` to ``receiver`` that the local pack matches
    (schemas not in the pack, or with another digest, are left out: nothing flows)."""
    d = agreement.agreement.direction(sender, receiver)
    out: dict[str, Ceiling] = {}
    if d is None:
        return out
    for name in sorted(d.schemas):
        if name in schema_labels and name in schema_digests:
            try:
                out[name] = ceiling_for(
                    agreement, sender, receiver, name, schema_labels[name], schema_digests[name]
                )
            except PolicyError:
                continue
    return out


# ---- rules --------------------------------------------------------------------------------------


def _names(raw: object, what: str, pattern: re.Pattern[str]) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InputError(f"{what} must be a list of strings")
    if len(raw) > MAX_FIELDS:
        raise InputError(f"{what} lists more than {MAX_FIELDS} entries")
    if raw != sorted(set(raw)):
        raise InputError(f"{what} must be sorted and without duplicates")
    bad = [x for x in raw if pattern.fullmatch(x) is None]
    if bad:
        raise InputError(f"{what} holds an entry that is not a valid name")
    return frozenset(raw)


def _from_json(doc: object) -> Agreement:
    if not isinstance(doc, dict) or doc.get("type") != AGREEMENT_TYPE:
        raise InputError(f"agreement: type is not {AGREEMENT_TYPE}")
    if set(doc) - _OPTIONAL_AGREEMENT_KEYS != _AGREEMENT_KEYS:
        missing = sorted(_AGREEMENT_KEYS - set(doc))
        extra = sorted(k[:40] for k in set(doc) - _AGREEMENT_KEYS - _OPTIONAL_AGREEMENT_KEYS)
        raise InputError(f"agreement: fields missing {missing} or unknown {extra[:5]}")
    parties = doc["parties"]
    if not isinstance(parties, list) or len(parties) != 2:
        raise InputError("agreement: parties must list exactly two node ids")
    schemas = doc["schemas"]
    if not isinstance(schemas, dict):
        raise InputError("agreement: schemas must map schema names to digests")
    ceiling_raw = doc["ceiling"]
    if not isinstance(ceiling_raw, list):
        raise InputError("agreement: ceiling must be a list of directions")
    directions = []
    for raw in ceiling_raw:
        if not isinstance(raw, dict) or set(raw) - {"onward"} != _DIRECTION_KEYS:
            raise InputError(
                "agreement: each ceiling entry needs exactly from, to, tlp_max, schemas "
                "(and optionally onward)"
            )
        per_schema = raw["schemas"]
        if not isinstance(per_schema, dict):
            raise InputError("agreement: a ceiling's schemas must be an object")
        entries: dict[str, SchemaCeiling] = {}
        for name, entry in per_schema.items():
            if not isinstance(entry, dict) or set(entry) != _SCHEMA_CEILING_KEYS:
                raise InputError("agreement: a schema ceiling needs exactly fields and labels")
            entries[name] = SchemaCeiling(
                fields=_names(entry["fields"], "agreement: ceiling fields", FIELD_NAME_RE),
                labels=_names(entry["labels"], "agreement: ceiling labels", LABEL_RE),
            )
        onward = (
            parse_onward(raw["onward"], "agreement: ceiling onward") if "onward" in raw else None
        )
        directions.append(
            DirectionCeiling(
                sender=raw["from"],
                receiver=raw["to"],
                tlp_max=raw["tlp_max"],
                schemas=MappingProxyType(entries),
                onward=NO_ONWARD if onward is None else onward,
            )
        )
    return Agreement(
        id=doc["id"],
        version=doc["version"],
        parties=(parties[0], parties[1]),
        schemas=MappingProxyType(dict(schemas)),
        ceiling=tuple(directions),
        suite=doc["suite"],
        not_before=doc["not_before"],
        not_after=doc["not_after"],
        response=(
            parse_response(doc["response"], "agreement: response")
            if "response" in doc
            else NO_RESPONSE_RULES
        ),
    )


def _is_node(value: object) -> bool:
    return isinstance(value, str) and NODE_ID_RE.fullmatch(value) is not None


def _problems(a: Agreement) -> list[str]:
    """Every rule the agreement breaks, as texts naming the rule (never a report value)."""
    problems: list[str] = []

    def check(ok: bool, rule: str) -> None:
        if not ok:
            problems.append(rule)

    check(
        isinstance(a.id, str) and AGREEMENT_ID_RE.fullmatch(a.id) is not None,
        "id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
    )
    check(
        type(a.version) is int and 1 <= a.version <= MAX_AGREEMENT_VERSION,
        "version must be an integer from 1",
    )
    parties_ok = len(a.parties) == 2 and all(_is_node(p) for p in a.parties)
    check(parties_ok, "parties must be two valid node ids")
    if parties_ok:
        check(a.parties[0] < a.parties[1], "parties must be two different node ids, sorted")
    check(a.suite in SUITES, f"suite must be one of {', '.join(SUITES)}")
    check(0 < len(a.schemas) <= MAX_SCHEMAS, f"schemas must name 1 to {MAX_SCHEMAS} schemas")
    for name, digest in a.schemas.items():
        check(
            isinstance(name, str) and SCHEMA_NAME_RE.fullmatch(name) is not None,
            "schemas: a schema name is not of the form name@major",
        )
        check(
            isinstance(digest, str) and DIGEST_RE.fullmatch(digest) is not None,
            f"schemas: the digest of {name[:70]} is not sha256:<64 hex>",
        )
    try:
        nb = parse_time(a.not_before, field="not_before")
        na = parse_time(a.not_after, field="not_after")
        check(nb < na, "not_before must be earlier than not_after")
    except InputError as e:
        problems.append(e.message)
    check(bool(a.ceiling), "ceiling must name at least one direction (an empty ceiling is vacuous)")
    seen: set[tuple[str, str]] = set()
    for d in a.ceiling:
        if not (parties_ok and _is_node(d.sender) and _is_node(d.receiver)):
            problems.append("ceiling: each direction must run from one party to the other")
            continue
        pair = (d.sender, d.receiver)
        check(
            d.sender != d.receiver and {d.sender, d.receiver} == set(a.parties),
            "ceiling: each direction must run from one party to the other",
        )
        check(pair not in seen, "ceiling: a direction appears twice")
        seen.add(pair)
        check(d.tlp_max in TLP_LEVELS, f"ceiling: tlp_max must be one of {', '.join(TLP_LEVELS)}")
        check(bool(d.schemas), "ceiling: a direction must name at least one schema")
        for name, sc in d.schemas.items():
            check(name in a.schemas, "ceiling: names a schema that is not in schemas")
            check(
                bool(sc.fields or sc.labels),
                f"ceiling: {name[:70]} allows no field and no label (leave the schema out)",
            )
            check(sc.labels <= LABELS, f"ceiling: {name[:70]} names an unknown label")
            check(
                all(FIELD_NAME_RE.fullmatch(f) for f in sc.fields),
                f"ceiling: {name[:70]} names an invalid field name",
            )
        for name in d.onward.schemas:
            check(
                name in d.schemas,
                f"ceiling {d.sender}->{d.receiver}: onward names schema {name[:70]}, "
                "which does not flow in this direction",
            )
        for levels in (d.onward.default, *d.onward.schemas.values()):
            check(
                set(levels) <= set(ONWARD_TLPS)
                and all(c <= set(RECIPIENT_CLASSES) and c for c in levels.values()),
                f"ceiling {d.sender}->{d.receiver}: onward names an unknown TLP level or class",
            )
    check(
        sum(len(rules) for rules in a.response.values()) <= MAX_RESPONSE_RULES,
        f"response: more than {MAX_RESPONSE_RULES} rules",
    )
    for sop, rules in a.response.items():
        check(
            sop in a.schemas,
            f"response: {str(sop)[:70]} is not one of the agreement's schemas",
        )
        check(bool(rules), f"response: {str(sop)[:70]} names no severity")
        for severity, rule in rules.items():
            here = f"response.{str(sop)[:70]}.{str(severity)[:40]}"
            check(
                isinstance(severity, str) and SEVERITY_RE.fullmatch(severity) is not None,
                f"response: {str(sop)[:70]} names an invalid severity",
            )
            check(_duration_ok(rule.acknowledge), f"{here}.acknowledge is out of range")
            check(
                rule.respond is None or _duration_ok(rule.respond),
                f"{here}.respond is out of range",
            )
            check(
                rule.respond is None or rule.acknowledge <= rule.respond,
                f"{here}: respond must not be sooner than acknowledge",
            )
    pairs = [(d.sender, d.receiver) for d in a.ceiling]
    if not problems:
        check(pairs == sorted(pairs), "ceiling: directions must be sorted by from, to")
    return problems


def _duration_ok(value: object) -> bool:
    if not isinstance(value, timedelta):
        return False
    try:
        return parse_duration(format_duration(value), field="duration") == value
    except (InputError, ValueError):
        return False


def _field_problems(a: Agreement, schema_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    problems: list[str] = []
    for d in a.ceiling:
        for name, sc in d.schemas.items():
            labels = schema_labels.get(name)
            if labels is None:
                problems.append(f"ceiling: schema {name} is not in the local schema pack")
                continue
            unknown = sorted(sc.fields - set(labels))
            if unknown:
                problems.append(
                    f"ceiling {d.sender}->{d.receiver}: schema {name} has no field {unknown[0]}"
                )
    return problems
