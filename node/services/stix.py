"""STIX 2.1 for what a partner sent: the one mapping behind ``accord inbox export --format
stix`` and the TAXII feed (node/services/feed.py), built so that importing twice changes nothing.

- **Stable ids.** Every object id is a UUIDv5 of the origin node, the report id and the
  object's role (``STIX_NAMESPACE``): one id per report across all its versions, the same
  on every export.
- **Versions.** ``created`` is when the first version this node holds was sealed (the
  author's SD-JWT ``iat``), ``modified`` when this version was sealed, plus ``version - 1``
  milliseconds so two versions sealed within one second still order (``iat`` has whole
  seconds). An amendment is a new version of the same objects; a retraction is one more
  version of the last one with ``revoked: true`` (modified = ``retracted_at`` plus
  ``version`` milliseconds).
- **Markings.** The report's TLP as the OASIS TLP 2.0 marking definition (``TLP2_IDS``).
- **Origin.** The author node as an ``identity`` (``created_by_ref`` of everything).
- **Provenance.** The report's ``external_references``: the envelope id, the digest of the
  author-signed issuer JWT and the partner it came from (plain STIX, no custom property).
- **Withheld fields** are absent: only what the partner released reaches this module.

How each SOP field becomes STIX is declared once, in ``FIELD_MAP``. Every disclosed field
(and every transformed one, marked as such) is also listed in the report's description, so
nothing released is lost on a consumer that drops a structured property.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import stix2

from exchange.canonical import b64_decode
from exchange.errors import AccordError, InputError, PeerDataError
from exchange.sdjwt import PresentationLimits, verify_presentation
from exchange.times import parse_time
from node.home import Node
from node.services.inbox import InboxItem, get_inbox, report_versions

# OASIS TLP 2.0 marking definitions for STIX 2.1 (fixed ids, extension-definition--60a3c5c5).
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_CREATOR = "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01"
TLP2_IDS = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP2_CREATED = "2022-10-01T00:00:00.000Z"

# The namespace of every Accord STIX id: uuid5(STIX_NAMESPACE, "origin\nreport id\nrole").
STIX_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:accord:v1:stix")
# An origin identity has one version: it describes a node id, which never changes.
IDENTITY_CREATED = "2024-01-01T00:00:00.000Z"


class As(Enum):
    """What one SOP field becomes in STIX (besides its line in the report description)."""

    NAME = "the report's name"
    SUMMARY = "the first paragraph of the report's description"
    LABEL = "a report label '<field>:<value>'"
    LOCATION_POINT = "latitude/longitude of the report's site location"
    LOCATION_SITE = "the name of the report's site location"
    LOCATION_REGION = "a location object for the region (region, administrative_area)"
    LOCATION_REGIONS = "one location object per listed region"
    LOCATION_COUNTRY = "a location object for the country (country only if ISO 3166 alpha-2)"
    VALID_WINDOW = "valid_from/valid_until of the report's indicators"
    INDICATORS = "indicator objects with STIX patterns (IP, domain, URL, e-mail, file hash)"
    COURSES_OF_ACTION = "one course-of-action object per action"
    DESCRIPTION = "a line of the report's description only"


# One table: per SOP and field, its STIX form. A field not named here is described only.
FIELD_MAP: Mapping[str, Mapping[str, As]] = {
    "threat-alert@1": {
        "title": As.NAME,
        "threat_type": As.LABEL,
        "severity": As.LABEL,
        "region": As.LOCATION_REGION,
        "site": As.LOCATION_SITE,
        "location": As.LOCATION_POINT,
        "time_window": As.VALID_WINDOW,
        "summary": As.SUMMARY,
        "indicators": As.INDICATORS,
        "recommended_actions": As.COURSES_OF_ACTION,
        "source": As.DESCRIPTION,
    },
    "incident-report@1": {
        "title": As.NAME,
        "incident_type": As.LABEL,
        "occurred_at": As.DESCRIPTION,
        "region": As.LOCATION_REGION,
        "site": As.LOCATION_SITE,
        "location": As.LOCATION_POINT,
        "status": As.LABEL,
        "casualties": As.DESCRIPTION,
        "affected_persons": As.DESCRIPTION,
        "narrative": As.SUMMARY,
        "suspected_perpetrators": As.DESCRIPTION,
        "response_actions": As.COURSES_OF_ACTION,
        "source": As.DESCRIPTION,
    },
    "travel-advisory@1": {
        "title": As.NAME,
        "country": As.LOCATION_COUNTRY,
        "regions": As.LOCATION_REGIONS,
        "advisory_level": As.LABEL,
        "risks": As.DESCRIPTION,
        "valid_from": As.DESCRIPTION,
        "valid_until": As.DESCRIPTION,
        "guidance": As.SUMMARY,
        "movement_restrictions": As.DESCRIPTION,
        "contact": As.DESCRIPTION,
        "source": As.DESCRIPTION,
    },
}


@dataclass(frozen=True)
class StixSource:
    """One verified report version (or the retraction of the last one) as received."""

    origin: str  # the author node (the SD-JWT issuer)
    peer: str  # the partner it came from
    report_id: str
    version: int
    sop: str
    tlp: str
    envelope_id: str
    issuer_jwt_digest: str  # digest of the author-signed issuer JWT
    sealed_at: datetime  # this version's iat
    first_sealed_at: datetime  # the iat of the first version this node holds
    fields: Mapping[str, Any]
    derived: Mapping[str, Any] = field(default_factory=dict)
    retracted_at: datetime | None = None  # set: every object is revoked


def _uuid5(*parts: str) -> str:
    return str(uuid.uuid5(STIX_NAMESPACE, "\n".join(parts)))


def stix_id(kind: str, origin: str, report_id: str, role: str) -> str:
    return f"{kind}--{_uuid5(origin, report_id, role)}"


def identity_id(origin: str) -> str:
    return f"identity--{_uuid5(origin, 'identity')}"


def stix_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def tlp2_marking(tlp: str) -> stix2.v21.MarkingDefinition:
    return stix2.v21.MarkingDefinition(
        id=TLP2_IDS[tlp],
        created=TLP2_CREATED,
        created_by_ref=TLP2_CREATOR,
        name=f"TLP:{tlp.upper()}",
        extensions={TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": tlp}},
    )


def origin_identity(origin: str) -> stix2.v21.Identity:
    return stix2.v21.Identity(
        id=identity_id(origin),
        created=IDENTITY_CREATED,
        modified=IDENTITY_CREATED,
        name=f"Accord partner {origin}",
        identity_class="organization",
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- indicators: a pattern only where the text is unambiguously an observable -----------------

_HASHES = {32: "MD5", 40: "SHA-1", 64: "SHA-256"}
_HEX = re.compile(r"[0-9a-fA-F]+")
_DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@" + _DOMAIN.pattern)
_URL = re.compile(r"https?://[^\s'\\]{1,2000}")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def indicator_pattern(text: str) -> str | None:
    """A STIX pattern for an indicator written as an IP, domain, URL, e-mail or hash;
    ``None`` for free text (it stays in the description)."""
    value = text.strip()
    try:
        ip = ipaddress.ip_address(value)
        kind = "ipv4-addr" if ip.version == 4 else "ipv6-addr"
        return f"[{kind}:value = '{ip.compressed}']"
    except ValueError:
        pass
    if len(value) in _HASHES and _HEX.fullmatch(value):
        return f"[file:hashes.'{_HASHES[len(value)]}' = '{value.lower()}']"
    if _URL.fullmatch(value):
        return f"[url:value = '{_quote(value)}']"
    if _EMAIL.fullmatch(value.lower()):
        return f"[email-addr:value = '{_quote(value.lower())}']"
    if _DOMAIN.fullmatch(value.lower()):
        return f"[domain-name:value = '{value.lower()}']"
    return None


# -- the mapping -------------------------------------------------------------------------------


def _modified(src: StixSource) -> datetime:
    if src.retracted_at is not None:
        return src.retracted_at + timedelta(milliseconds=src.version)
    return src.sealed_at + timedelta(milliseconds=src.version - 1)


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def report_objects(src: StixSource) -> list[dict[str, Any]]:
    """The STIX objects of one report version (the report last), as JSON-ready dicts,
    without the shared identity and marking definition (see ``shared_objects``)."""
    rules = FIELD_MAP.get(src.sop, {})
    fields: dict[str, Any] = dict(src.fields)
    derived: dict[str, Any] = dict(src.derived)
    values = {**fields, **derived}  # a transformed value stands in for the withheld one

    def role(name: str) -> list[str]:
        return [f for f in values if rules.get(f) is As[name]]

    marking = TLP2_IDS[src.tlp]
    created = src.first_sealed_at
    modified = _modified(src)
    if modified < created:
        modified = created
    common: dict[str, Any] = {
        "created": stix_time(created),
        "modified": stix_time(modified),
        "created_by_ref": identity_id(src.origin),
        "object_marking_refs": [marking],
    }
    if src.retracted_at is not None:
        common["revoked"] = True

    def sid(kind: str, part: str) -> str:
        return stix_id(kind, src.origin, src.report_id, part)

    objects: list[Any] = []
    labels = sorted({f"{f}:{_text(values[f])}"[:250] for f in role("LABEL")})

    # Locations: the site (a point, named by the site when disclosed), regions, country.
    point = next((values[f] for f in role("LOCATION_POINT")), None)
    site = next((_text(values[f]) for f in role("LOCATION_SITE")), None)
    regions: list[str] = [_text(values[f]) for f in role("LOCATION_REGION")]
    for f in role("LOCATION_REGIONS"):
        if isinstance(values[f], list):
            regions += [_text(v) for v in values[f]]
    if isinstance(point, dict) and {"lat", "lon"} <= set(point):
        place: dict[str, Any] = {
            "latitude": float(point["lat"]),
            "longitude": float(point["lon"]),
        }
        if site:
            place["name"] = site
        if regions:
            place["administrative_area"] = regions[0]
        objects.append(stix2.v21.Location(id=sid("location", "site"), **place, **common))
    elif site and regions:
        objects.append(
            stix2.v21.Location(
                id=sid("location", "site"),
                name=site,
                region=regions[0],
                administrative_area=regions[0],
                **common,
            )
        )
    for region in sorted(set(regions)):
        objects.append(
            stix2.v21.Location(
                id=sid("location", "region " + region),
                name=region,
                region=region,
                administrative_area=region,
                **common,
            )
        )
    for f in role("LOCATION_COUNTRY"):
        country = _text(values[f])
        where = (
            {"country": country.upper()}
            if re.fullmatch(r"[A-Za-z]{2}", country)
            else {"country": country, "name": country}
        )
        objects.append(
            stix2.v21.Location(id=sid("location", "country " + country), **where, **common)
        )

    # Indicators with patterns, valid over the time window when one is disclosed.
    window = next((values[f] for f in role("VALID_WINDOW")), None)
    start = _iso(window.get("start")) if isinstance(window, dict) else None
    end = _iso(window.get("end")) if isinstance(window, dict) else None
    for f in role("INDICATORS"):
        texts = values[f] if isinstance(values[f], list) else [values[f]]
        for text in texts:
            pattern = indicator_pattern(_text(text))
            if pattern is None:
                continue
            valid: dict[str, Any] = {"valid_from": stix_time(start or src.sealed_at)}
            if end is not None and end > (start or src.sealed_at):
                valid["valid_until"] = stix_time(end)
            objects.append(
                stix2.v21.Indicator(
                    id=sid("indicator", pattern),
                    name=_text(text)[:250],
                    pattern=pattern,
                    pattern_type="stix",
                    indicator_types=["malicious-activity"],
                    labels=labels or None,
                    **valid,
                    **common,
                )
            )
    for f in role("COURSES_OF_ACTION"):
        actions = values[f] if isinstance(values[f], list) else [values[f]]
        for action in actions:
            objects.append(
                stix2.v21.CourseOfAction(
                    id=sid("course-of-action", _text(action)),
                    name=_text(action)[:250],
                    description=_text(action),
                    **common,
                )
            )
    objects = list({o.id: o for o in objects}.values())  # one object per id

    summary = next((_text(values[f]) for f in role("SUMMARY")), None)
    lines = [f"{k}: {_text(v)}" for k, v in sorted(fields.items())]
    lines += [f"{k} (transformed by the sender): {_text(v)}" for k, v in sorted(derived.items())]
    description = "\n".join(([summary, ""] if summary else []) + lines)
    title = next((_text(values[f]) for f in role("NAME")), None)
    report = stix2.v21.Report(
        id=sid("report", "report"),
        name=title or f"{src.sop} report {src.report_id}",
        description=description,
        published=stix_time(src.sealed_at),
        report_types=["threat-report"],
        labels=[f"sop:{src.sop}", *labels],
        object_refs=[identity_id(src.origin), *(o.id for o in objects)],
        external_references=provenance(src),
        **common,
    )
    return [json.loads(o.serialize()) for o in (*objects, report)]


def provenance(src: StixSource) -> list[dict[str, str]]:
    """Where the report came from, as plain external references (no custom property)."""
    return [
        {
            "source_name": "accord",
            "external_id": f"{src.report_id}@{src.version}",
            "description": f"{src.sop} by {src.origin}, received from {src.peer}",
        },
        {"source_name": "accord-envelope", "external_id": src.envelope_id},
        {"source_name": "accord-author-signature", "external_id": src.issuer_jwt_digest},
        {"source_name": "accord-partner", "external_id": src.peer},
    ]


def shared_objects(src: StixSource) -> list[dict[str, Any]]:
    """The objects every report of ``src.origin`` at ``src.tlp`` refers to."""
    return [
        json.loads(tlp2_marking(src.tlp).serialize()),
        json.loads(origin_identity(src.origin).serialize()),
    ]


def bundle_id(src: StixSource) -> str:
    return f"bundle--{_uuid5(src.origin, src.report_id, stix_time(_modified(src)))}"


def to_stix_bundle(src: StixSource) -> str:
    """One report version as a STIX 2.1 bundle: the same ids and bytes on every export."""
    objects: Sequence[dict[str, Any]] = [*shared_objects(src), *report_objects(src)]
    return json.dumps(
        {"type": "bundle", "id": bundle_id(src), "objects": list(objects)},
        indent=2,
        ensure_ascii=True,  # partner text stays inert in a terminal (docs/THREATS.md B03)
    )


# -- from the inbox ----------------------------------------------------------------------------


def _verified_report(node: Node, item: InboxItem, content: Mapping[str, Any]) -> Any:
    """The stored presentation verified again under the partner's card chain as it was
    trusted when the item arrived (as ``inbox show`` does): an item received before a
    revocation stays readable, and is still checked under the author's key."""
    arrived = parse_time(item.received_at, field="received_at")
    trust = node.trust_store()
    chain = trust.trusted_chain(item.peer, arrived)
    revoked = trust.revoked_keys(item.peer)
    keys = [
        c.identity_key
        for c in chain.cards
        if c.identity_key not in revoked or arrived < revoked[c.identity_key]
    ]
    for key in reversed(keys):  # sealed under one of the partner's keys, most likely the newest
        try:
            return verify_presentation(
                content["presentation"],
                key,
                expected_issuer=item.peer,
                limits=PresentationLimits(),
            )
        except AccordError:
            continue
    raise PeerDataError(
        "a stored presentation does not verify under the keys its partner held when it arrived",
        code="inbox.unverified",
    )


