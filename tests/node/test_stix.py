"""The STIX 2.1 export (``accord inbox export --format stix``) checked from outside: the
``stix2`` library parses the bundle strictly (no custom content allowed), the TLP marking is
the OASIS TLP 2.0 marking definition (ids copied from the OASIS publication, not from our
code), and the origin is the identity that created the report."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stix2
from google.protobuf.timestamp_pb2 import Timestamp

from node._pb.accord.v1 import officer_pb2
from node.stix import to_stix_bundle

# OASIS CTI TLP 2.0 marking definitions for STIX 2.1.
OASIS_TLP2 = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"


def _item(tlp: str) -> officer_pb2.InboxItem:
    received = Timestamp()
    received.FromJsonString("2026-11-26T09:30:00Z")
    return officer_pb2.InboxItem(
        peer="pk-moi",
        envelope_id="0193f2c5-0000-7000-8000-000000000001",
        report_id="0193f2c4-0000-7000-8000-000000000001",
        version=2,
        sop="threat-alert@1",
        tlp=tlp,
        received_at=received,
    )


def _body(tlp: str, *, location: bool = True) -> dict[str, Any]:
    return {
        "sop": "threat-alert@1",
        "tlp": tlp,
        "fields": {
            "title": "IED threat to the Gwadar port convoy route",
            "severity": "high",
            "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
        },
        "derived": {"location": {"lat": 25.1, "lon": 62.3}} if location else {},
    }


def _parse(text: str) -> tuple[stix2.v21.Bundle, dict[str, list[Any]]]:
    bundle = stix2.parse(text, allow_custom=False)
    assert isinstance(bundle, stix2.v21.Bundle)
    by_type: dict[str, list[Any]] = {}
    for obj in bundle.objects:
        by_type.setdefault(obj.type, []).append(obj)
    return bundle, by_type


@pytest.mark.parametrize("tlp", list(OASIS_TLP2))
def test_bundle_parses_strictly_with_the_tlp2_marking(tlp: str) -> None:
    _bundle, objs = _parse(to_stix_bundle(_item(tlp), _body(tlp)))
    [marking] = objs["marking-definition"]
    assert marking.id == OASIS_TLP2[tlp]
    assert marking.name == f"TLP:{tlp.upper()}"
    assert marking.extensions[TLP2_EXTENSION]["tlp_2_0"] == tlp
    for obj in objs["identity"] + objs["report"] + objs.get("location", []):
        assert obj.object_marking_refs == [OASIS_TLP2[tlp]]


def test_origin_is_the_identity_behind_the_report() -> None:
    _bundle, objs = _parse(to_stix_bundle(_item("amber"), _body("amber")))
    [origin] = objs["identity"]
    [report] = objs["report"]
    [location] = objs["location"]
    assert "pk-moi" in origin.name and origin.identity_class == "organization"
    assert report.created_by_ref == origin.id and location.created_by_ref == origin.id
    assert set(report.object_refs) == {origin.id, location.id}
    assert report.name == "IED threat to the Gwadar port convoy route"
    assert report.report_types == ["threat-report"]
    assert report.published.strftime("%Y-%m-%dT%H:%M:%SZ") == "2026-11-26T09:30:00Z"
    [ref] = report.external_references
    assert ref.source_name == "accord" and ref.external_id.endswith("@2")
    # Disclosed fields are listed; the sender's transformed values are marked as such.
    assert "severity: high" in report.description
    assert "location (transformed by the sender)" in report.description
    assert (location.latitude, location.longitude) == (25.1, 62.3)


def test_no_location_object_without_coordinates() -> None:
    text = to_stix_bundle(_item("green"), _body("green", location=False))
    _bundle, objs = _parse(text)
    assert "location" not in objs
    assert json.loads(text)["type"] == "bundle"
