"""OASIS CAP 1.2 for what a partner sent: the mapping behind ``accord inbox export --format
cap``, for domestic warning systems that take Common Alerting Protocol messages
(docs/adr/0019-cap-export.md).

- **Messages.** A report version is an ``Alert`` (version 1) or an ``Update`` (later
  versions, ``<references>`` naming the earlier versions this node holds); a retracted
  report is a ``Cancel`` referencing every version held, its note the sender's reason; an
  acknowledgement is an ``Ack`` referencing the alert (``ack_xml``).
- **Stable ids.** ``identifier`` is ``urn:accord:<issuer>:<report id>:<version>``, the
  sender ``<issuer>.accord``, ``sent`` the time the partner released that version to us
  (from its signed release statement): the same bytes on every export.
- **TLP as scope.** CLEAR is ``Public``; GREEN, AMBER and AMBER+STRICT are ``Restricted``
  with the TLP 2.0 sharing rule as ``<restriction>``; RED is ``Private``, addressed to the
  receiving node only. Every message also carries ``<code>TLP:...</code>``.
- **Withheld fields** are absent: only what the partner released reaches this module. A
  transformed (rounded, coarsened) value stands in for the withheld one, and its transform
  is named; a missing field omits its CAP element, or gives CAP's ``Unknown`` where CAP
  requires a value (urgency, severity, certainty).

How each SOP field becomes CAP is declared once, in ``CAP_MAP``; the renderers take plain
values and do no I/O. XML is built with ``xml.etree.ElementTree`` and written as ASCII
(everything else as character references) so partner text stays inert in a terminal
(docs/THREATS.md B03); characters XML 1.0 cannot carry become U+FFFD.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from exchange.ack import Acknowledgement
from exchange.errors import InputError
from exchange.times import parse_time
from node.home import Node
from node.services.inbox import InboxItem, get_inbox, report_versions

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


class CapAs(Enum):
    """What one SOP field becomes in CAP."""

    HEADLINE = "<headline>, and <event> (the first one disclosed of HEADLINE, EVENT_CODE)"
    EVENT_CODE = "<eventCode> accord:<field>, and <event> when no HEADLINE field is disclosed"
    SEVERITY = "<severity> through the SOP's SEVERITY table"
    STATUS = "<urgency> through the SOP's STATUS_URGENCY table"
    WINDOW = "{start, end}: <onset>/<expires>, and <urgency> from the window at <sent>"
    ONSET = "<onset>, and <urgency> Immediate/Expected/Future before it"
    EFFECTIVE = "<effective> and <onset>"
    EXPIRES = "<expires>"
    AREA = "<areaDesc> of the <area> (a list: one <area> per entry)"
    CIRCLE = "{lat, lon}: a <circle> 'lat,lon radius-km' in every <area>"
    DESCRIPTION = "<description> (a list: one line per entry)"
    INSTRUCTION = "<instruction> (a list: one line per entry)"
    SOURCE = "{credibility}: <certainty> through CREDIBILITY_CERTAINTY; also a parameter"
    PARAMETER = "a <parameter> accord:<field> (JSON when not a string)"


# One table: per SOP and field, its CAP form.
CAP_MAP: Mapping[str, Mapping[str, CapAs]] = {
    "threat-alert@1": {
        "title": CapAs.HEADLINE,
        "threat_type": CapAs.EVENT_CODE,
        "severity": CapAs.SEVERITY,
        "region": CapAs.AREA,
        "site": CapAs.PARAMETER,
        "location": CapAs.CIRCLE,
        "time_window": CapAs.WINDOW,
        "summary": CapAs.DESCRIPTION,
        "indicators": CapAs.PARAMETER,
        "recommended_actions": CapAs.INSTRUCTION,
        "source": CapAs.SOURCE,
    },
    "incident-report@1": {
        "title": CapAs.HEADLINE,
        "incident_type": CapAs.EVENT_CODE,
        "occurred_at": CapAs.ONSET,
        "region": CapAs.AREA,
        "site": CapAs.PARAMETER,
        "location": CapAs.CIRCLE,
        "status": CapAs.STATUS,
        "casualties": CapAs.PARAMETER,
        "affected_persons": CapAs.PARAMETER,
        "narrative": CapAs.DESCRIPTION,
        "suspected_perpetrators": CapAs.PARAMETER,
        "response_actions": CapAs.INSTRUCTION,
        "source": CapAs.SOURCE,
    },
    "travel-advisory@1": {
        "title": CapAs.HEADLINE,
        "country": CapAs.AREA,
        "regions": CapAs.AREA,
        "advisory_level": CapAs.SEVERITY,
        "risks": CapAs.DESCRIPTION,
        "valid_from": CapAs.EFFECTIVE,
        "valid_until": CapAs.EXPIRES,
        "guidance": CapAs.INSTRUCTION,
        "movement_restrictions": CapAs.PARAMETER,
        "contact": CapAs.PARAMETER,
        "source": CapAs.SOURCE,
    },
}

SEVERITY: Mapping[str, Mapping[str, str]] = {
    "threat-alert@1": {
        "low": "Minor",
        "moderate": "Moderate",
        "high": "Severe",
        "critical": "Extreme",
    },
    "travel-advisory@1": {
        "normal-precautions": "Minor",
        "increased-caution": "Moderate",
        "reconsider-travel": "Severe",
        "do-not-travel": "Extreme",
    },
}
STATUS_URGENCY: Mapping[str, str] = {
    "ongoing": "Immediate",
    "contained": "Past",
    "resolved": "Past",
}
# Admiralty information credibility (1 confirmed .. 6 cannot be judged) -> CAP certainty.
CREDIBILITY_CERTAINTY: Mapping[int, str] = {
    1: "Observed",
    2: "Likely",
    3: "Possible",
    4: "Unlikely",
    5: "Unlikely",
    6: "Unknown",
}
# Without a credibility: an incident report tells what happened; the others cannot say.
DEFAULT_CERTAINTY: Mapping[str, str] = {"incident-report@1": "Observed"}
EXPECTED_WITHIN_SECONDS = 3600  # CAP: Expected = "responsive action soon (within next hour)"

# TLP 2.0 (FIRST) sharing rules, as CAP <restriction> text.
RESTRICTION: Mapping[str, str] = {
    "green": "TLP:GREEN: limited disclosure, recipients may share within their community, "
    "not via publicly accessible channels",
    "amber": "TLP:AMBER: limited disclosure, recipients may share only on a need-to-know "
    "basis within their organization and its clients",
    "amber+strict": "TLP:AMBER+STRICT: limited disclosure, recipients may share only on a "
    "need-to-know basis within their organization",
}
TLPS = ("clear", "green", "amber", "amber+strict", "red")
ACK_STATUSES = ("received", "accepted", "actioned", "rejected")
KM_PER_DEGREE = 111.32  # at the equator, where a degree of longitude is longest

_TOKEN = re.compile(r"[^\s,<&\"']+")  # CAP: identifiers and senders carry none of these
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_ROUND = re.compile(r"round:([0-9]{1,2})")


@dataclass(frozen=True)
class CapRef:
    """One earlier CAP message, as ``<references>`` names it."""

    sender: str
    identifier: str
    sent: datetime

    def text(self) -> str:
        return f"{self.sender},{self.identifier},{cap_time(self.sent)}"


@dataclass(frozen=True)
class CapReport:
    """One received report version, as plain values: only what the partner released."""

    issuer: str  # the author node
    report_id: str
    version: int
    sop: str
    tlp: str
    released_at: datetime  # when the partner released this version to us: <sent>
    receiver: str  # the receiving node: RED's <addresses>
    fields: Mapping[str, Any]
    derived: Mapping[str, Any] = field(default_factory=dict)  # transformed stand-ins
    transforms: Mapping[str, str] = field(default_factory=dict)  # field -> "round:1", ...


# -- values ------------------------------------------------------------------------------------


def _token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InputError(
            f"{what} cannot be part of a CAP identifier (spaces, commas, quotes, < or &)",
            code="cap.invalid",
        )
    return value


def identifier(issuer: str, report_id: str, version: int) -> str:
    return f"urn:accord:{_token(issuer, 'issuer')}:{_token(report_id, 'report id')}:{version}"


def sender(node: str) -> str:
    return f"{_token(node, 'node')}.accord"


def cap_time(t: datetime) -> str:
    """CAP's dateTime: whole seconds and an explicit offset, never ``Z``."""
    if t.tzinfo is None:
        raise InputError("a CAP time needs an offset", code="cap.invalid")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return _NOT_XML.sub("\ufffd", text)


