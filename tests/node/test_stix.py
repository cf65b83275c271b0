"""The STIX 2.1 mapping (node/services/stix.py) checked with the consumers' own code: ``stix2``
parses every bundle strictly (no custom content), ``stix2-validator`` passes it, and
``misp-stix`` (MISP's own converter) turns it into a MISP event with attributes. The ids
are stable: the same item exported twice, or a later version, keeps one id per report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import stix2
from stix2validator import ValidationOptions, validate_string

from node.home import Node
from node.services import outbox
from node.services.inbox import list_inbox
from node.services.schemas import registry
from node.services.stix import FIELD_MAP, TLP2_IDS, indicator_pattern, stix_source, to_stix_bundle
from tests.builders import MARKER, valid_report
from tests.conftest import PASSPHRASE, Result
from tests.feed.world import RICH, alert, deliver, make_pair, newest, now, send

Accord = Callable[..., Result]

# OASIS CTI TLP 2.0 marking definitions for STIX 2.1 (copied from the OASIS publication).
OASIS_TLP2 = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


@pytest.fixture
def nodes(
    make_node: Callable[..., Path], accord: Accord, tmp_path: Path
) -> Iterator[tuple[Node, Node]]:
    pk_dir, cn_dir = make_pair(make_node, accord, tmp_path, onward=False)
    pk, cn = Node.open(pk_dir, lambda: PASSPHRASE), Node.open(cn_dir, lambda: PASSPHRASE)
    yield pk, cn
    pk.close()
    cn.close()


def _export(cn: Node, envelope_id: str) -> str:
    return to_stix_bundle(stix_source(cn, envelope_id, now() + timedelta(minutes=1)))


def _by_type(text: str) -> dict[str, list[Any]]:
    bundle = stix2.parse(text, allow_custom=False)
    assert isinstance(bundle, stix2.v21.Bundle)
    out: dict[str, list[Any]] = {}
    for obj in bundle.objects:
        out.setdefault(obj.type, []).append(obj)
    return out


def _valid(text: str) -> None:
    result = validate_string(text, ValidationOptions(version="2.1"))
    assert result.is_valid, [str(e) for o in result.object_results for e in o.errors]


def test_every_sop_field_is_mapped_once() -> None:
    reg = registry()
    for sop, table in FIELD_MAP.items():
        assert set(table) == set(reg.labels(sop)), sop
    assert set(FIELD_MAP) == {
        n for n in ("threat-alert@1", "incident-report@1", "travel-advisory@1")
    }


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("203.0.113.7", "[ipv4-addr:value = '203.0.113.7']"),
        ("2001:db8::1", "[ipv6-addr:value = '2001:db8::1']"),
        ("Evil-C2.example", "[domain-name:value = 'evil-c2.example']"),
        ("https://x.example/a?b=1", "[url:value = 'https://x.example/a?b=1']"),
        ("https://x.example/a'b", None),
        ("ops@evil.example", "[email-addr:value = 'ops@evil.example']"),
        (
            "d41d8cd98f00b204e9800998ecf8427e",
            "[file:hashes.'MD5' = 'd41d8cd98f00b204e9800998ecf8427e']",
        ),
        ("white pickup near the gate", None),
        ("a.b", None),
    ],
)
def test_indicator_patterns_only_for_observables(text: str, pattern: str | None) -> None:
    assert indicator_pattern(text) == pattern


def test_same_item_exported_twice_is_identical(nodes: tuple[Node, Node]) -> None:
    pk, cn = nodes
    [report_id] = send(pk, cn, [RICH], now())
    envelope_id = newest(cn, report_id)
    first, second = _export(cn, envelope_id), _export(cn, envelope_id)
    assert first == second
    objs = _by_type(first)
    _valid(first)
    [report] = objs["report"]
    [marking] = objs["marking-definition"]
    [origin] = objs["identity"]
    assert marking.id == OASIS_TLP2["amber"] == TLP2_IDS["amber"]
    assert origin.name == "Accord partner pk-moi" and report.created_by_ref == origin.id
    assert report.created == report.modified == report.published
    assert "sop:threat-alert@1" in report.labels
    assert {"threat_type:ied", "severity:high"} <= set(report.labels)
    refs = {r.source_name: r.external_id for r in report.external_references}
    assert refs["accord-envelope"] == envelope_id and refs["accord-partner"] == "pk-moi"
    assert refs["accord-author-signature"].startswith("sha256:")
    assert refs["accord"] == f"{report_id}@1"
    patterns = sorted(i.pattern for i in objs["indicator"])
    assert patterns == [
        "[domain-name:value = 'evil-c2.example']",
        "[ipv4-addr:value = '203.0.113.7']",
    ]
    for ind in objs["indicator"]:
        assert ind.valid_from.year == 2026 and ind.valid_until > ind.valid_from
    locations = objs["location"]
    site = next(loc for loc in locations if "latitude" in loc)
    assert (site.latitude, site.longitude) == (25.1, 62.3)  # the transformed value only
    assert site.name.startswith("Convoy yard") and site.administrative_area == "Balochistan"
    assert any(loc.get("region") == "Balochistan" for loc in locations)
    assert [c.name for c in objs["course-of-action"]] == ["Avoid the east gate"]
    assert "white pickup near the east gate" in report.description
    for group in objs.values():
        for obj in group:
            if obj.type != "marking-definition":
                assert obj.get("object_marking_refs", [marking.id]) == [marking.id]
    # Withheld: the source (sensitive-source) appears nowhere.
    assert "humint" not in first and "reliability" not in first


def test_an_amendment_is_a_new_version_and_a_retraction_revokes(nodes: tuple[Node, Node]) -> None:
    pk, cn = nodes
    t = now()
    [report_id] = send(pk, cn, [RICH], t)
    v1 = newest(cn, report_id)
    outbox.amend(
        pk,
        report_id,
        valid_report(alert(severity="critical", indicators=RICH["fields"]["indicators"])),
        t,
    )
    deliver(pk, cn, t)
    v2 = newest(cn, report_id)
    assert v2 != v1
    one, two = _by_type(_export(cn, v1)), _by_type(_export(cn, v2))
    [r1], [r2] = one["report"], two["report"]
    assert r1.id == r2.id and r1.created == r2.created and r2.modified > r1.modified
    assert {i.id for i in one["indicator"]} == {i.id for i in two["indicator"]}
    assert "severity:critical" in r2.labels
    outbox.retract(pk, report_id, "erroneous", t + timedelta(seconds=1))
    deliver(pk, cn, t + timedelta(seconds=1))
    retraction = next(
        i.envelope_id for i in _all_items(cn) if i.kind == "retraction" and i.report_id == report_id
    )
    revoked = _export(cn, retraction)
    _valid(revoked)
    objs = _by_type(revoked)
    [r3] = objs["report"]
    assert r3.id == r1.id and r3.revoked is True and r3.modified > r2.modified
    assert all(o.revoked for o in objs["indicator"])
    # The latest version of a retracted report exports as revoked too; older ones do not.
    assert _export(cn, v2) == revoked.replace(_bundle_id(revoked), _bundle_id(_export(cn, v2)))
    assert "revoked" not in json.loads(_export(cn, v1))["objects"][-1]


def _bundle_id(text: str) -> str:
    return str(json.loads(text)["id"])


def _all_items(cn: Node) -> list[Any]:
    from node.services.inbox import inbox_after

    return inbox_after(cn, "pk-moi", 0, 1000)


@pytest.mark.parametrize("tlp", list(OASIS_TLP2))
def test_every_tlp_parses_strictly_and_validates(nodes: tuple[Node, Node], tlp: str) -> None:
    pk, cn = nodes
    [report_id] = send(pk, cn, [alert(tlp)], now())
    text = _export(cn, newest(cn, report_id))
    _valid(text)
    objs = _by_type(text)
    [marking] = objs["marking-definition"]
    assert marking.id == OASIS_TLP2[tlp] and marking.name == f"TLP:{tlp.upper()}"


def test_misp_stix_builds_an_event_with_attributes(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    from misp_stix_converter import ExternalSTIX2toMISPParser  # MISP's own importer

    pk, cn = nodes
    [report_id] = send(pk, cn, [RICH], now())
    bundle = stix2.parse(_export(cn, newest(cn, report_id)), allow_custom=True)
    parser = ExternalSTIX2toMISPParser()
    parser.load_stix_bundle(bundle)
    parser.parse_stix_bundle(single_event=True)
    event = parser.misp_event
    assert event.info == "IED threat " + MARKER
    values = {a.value for a in event.attributes} | {
        a.value for o in event.objects for a in o.attributes
    }
    assert "203.0.113.7" in values and "evil-c2.example" in values
    types = {a.type for a in event.attributes} | {
        a.type for o in event.objects for a in o.attributes
    }
    assert {"ip-dst", "domain"} & types or {"ip-src", "domain"} & types, types
    tags = {t.name for t in event.tags}
    assert any("amber" in t.lower() for t in tags), tags
    assert list_inbox(cn)  # the export changed nothing in the inbox