def stix_source(
    node: Node, envelope_id: str, now: datetime, *, as_received: bool = False
) -> StixSource:
    """What ``envelope_id`` (a report version or a retraction) means in STIX, read through
    services/inbox.py and verified again. A retraction, and (unless ``as_received``: the item as
    it was when it arrived, for the feed) the latest version of a retracted report, come
    out revoked."""
    item, content = get_inbox(node, envelope_id)
    history = report_versions(node, item.peer, item.report_id)
    reports = [i for i in history if i.kind == "report"]
    retraction = next((i for i in history if i.kind == "retraction"), None)
    if not reports:
        raise InputError(f"no report version is held for {item.report_id}", code="inbox.unknown")
    if item.kind == "retraction":
        base = stix_source(node, reports[-1].envelope_id, now)
        return replace(base, retracted_at=_retracted_at(content))
    report = _verified_report(node, item, content)
    first = reports[0]
    first_iat = (
        report.issued_at
        if first.envelope_id == envelope_id
        else _verified_report(node, first, get_inbox(node, first.envelope_id)[1]).issued_at
    )
    retracted_at = None
    if not as_received and retraction is not None and reports[-1].envelope_id == envelope_id:
        retracted_at = _retracted_at(get_inbox(node, retraction.envelope_id)[1])
    return StixSource(
        origin=report.issuer,
        peer=item.peer,
        report_id=item.report_id,
        version=report.version,
        sop=report.sop,
        tlp=report.tlp,
        envelope_id=item.envelope_id,
        issuer_jwt_digest=report.issuer_jwt_digest,
        sealed_at=datetime.fromtimestamp(report.issued_at, UTC),
        first_sealed_at=datetime.fromtimestamp(min(first_iat, report.issued_at), UTC),
        fields=dict(report.fields),
        derived={d["field"]: d["value"] for d in content.get("derived", [])},
        retracted_at=retracted_at,
    )


def _retracted_at(content: Mapping[str, Any]) -> datetime:
    statement = json.loads(b64_decode(content["retraction"], what="retraction"))
    return datetime.fromtimestamp(int(statement["retracted_at"]), UTC)