def _lines(value: Any) -> str:
    return "\n".join(_text(v) for v in value) if isinstance(value, list) else _text(value)


def _degrees(value: float) -> str:
    return format(Decimal(repr(float(value))), "f")


def circle(point: Any, transform: str | None) -> str | None:
    """``lat,lon radius`` (km): 0 for a point disclosed as it is, half the diagonal of the
    grid cell for a rounded (``round:N``) or coarsened (whole degrees) one; ``None`` for
    anything else (no point, or a transform whose precision is unknown)."""
    if not isinstance(point, dict) or not {"lat", "lon"} <= set(point):
        return None
    lat, lon = point["lat"], point["lon"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if transform is None:
        radius = 0.0
    else:
        m = _ROUND.fullmatch(transform)
        if m is None and transform != "coarsen:region":
            return None
        cell = 10.0 ** -(int(m.group(1)) if m else 0)
        radius = math.ceil(KM_PER_DEGREE * cell * math.sqrt(2) / 2 * 10) / 10
    return f"{_degrees(lat)},{_degrees(lon)} {radius:.1f}"


def urgency(start: datetime | None, end: datetime | None, sent: datetime) -> str:
    """Immediate while the window is open at ``sent``, Expected when it opens within the
    hour, Future when later, Past once it closed; Unknown without a window."""
    if end is not None and end < sent:
        return "Past"
    if start is None:
        return "Immediate" if end is not None else "Unknown"
    ahead = (start - sent).total_seconds()
    if ahead <= 0:
        return "Immediate"
    return "Expected" if ahead <= EXPECTED_WITHIN_SECONDS else "Future"


# -- XML ---------------------------------------------------------------------------------------


def _el(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    e = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        e.text = _NOT_XML.sub("\ufffd", text)
    return e


def _header(
    root_id: str, by: str, sent: datetime, msg_type: str, tlp: str, addresses: str
) -> ET.Element:
    if tlp not in TLPS:
        raise InputError(f"unknown TLP {tlp!r}", code="cap.invalid")
    root = ET.Element(f"{{{CAP_NS}}}alert")
    for tag, value in (
        ("identifier", root_id),
        ("sender", by),
        ("sent", cap_time(sent)),
        ("status", "Actual"),
        ("msgType", msg_type),
    ):
        _el(root, tag, value)
    if tlp == "clear":
        _el(root, "scope", "Public")
    elif tlp == "red":
        _el(root, "scope", "Private")
        _el(root, "addresses", addresses)
    else:
        _el(root, "scope", "Restricted")
        _el(root, "restriction", RESTRICTION[tlp])
    _el(root, "code", f"TLP:{tlp.upper()}")
    return root


def _references(root: ET.Element, refs: Sequence[CapRef]) -> None:
    if refs:
        _el(root, "references", " ".join(r.text() for r in refs))


def _serialize(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    body: bytes = ET.tostring(
        root, encoding="us-ascii", default_namespace=CAP_NS, xml_declaration=False
    )
    # ElementTree writes a carriage return raw, and a parser would read it as a line feed:
    # a character reference keeps it (and keeps it from acting on a terminal).
    return XML_DECLARATION + body.decode("ascii").replace("\r", "&#13;") + "\n"


def alert_xml(report: CapReport, earlier: Sequence[CapRef] = ()) -> str:
    """The CAP ``Alert`` (version 1) or ``Update`` (later versions, referencing
    ``earlier``) of one received report version."""
    rules = CAP_MAP.get(report.sop, {})
    values = {**report.fields, **report.derived}  # a transformed value stands in for its field

    def first(role: CapAs) -> tuple[str, Any] | None:
        return next(((f, values[f]) for f in rules if rules[f] is role and f in values), None)

    def every(role: CapAs) -> list[tuple[str, Any]]:
        return [(f, values[f]) for f in rules if rules[f] is role and f in values]

    sent = report.released_at
    root = _header(
        identifier(report.issuer, report.report_id, report.version),
        sender(report.issuer),
        sent,
        "Alert" if report.version == 1 else "Update",
        report.tlp,
        _token(report.receiver, "receiving node"),
    )
    _references(root, earlier)
    info = _el(root, "info")
    _el(info, "category", "Security")
    headline, code = first(CapAs.HEADLINE), first(CapAs.EVENT_CODE)
    event = headline or code
    _el(info, "event", _text(event[1]) if event else report.sop)

    # Times: the window, or onset/effective/expires fields.
    window = first(CapAs.WINDOW)
    start = end = None
    if window and isinstance(window[1], dict):
        start, end = _when(window[1].get("start")), _when(window[1].get("end"))
    effective = first(CapAs.EFFECTIVE)
    effective_at = _when(effective[1]) if effective else None
    onset = first(CapAs.ONSET)
    start = start or (_when(onset[1]) if onset else None) or effective_at
    expires = first(CapAs.EXPIRES)
    end = end or (_when(expires[1]) if expires else None)

    status = first(CapAs.STATUS)
    if status and status[1] in STATUS_URGENCY:
        how_soon = STATUS_URGENCY[status[1]]
    elif onset and not window and start is not None and start <= sent:
        how_soon = "Unknown"  # an incident that happened, its state not disclosed
    else:
        how_soon = urgency(start, end, sent)
    _el(info, "urgency", how_soon)
    severity = first(CapAs.SEVERITY)
    _el(
        info,
        "severity",
        SEVERITY.get(report.sop, {}).get(_text(severity[1]), "Unknown") if severity else "Unknown",
    )
    source = first(CapAs.SOURCE)
    credibility = source[1].get("credibility") if source and isinstance(source[1], dict) else None
    certainty = (
        CREDIBILITY_CERTAINTY.get(credibility, "Unknown")
        if isinstance(credibility, int) and not isinstance(credibility, bool)
        else DEFAULT_CERTAINTY.get(report.sop, "Unknown")
    )
    _el(info, "certainty", certainty)
    if code:
        ec = _el(info, "eventCode")
        _el(ec, "valueName", f"accord:{code[0]}")
        _el(ec, "value", _text(code[1]))
    if effective_at is not None:
        _el(info, "effective", cap_time(effective_at))
    if start is not None:
        _el(info, "onset", cap_time(start))
    if end is not None:
        _el(info, "expires", cap_time(end))
    _el(info, "senderName", f"Accord partner {report.issuer}")
    if headline:
        _el(info, "headline", _text(headline[1]))
    description = first(CapAs.DESCRIPTION)
    if description:
        _el(info, "description", _lines(description[1]))
    instruction = first(CapAs.INSTRUCTION)
    if instruction:
        _el(info, "instruction", _lines(instruction[1]))

    def parameter(name: str, value: str) -> None:
        p = _el(info, "parameter")
        _el(p, "valueName", name)
        _el(p, "value", value)

    parameter("accord:report", f"{report.report_id}@{report.version}")
    parameter("accord:sop", report.sop)
    for f in rules:
        if f in values and rules[f] in (CapAs.PARAMETER, CapAs.SOURCE):
            parameter(f"accord:{f}", _text(values[f]))
    for f in sorted(report.derived):
        parameter(f"accord:transformed:{f}", report.transforms.get(f, "transformed"))

    # Areas: one per disclosed region (or country), each with the point's circle if any.
    names: list[str] = []
    for _f, value in every(CapAs.AREA):
        names += [_text(v) for v in value] if isinstance(value, list) else [_text(value)]
    point = first(CapAs.CIRCLE)
    ring = circle(point[1], report.transforms.get(point[0])) if point else None
    if ring and not names:
        names = ["location given by the sender"]
    for name in names:
        area = _el(info, "area")
        _el(area, "areaDesc", name)
        if ring:
            _el(area, "circle", ring)
    return _serialize(root)


def cancel_xml(
    *,
    issuer: str,
    report_id: str,
    tlp: str,
    receiver: str,
    sent: datetime,
    cancelled: Sequence[CapRef],
    reason: str,
) -> str:
    """The CAP ``Cancel`` of a retracted report: it references every message of the report
    (``cancelled``); the note is the sender's reason. ``sent`` is when the retraction was
    released to us."""
    if not cancelled:
        raise InputError("a Cancel must reference the alerts it cancels", code="cap.invalid")
    root = _header(
        f"urn:accord:{_token(issuer, 'issuer')}:{_token(report_id, 'report id')}:cancel",
        sender(issuer),
        sent,
        "Cancel",
        tlp,
        _token(receiver, "receiving node"),
    )
    _el(root, "note", f"Retracted by {issuer}: {_text(reason)}")
    _references(root, cancelled)
    return _serialize(root)


def ack_xml(
    *,
    alert_identifier: str,
    alert_sender: str,
    alert_sent: datetime,
    acking_node: str,
    status: str,
    officer: str,
    acked_at: datetime,
    note: str | None = None,
) -> str:
    """The CAP ``Ack`` of an alert (``alert_*`` as the alert's ``<identifier>``,
    ``<sender>``, ``<sent>``) by ``acking_node``: ``Private``, addressed to the alert's
    sender; the note says the status (received | accepted | actioned | rejected), the
    officer and ``note``. It carries no report field, so no withheld field can leak."""
    if status not in ACK_STATUSES:
        raise InputError(
            f"acknowledgement status must be one of {', '.join(ACK_STATUSES)}",
            code="cap.invalid",
        )
    ref = CapRef(
        _token(alert_sender, "alert sender"), _token(alert_identifier, "alert id"), alert_sent
    )
    root = ET.Element(f"{{{CAP_NS}}}alert")
    for tag, value in (
        ("identifier", f"{alert_identifier}:ack:{_token(acking_node, 'node')}:{status}"),
        ("sender", sender(acking_node)),
        ("sent", cap_time(acked_at)),
        ("status", "Actual"),
        ("msgType", "Ack"),
        ("scope", "Private"),
        ("addresses", alert_sender),
    ):
        _el(root, tag, value)
    text = f"{status} by officer {_text(officer)} at {acking_node}"
    _el(root, "note", text + (f": {_text(note)}" if note else ""))
    _references(root, [ref])
    return _serialize(root)


# -- from the inbox ----------------------------------------------------------------------------


def _release(node: Node, item: InboxItem) -> Mapping[str, Any]:
    content = get_inbox(node, item.envelope_id)[1]
    doc: dict[str, Any] = json.loads(content["release"])
    return doc


def inbox_cap(
    node: Node,
    item: InboxItem,
    *,
    fields: Mapping[str, Any],
    derived: Mapping[str, Any],
    retraction: Mapping[str, Any] | None,
) -> str:
    """The CAP message of a received item (``fields``, ``derived`` and ``retraction`` as
    the Officer API's GetInbox verified them): the ``Cancel`` when its report was retracted,
    else the ``Alert``/``Update`` of this version, referencing the earlier versions held."""
    history = report_versions(node, item.peer, item.report_id)
    releases = {i.envelope_id: _release(node, i) for i in history}
    versions = [i for i in history if i.kind == "report"]
    refs = {
        i.version: CapRef(
            sender(i.issuer),
            identifier(i.issuer, i.report_id, i.version),
            parse_time(releases[i.envelope_id]["released_at"], field="released_at"),
        )
        for i in versions
    }
    receiver = str(releases[item.envelope_id]["to"])
    if item.retracted:
        if retraction is None or not versions:
            raise InputError(
                f"no version of the retracted report {item.report_id} is held to cancel",
                code="cap.nothing_to_cancel",
            )
        withdrawn = next(i for i in reversed(history) if i.kind != "report")
        return cancel_xml(
            issuer=versions[-1].issuer,
            report_id=item.report_id,
            tlp=versions[-1].tlp,
            receiver=receiver,
            sent=parse_time(releases[withdrawn.envelope_id]["released_at"], field="released_at"),
            cancelled=[refs[v] for v in sorted(refs)],
            reason=str(retraction.get("reason", "")),
        )
    return alert_xml(
        CapReport(
            issuer=item.issuer,
            report_id=item.report_id,
            version=item.version,
            sop=item.sop,
            tlp=item.tlp,
            released_at=refs[item.version].sent,
            receiver=receiver,
            fields=fields,
            derived=derived,
            transforms=item.transformed,
        ),
        earlier=[refs[v] for v in sorted(refs) if v < item.version],
    )


def ack_for_item(node: Node, item: InboxItem, ack: Acknowledgement) -> str:
    """The CAP ``Ack`` of our acknowledgement of a received item, referencing its alert."""
    release = _release(node, item)
    return ack_xml(
        alert_identifier=identifier(item.issuer, item.report_id, item.version),
        alert_sender=sender(item.issuer),
        alert_sent=parse_time(release["released_at"], field="released_at"),
        acking_node=ack.sender,
        status=ack.status,
        officer=ack.officer,
        acked_at=parse_time(ack.acked_at, field="acked_at"),
        note=ack.note,
    )
