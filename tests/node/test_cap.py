"""The CAP 1.2 mapping (node/services/cap.py): every message it writes (Alert, Update, Cancel, Ack,
each TLP's scope, with and without a location, with withheld fields, with hostile text) is
valid under the OASIS CAP 1.2 schema as libxml2 reads it (tests/vectors/cap/), and the
mapping is asserted value by value. Through the Officer API, the item a partner sent comes
out as the same Alert on every export, then as a Cancel once the partner retracts it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from exchange.errors import InputError
from node.home import Node
from node.rpc._pb.accord.v1 import officer_pb2
from node.rpc.officer_service import ExchangeOfficerService
from node.services import outbox
from node.services.cap import (
    CAP_MAP,
    CapRef,
    CapReport,
    ack_xml,
    alert_xml,
    cancel_xml,
    circle,
    identifier,
    urgency,
)
from node.services.inbox import inbox_after, list_inbox
from node.services.schemas import registry
from tests.builders import MARKER, valid_report
from tests.conftest import PASSPHRASE, Result, snapshot
from tests.feed.world import RICH, alert, deliver, make_pair, newest, now, send

Accord = Callable[..., Result]
XSD = Path(__file__).parent.parent / "vectors" / "cap" / "CAP-v1.2.xsd"
NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
SENT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
RID = "0193f2c5-7a1b-7c3d-8e4f-0123456789ab"


@pytest.fixture(scope="module")
def schema() -> Any:
    return etree.XMLSchema(etree.parse(str(XSD)))


def valid(schema: Any, text: str) -> Any:
    """The parsed document, after asserting the OASIS schema accepts it."""
    doc = etree.fromstring(text.encode("ascii"))
    assert schema.validate(doc), schema.error_log
    return doc


def one(doc: Any, path: str) -> str:
    [found] = doc.xpath(path, namespaces=NS)
    return str(found)


def report(**over: Any) -> CapReport:
    base: dict[str, Any] = {
        "issuer": "pk-moi",
        "report_id": RID,
        "version": 1,
        "sop": "threat-alert@1",
        "tlp": "amber",
        "released_at": SENT,
        "receiver": "cn-mps",
        "fields": {
            "title": "IED threat on the port road",
            "threat_type": "ied",
            "severity": "high",
            "region": "Balochistan",
            "time_window": {"start": "2026-12-01T12:00:00Z", "end": "2026-12-07T23:59:59+05:00"},
            "summary": "Convoy route threatened",
            "recommended_actions": ["Suspend road moves", "Vary departure times"],
        },
        "derived": {"location": {"lat": 25.1, "lon": 62.3}},
        "transforms": {"location": "round:1"},
    }
    return CapReport(**(base | over))


# -- the schema can fail -----------------------------------------------------------------------


def test_the_schema_rejects_a_broken_document(schema: Any) -> None:
    good = alert_xml(report())
    valid(schema, good)
    for broken in (
        good.replace("<severity>Severe</severity>", "<severity>High</severity>"),
        good.replace("2026-12-01T10:00:00+00:00", "2026-12-01T10:00:00Z"),  # CAP forbids Z
        good.replace("<status>Actual</status>", ""),
        good.replace("<category>Security</category>", "<category>Intel</category>"),
    ):
        assert broken != good
        assert not schema.validate(etree.fromstring(broken.encode())), broken


# -- Alert: the mapping, value by value --------------------------------------------------------


def test_an_alert_maps_each_field(schema: Any) -> None:
    doc = valid(schema, alert_xml(report()))
    assert one(doc, "/cap:alert/cap:identifier/text()") == f"urn:accord:pk-moi:{RID}:1"
    assert one(doc, "/cap:alert/cap:sender/text()") == "pk-moi.accord"
    assert one(doc, "/cap:alert/cap:sent/text()") == "2026-12-01T10:00:00+00:00"
    assert one(doc, "/cap:alert/cap:status/text()") == "Actual"
    assert one(doc, "/cap:alert/cap:msgType/text()") == "Alert"
    assert one(doc, "/cap:alert/cap:scope/text()") == "Restricted"
    assert one(doc, "/cap:alert/cap:restriction/text()").startswith("TLP:AMBER: ")
    assert one(doc, "/cap:alert/cap:code/text()") == "TLP:AMBER"
    assert not doc.xpath("/cap:alert/cap:references | /cap:alert/cap:addresses", namespaces=NS)
    info = "/cap:alert/cap:info/"
    assert one(doc, info + "cap:category/text()") == "Security"
    assert one(doc, info + "cap:event/text()") == "IED threat on the port road"
    assert one(doc, info + "cap:headline/text()") == "IED threat on the port road"
    assert one(doc, info + "cap:urgency/text()") == "Future"  # opens 2 h after sent
    assert one(doc, info + "cap:severity/text()") == "Severe"
    assert one(doc, info + "cap:certainty/text()") == "Unknown"  # the source was withheld
    assert one(doc, info + "cap:eventCode/cap:valueName/text()") == "accord:threat_type"
    assert one(doc, info + "cap:eventCode/cap:value/text()") == "ied"
    assert one(doc, info + "cap:onset/text()") == "2026-12-01T12:00:00+00:00"
    assert one(doc, info + "cap:expires/text()") == "2026-12-07T18:59:59+00:00"
    assert one(doc, info + "cap:senderName/text()") == "Accord partner pk-moi"
    assert one(doc, info + "cap:description/text()") == "Convoy route threatened"
    assert one(doc, info + "cap:instruction/text()") == "Suspend road moves\nVary departure times"
    params = {
        p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
        for p in doc.xpath(info + "cap:parameter", namespaces=NS)
    }
    assert params == {
        "accord:report": f"{RID}@1",
        "accord:sop": "threat-alert@1",
        "accord:transformed:location": "round:1",
    }
    [area] = doc.xpath(info + "cap:area", namespaces=NS)
    assert area.findtext("cap:areaDesc", namespaces=NS) == "Balochistan"
    assert area.findtext("cap:circle", namespaces=NS) == "25.1,62.3 7.9"  # the rounding cell


def test_every_sop_field_is_mapped_once() -> None:
    reg = registry()
    for sop, table in CAP_MAP.items():
        assert set(table) == set(reg.labels(sop)), sop


@pytest.mark.parametrize(
    ("severity", "cap"),
    [("low", "Minor"), ("moderate", "Moderate"), ("high", "Severe"), ("critical", "Extreme")],
)
def test_severity(schema: Any, severity: str, cap: str) -> None:
    fields = {**report().fields, "severity": severity}
    doc = valid(schema, alert_xml(report(fields=fields)))
    assert one(doc, "//cap:severity/text()") == cap


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-12-01T09:00:00Z", "2026-12-02T00:00:00Z", "Immediate"),  # open at sent
        ("2026-12-01T10:59:00Z", "2026-12-02T00:00:00Z", "Expected"),  # within the hour
        ("2026-12-01T11:00:01Z", "2026-12-02T00:00:00Z", "Future"),
        ("2026-11-01T00:00:00Z", "2026-12-01T09:59:59Z", "Past"),
    ],
)
def test_urgency_from_the_window(schema: Any, start: str, end: str, expected: str) -> None:
    fields = {**report().fields, "time_window": {"start": start, "end": end}}
    doc = valid(schema, alert_xml(report(fields=fields)))
    assert one(doc, "//cap:urgency/text()") == expected
    assert urgency(None, None, SENT) == "Unknown"


@pytest.mark.parametrize(
    ("credibility", "certainty"),
    [
        (1, "Observed"),
        (2, "Likely"),
        (3, "Possible"),
        (4, "Unlikely"),
        (5, "Unlikely"),
        (6, "Unknown"),
    ],
)
def test_certainty_from_a_released_source(schema: Any, credibility: int, certainty: str) -> None:
    source = {"kind": "osint", "reliability": "C", "credibility": credibility}
    doc = valid(schema, alert_xml(report(fields={**report().fields, "source": source})))
    assert one(doc, "//cap:certainty/text()") == certainty
    assert json.loads(one(doc, "//cap:parameter[cap:valueName='accord:source']/cap:value/text()"))


def test_minimal_fields_take_cap_unknowns_and_omit_the_rest(schema: Any) -> None:
    """Only the required fields were released (everything operational withheld): CAP's
    required urgency/severity/certainty become Unknown where nothing says otherwise, and
    the optional elements are absent rather than empty."""
    fields = {"threat_type": "cyber", "region": "Sindh"}
    doc = valid(schema, alert_xml(report(fields=fields, derived={}, transforms={})))
    assert one(doc, "//cap:event/text()") == "cyber"
    assert (one(doc, "//cap:urgency/text()"), one(doc, "//cap:severity/text()")) == (
        "Unknown",
        "Unknown",
    )
    for absent in ("headline", "description", "instruction", "onset", "expires", "circle"):
        assert not doc.xpath(f"//cap:{absent}", namespaces=NS), absent
    assert one(doc, "//cap:areaDesc/text()") == "Sindh"


@pytest.mark.parametrize(
    ("point", "transform", "ring"),
    [
        ({"lat": 25.1264, "lon": 62.3225}, None, "25.1264,62.3225 0.0"),  # disclosed as is
        ({"lat": 25, "lon": 62}, "coarsen:region", "25.0,62.0 78.8"),
        ({"lat": 0.00001, "lon": -180}, "round:5", "0.00001,-180.0 0.1"),
        ({"lat": 25.1, "lon": 62.3}, "pseudonym", None),  # precision unknown: no circle
        ("ps-3f2a", "pseudonym", None),
        ({"lat": 91, "lon": 0}, None, None),
    ],
)
def test_circle(point: Any, transform: str | None, ring: str | None) -> None:
    assert circle(point, transform) == ring


def test_a_location_without_region_still_gets_an_area(schema: Any) -> None:
    fields = {"title": "x-ray", "location": {"lat": 1.5, "lon": 2.5}}
    doc = valid(schema, alert_xml(report(fields=fields, derived={}, transforms={})))
    assert one(doc, "//cap:circle/text()") == "1.5,2.5 0.0"
    assert one(doc, "//cap:areaDesc/text()") == "location given by the sender"


def test_an_update_references_the_earlier_versions(schema: Any) -> None:
    v1 = CapRef("pk-moi.accord", identifier("pk-moi", RID, 1), SENT)
    v2 = CapRef("pk-moi.accord", identifier("pk-moi", RID, 2), SENT + timedelta(hours=1))
    doc = valid(schema, alert_xml(report(version=3), earlier=[v1, v2]))
    assert one(doc, "//cap:msgType/text()") == "Update"
    assert one(doc, "//cap:identifier/text()") == f"urn:accord:pk-moi:{RID}:3"
    assert one(doc, "//cap:references/text()") == (
        f"pk-moi.accord,urn:accord:pk-moi:{RID}:1,2026-12-01T10:00:00+00:00 "
        f"pk-moi.accord,urn:accord:pk-moi:{RID}:2,2026-12-01T11:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("tlp", "scope", "restriction", "addresses"),
    [
        ("clear", "Public", None, None),
        ("green", "Restricted", "TLP:GREEN: ", None),
        ("amber", "Restricted", "TLP:AMBER: ", None),
        ("amber+strict", "Restricted", "TLP:AMBER+STRICT: ", None),
        ("red", "Private", None, "cn-mps"),
    ],
)
def test_tlp_becomes_scope(
    schema: Any, tlp: str, scope: str, restriction: str | None, addresses: str | None
) -> None:
    cancelled = [CapRef("pk-moi.accord", identifier("pk-moi", RID, 1), SENT)]
    for text in (
        alert_xml(report(tlp=tlp)),
        cancel_xml(
            issuer="pk-moi",
            report_id=RID,
            tlp=tlp,
            receiver="cn-mps",
            sent=SENT,
            cancelled=cancelled,
            reason="wrong",
        ),
    ):
        doc = valid(schema, text)
        assert one(doc, "/cap:alert/cap:scope/text()") == scope
        assert one(doc, "/cap:alert/cap:code/text()") == f"TLP:{tlp.upper()}"
        got = doc.xpath("/cap:alert/cap:restriction/text()", namespaces=NS)
        assert got[0].startswith(restriction) if restriction else got == [], got
        got = doc.xpath("/cap:alert/cap:addresses/text()", namespaces=NS)
        assert got == ([addresses] if addresses else [])


@pytest.mark.threat("B03")
def test_hostile_text_is_escaped_and_stays_valid(schema: Any) -> None:
    hostile = "</headline><x>&amp;\"'<![CDATA[\r\x00\x07\x1b[2J\u202etxt.exe\u2028\ufffe"
    fields = {
        "title": hostile,
        "region": hostile,
        "summary": hostile,
        "recommended_actions": [hostile, "]]>"],
        "site": hostile,
        "indicators": [hostile],
    }
    text = alert_xml(report(fields=fields))
    assert text.isascii() and "\r" not in text and "\x1b" not in text and "\x00" not in text
    doc = valid(schema, text)
    # What XML can carry comes back exactly; what it cannot (C0 controls, U+FFFE) is U+FFFD.
    back = "</headline><x>&amp;\"'<![CDATA[\r\ufffd\ufffd\ufffd[2J\u202etxt.exe\u2028\ufffd"
    assert one(doc, "//cap:headline/text()") == back
    assert one(doc, "//cap:areaDesc/text()") == back
    assert one(doc, "//cap:instruction/text()") == back + "\n]]>"
    assert one(doc, "//cap:parameter[cap:valueName='accord:site']/cap:value/text()") == back
    reason = cancel_xml(
        issuer="pk-moi",
        report_id=RID,
        tlp="amber",
        receiver="cn-mps",
        sent=SENT,
        cancelled=[CapRef("pk-moi.accord", identifier("pk-moi", RID, 1), SENT)],
        reason=hostile,
    )
    assert one(valid(schema, reason), "//cap:note/text()") == f"Retracted by pk-moi: {back}"


def test_values_cap_cannot_identify_by_are_refused() -> None:
    for bad in ("has space", "a,b", "a<b", "a&b"):
        with pytest.raises(InputError) as e:
            alert_xml(report(report_id=bad))
        assert e.value.code == "cap.invalid"
    with pytest.raises(InputError):
        alert_xml(report(tlp="white"))
    with pytest.raises(InputError):
        alert_xml(report(released_at=datetime(2026, 12, 1)))  # naive: no offset


# -- Cancel and Ack ----------------------------------------------------------------------------


def test_a_cancel_references_every_version(schema: Any) -> None:
    refs = [
        CapRef("pk-moi.accord", identifier("pk-moi", RID, v), SENT + timedelta(minutes=v))
        for v in (1, 2)
    ]
    doc = valid(
        schema,
        cancel_xml(
            issuer="pk-moi",
            report_id=RID,
            tlp="amber",
            receiver="cn-mps",
            sent=SENT + timedelta(hours=2),
            cancelled=refs,
            reason="erroneous",
        ),
    )
    assert one(doc, "//cap:msgType/text()") == "Cancel"
    assert one(doc, "//cap:identifier/text()") == f"urn:accord:pk-moi:{RID}:cancel"
    assert one(doc, "//cap:sent/text()") == "2026-12-01T12:00:00+00:00"
    assert one(doc, "//cap:note/text()") == "Retracted by pk-moi: erroneous"
    assert one(doc, "//cap:references/text()") == " ".join(r.text() for r in refs)
    assert not doc.xpath("//cap:info", namespaces=NS)
    with pytest.raises(InputError):
        cancel_xml(
            issuer="pk-moi",
            report_id=RID,
            tlp="amber",
            receiver="cn-mps",
            sent=SENT,
            cancelled=[],
            reason="x",
        )


@pytest.mark.parametrize("status", ["received", "accepted", "actioned", "rejected"])
def test_an_ack_references_the_alert(schema: Any, status: str) -> None:
    alert_id = identifier("pk-moi", RID, 2)
    text = ack_xml(
        alert_identifier=alert_id,
        alert_sender="pk-moi.accord",
        alert_sent=SENT,
        acking_node="cn-mps",
        status=status,
        officer='Li <duty> & "Wei"',
        acked_at=SENT + timedelta(minutes=7),
        note="road moves suspended\r\x01",
    )
    doc = valid(schema, text)
    assert one(doc, "//cap:msgType/text()") == "Ack"
    assert one(doc, "//cap:identifier/text()") == f"{alert_id}:ack:cn-mps:{status}"
    assert one(doc, "//cap:sender/text()") == "cn-mps.accord"
    assert one(doc, "//cap:sent/text()") == "2026-12-01T10:07:00+00:00"
    assert one(doc, "//cap:scope/text()") == "Private"
    assert one(doc, "//cap:addresses/text()") == "pk-moi.accord"
    assert one(doc, "//cap:references/text()") == (
        f"pk-moi.accord,{alert_id},2026-12-01T10:00:00+00:00"
    )
    assert one(doc, "//cap:note/text()") == (
        f'{status} by officer Li <duty> & "Wei" at cn-mps: road moves suspended\r\ufffd'
    )
    assert not doc.xpath("//cap:info", namespaces=NS)  # no report field, withheld or not
    without_note = ack_xml(
        alert_identifier=alert_id,
        alert_sender="pk-moi.accord",
        alert_sent=SENT,
        acking_node="cn-mps",
        status=status,
        officer="Li",
        acked_at=SENT,
    )
    assert (
        one(valid(schema, without_note), "//cap:note/text()") == f"{status} by officer Li at cn-mps"
    )


def test_an_ack_status_outside_the_four_is_refused() -> None:
    with pytest.raises(InputError) as e:
        ack_xml(
            alert_identifier="urn:accord:pk-moi:x:1",
            alert_sender="pk-moi.accord",
            alert_sent=SENT,
            acking_node="cn-mps",
            status="ignored",
            officer="Li",
            acked_at=SENT,
        )
    assert e.value.code == "cap.invalid"


# -- through the Officer API, from what a partner really sent ----------------------------------


@pytest.fixture
def nodes(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    pk_dir, cn_dir = make_pair(make_node, accord, tmp_path, onward=False)
    pk, cn = Node.open(pk_dir, lambda: PASSPHRASE), Node.open(cn_dir, lambda: PASSPHRASE)
    yield pk, cn
    pk.close()
    cn.close()


def _body(cn: Node, envelope_id: str) -> dict[str, Any]:
    service = ExchangeOfficerService(cn, None, now=lambda: now() + timedelta(minutes=1))
    answer = asyncio.run(
        service.GetInbox(officer_pb2.GetInboxRequest(envelope_id=envelope_id), None)
    )
    body: dict[str, Any] = json.loads(answer.report)
    return body


def test_received_item_exports_as_alert_update_then_cancel(
    schema: Any, nodes: tuple[Node, Node]
) -> None:
    pk, cn = nodes
    t = now()
    [report_id] = send(pk, cn, [RICH], t)
    v1 = newest(cn, report_id)
    before = snapshot(cn.data_dir)
    first, again = _body(cn, v1)["cap"], _body(cn, v1)["cap"]
    assert first == again  # stable: the same bytes on every export
    assert snapshot(cn.data_dir) == before  # exporting changed nothing
    doc = valid(schema, first)
    assert one(doc, "//cap:identifier/text()") == f"urn:accord:pk-moi:{report_id}:1"
    assert one(doc, "//cap:msgType/text()") == "Alert"
    assert one(doc, "//cap:sent/text()") == t.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert one(doc, "//cap:event/text()") == f"IED threat {MARKER}"  # title is operational
    assert one(doc, "//cap:severity/text()") == "Severe"
    assert one(doc, "//cap:certainty/text()") == "Unknown"  # the source was withheld
    assert one(doc, "//cap:circle/text()") == "25.1,62.3 7.9"  # round:1, never the exact point
    assert one(doc, "//cap:areaDesc/text()") == "Balochistan"
    assert "25.1264" not in first and "humint" not in first and "reliability" not in first

    outbox.amend(pk, report_id, valid_report(alert(severity="critical")), t + timedelta(seconds=1))
    deliver(pk, cn, t + timedelta(seconds=1))
    v2 = newest(cn, report_id)
    doc = valid(schema, _body(cn, v2)["cap"])
    assert one(doc, "//cap:msgType/text()") == "Update"
    assert one(doc, "//cap:severity/text()") == "Extreme"
    assert one(doc, "//cap:references/text()") == (
        f"pk-moi.accord,urn:accord:pk-moi:{report_id}:1,{t.strftime('%Y-%m-%dT%H:%M:%S+00:00')}"
    )

    outbox.retract(pk, report_id, "erroneous", t + timedelta(seconds=2))
    deliver(pk, cn, t + timedelta(seconds=2))
    retraction = next(
        i.envelope_id
        for i in inbox_after(cn, "pk-moi", 0, 100)
        if i.kind == "retraction" and i.report_id == report_id
    )
    cancels = {_body(cn, e)["cap"] for e in (v1, v2, retraction)}
    [cancel] = cancels  # whichever item of the retracted report is exported
    doc = valid(schema, cancel)
    assert one(doc, "//cap:msgType/text()") == "Cancel"
    assert one(doc, "//cap:note/text()") == "Retracted by pk-moi: erroneous"
    refs = one(doc, "//cap:references/text()").split(" ")
    assert [r.split(",")[1] for r in refs] == [
        f"urn:accord:pk-moi:{report_id}:1",
        f"urn:accord:pk-moi:{report_id}:2",
    ]
    assert one(doc, "//cap:scope/text()") == "Restricted"
    assert list_inbox(cn)


@pytest.mark.parametrize("tlp", ["clear", "green", "amber", "amber+strict", "red"])
def test_every_tlp_through_the_officer_api(schema: Any, nodes: tuple[Node, Node], tlp: str) -> None:
    pk, cn = nodes
    [report_id] = send(pk, cn, [alert(tlp)], now())
    doc = valid(schema, _body(cn, newest(cn, report_id))["cap"])
    assert one(doc, "//cap:code/text()") == f"TLP:{tlp.upper()}"
    if tlp == "red":
        assert one(doc, "//cap:addresses/text()") == "cn-mps"
