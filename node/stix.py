"""STIX 2.1 export of a received report, for analysts who load it into MISP or OpenCTI.

The bundle holds the origin as an ``identity``, a ``report`` whose description lists the
disclosed (and, marked, the transformed) fields, a ``location`` when coordinates were
shared, and the report's TLP as the OASIS TLP 2.0 marking definition.
"""

from __future__ import annotations

import json
from typing import Any

import stix2

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


def tlp2_marking(tlp: str) -> stix2.v21.MarkingDefinition:
    return stix2.v21.MarkingDefinition(
        id=TLP2_IDS[tlp],
        created="2022-10-01T00:00:00.000Z",
        created_by_ref=TLP2_CREATOR,
        name=f"TLP:{tlp.upper()}",
        extensions={TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": tlp}},
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def to_stix_bundle(item: Any, body: dict[str, Any]) -> str:
    """``item``: the inbox item (peer, report id, version, received time); ``body``: its
    verified fields and derived values."""
    marking = tlp2_marking(body["tlp"])
    origin = stix2.v21.Identity(
        name=f"Accord partner {item.peer}",
        identity_class="organization",
        object_marking_refs=[marking.id],
    )
    fields: dict[str, Any] = dict(body["fields"])
    derived: dict[str, Any] = dict(body.get("derived", {}))
    objects: list[Any] = [origin]
    location = fields.get("location") or derived.get("location")
    if isinstance(location, dict) and {"lat", "lon"} <= set(location):
        loc = stix2.v21.Location(
            latitude=float(location["lat"]),
            longitude=float(location["lon"]),
            region=None,
            created_by_ref=origin.id,
            object_marking_refs=[marking.id],
        )
        objects.append(loc)
    lines = [f"{k}: {_text(v)}" for k, v in sorted(fields.items())]
    lines += [f"{k} (transformed by the sender): {_text(v)}" for k, v in sorted(derived.items())]
    published = item.received_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    report = stix2.v21.Report(
        name=str(fields.get("title") or f"{body['sop']} report {item.report_id}"),
        description="\n".join(lines),
        published=published,
        report_types=["threat-report"],
        object_refs=[o.id for o in objects],
        created_by_ref=origin.id,
        object_marking_refs=[marking.id],
        external_references=[
            {
                "source_name": "accord",
                "external_id": f"{item.report_id}@{item.version}",
                "description": f"{body['sop']} received from {item.peer}",
            }
        ],
    )
    bundle = stix2.v21.Bundle(objects=[marking, *objects, report])
    return str(bundle.serialize(pretty=True))
