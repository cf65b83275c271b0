"""Sealed reports at rest and the report/schema commands, with stored-state checks."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import StoreError
from exchange.events import parse_event_unverified
from exchange.sdjwt import PresentationLimits, verify_presentation
from exchange.sop import check_report_document
from node.home import init_node
from node.services.reports import load_sealed, seal_report
from node.services.schemas import registry
from tests.builders import sqlite_store
from tests.conftest import Result, snapshot

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MARKER = "ZQXJ-unique-marker-7731"

REPORT: dict[str, Any] = {
    "sop": "threat-alert@1",
    "tlp": "amber",
    "fields": {
        "title": f"IED threat near the port {MARKER}",
        "threat_type": "ied",
        "severity": "high",
        "region": "Balochistan",
        "site": f"Convoy staging yard {MARKER}",
        "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    },
}


def test_sealed_report_is_encrypted_at_rest_and_logged_without_values(tmp_path: Path) -> None:
    node = init_node(
        tmp_path / "pk",
        node="pk-moi",
        name="PK",
        endpoint="127.0.0.1:7441",
        passphrase=None,
        now=NOW,
    )
    valid = check_report_document(registry(), json.dumps(REPORT).encode(), "json")
    with node.store.transaction() as db:
        sealed = seal_report(node, db, valid, NOW)
    node.checkpoint(NOW)
    node.store.conn.execute("PRAGMA wal_checkpoint(FULL)")
    raw = b"".join(p.read_bytes() for p in node.data_dir.glob("node.db*"))
    assert MARKER.encode() not in raw
    assert b"Balochistan" not in raw
    events = [parse_event_unverified(e) for _i, e in node.log.leaves(0, 100)]
    sealed_events = [e for e in events if e.kind == "report.sealed"]
    assert len(sealed_events) == 1
    attrs = sealed_events[0].attrs
    assert attrs["report_id"] == sealed.report_id
    assert attrs["fields"] == sorted(REPORT["fields"])
    assert MARKER not in json.dumps(attrs)
    # The stored original reopens and verifies under the author's key, every field intact.
    again = load_sealed(node, sealed.report_id)
    verified = verify_presentation(
        again.full_presentation(),
        node.keyring().identity_signer().public_key,
        limits=PresentationLimits(),
    )
    assert verified.fields == REPORT["fields"]
    assert verified.issuer == "pk-moi" and verified.tlp == "amber"


def test_edited_ciphertext_at_rest_is_detected(tmp_path: Path) -> None:
    node = init_node(
        tmp_path / "pk",
        node="pk-moi",
        name="PK",
        endpoint="127.0.0.1:7441",
        passphrase=None,
        now=NOW,
    )
    valid = check_report_document(registry(), json.dumps(REPORT).encode(), "json")
    with node.store.transaction() as db:
        a = seal_report(node, db, valid, NOW)
        b = seal_report(node, db, valid, NOW)
    # Swap the two ciphertexts: each is bound to its own row.
    conn = sqlite_store(node).conn
    blob_a = conn.execute(
        "SELECT sealed FROM reports WHERE report_id = ?", (a.report_id,)
    ).fetchone()[0]
    blob_b = conn.execute(
        "SELECT sealed FROM reports WHERE report_id = ?", (b.report_id,)
    ).fetchone()[0]
    conn.execute("UPDATE reports SET sealed = ? WHERE report_id = ?", (blob_b, a.report_id))
    conn.execute("UPDATE reports SET sealed = ? WHERE report_id = ?", (blob_a, b.report_id))
    with pytest.raises(StoreError, match="edited or moved"):
        load_sealed(node, a.report_id)


def test_schema_commands(accord: Callable[..., Result]) -> None:
    listed = accord("schema", "list", "--json").json()
    ids = [s["id"] for s in listed]
    assert {"threat-alert@1", "incident-report@1", "travel-advisory@1"} <= set(ids)
    shown = accord("schema", "show", "threat-alert@1", "--json").json()
    labels = {f["name"]: f["label"] for f in shown["fields"]}
    assert labels["source"] == "sensitive-source"
    human = accord("schema", "show", "threat-alert@1")
    assert "sensitive-source" in human.out and "time_window" in human.out
    bad = accord("schema", "show", "no-such@1")
    assert bad.code == 2 and "no-such@1" in bad.err


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


B01_CASES = [
    ("malformed_json", "r.json", b'{"sop": "threat-alert@1", "tlp": ', "json-syntax"),
    ("malformed_toml", "r.toml", b'sop = "threat-alert@1"\ntlp = \n', "toml-syntax"),
    (
        "duplicate_keys",
        "r.json",
        b'{"sop":"threat-alert@1","sop":"threat-alert@1","tlp":"amber","fields":{}}',
        "duplicate",
    ),
    (
        "wrong_types",
        "r.json",
        json.dumps({**REPORT, "fields": {**REPORT["fields"], "severity": 3}}).encode(),
        "fields.severity",
    ),
    (
        "boundary_latitude",
        "r.json",
        json.dumps(
            {**REPORT, "fields": {**REPORT["fields"], "location": {"lat": 90.0001, "lon": 0}}}
        ).encode(),
        "fields.location.lat",
    ),
    ("unknown_tlp", "r.json", json.dumps({**REPORT, "tlp": "white"}).encode(), "tlp"),
]
L04_CASES = [
    (
        "deep_nesting",
        "r.json",
        b'{"sop":"threat-alert@1","tlp":"amber","fields":{"title":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        "nested",
    ),
    (
        "huge_integer",
        "r.json",
        b'{"sop":"threat-alert@1","tlp":"amber","fields":{"title":' + b"9" * 5000 + b"}}",
        "too many digits",
    ),
    (
        "long_string",
        "r.json",
        json.dumps({**REPORT, "fields": {**REPORT["fields"], "title": "x" * 200_000}}).encode(),
        "fields.title",
    ),
    (
        "invalid_utf8",
        "r.json",
        b'{"sop":"threat-alert@1","tlp":"amber","fields":{"title":"\xff\xfe"}}',
        "utf-8",
    ),
    (
        "nul_byte",
        "r.json",
        b'{"sop":"threat-alert@1","tlp":"amber","fields":{"title":"a\x00b"}}',
        "nul",
    ),
    (
        "confusable_key",
        "r.json",
        json.dumps({**REPORT, "fields": {"t\u0456tle": "x", **REPORT["fields"]}}).encode(),
        "\\u0456",
    ),
]


@pytest.mark.parametrize(
    ("name", "file", "data", "expect"),
    B01_CASES + L04_CASES,
    ids=[c[0] for c in B01_CASES + L04_CASES],
)
@pytest.mark.threat("B01")
def test_b01_l04_bad_reports_are_listed_and_nothing_is_stored(
    tmp_path: Path,
    make_node: Callable[..., Path],
    accord: Callable[..., Result],
    name: str,
    file: str,
    data: bytes,
    expect: str,
) -> None:
    node_dir = make_node("pk-moi")
    before = snapshot(node_dir)
    path = _write(tmp_path, file, data)
    r = accord("--data", node_dir, "report", "validate", path, "--json")
    assert r.code == 2, (r.out, r.err)
    problems = r.json()["problems"]
    assert problems, name
    assert any(expect.lower() in json.dumps(p).lower() for p in problems), problems
    for p in problems:
        assert MARKER not in json.dumps(p)
    assert snapshot(node_dir) == before


def test_every_problem_is_listed_at_once(tmp_path: Path, accord: Callable[..., Result]) -> None:
    bad = {
        "sop": "threat-alert@1",
        "tlp": "amber",
        "fields": {
            "title": 5,
            "severity": "extreme",
            "location": {"lat": 100, "lon": "x"},
            "bogus": 1,
        },
    }
    r = accord("report", "validate", _write(tmp_path, "r.json", json.dumps(bad).encode()), "--json")
    paths = {p["path"] for p in r.json()["problems"]}
    assert {
        "fields.title",
        "fields.severity",
        "fields.location.lat",
        "fields.location.lon",
        "fields.bogus",
        "fields.region",
    } <= paths
    human = accord("report", "validate", _write(tmp_path, "r2.json", json.dumps(bad).encode()))
    assert human.code == 2 and "fields.location.lat" in human.out


def test_valid_report_in_toml(tmp_path: Path, accord: Callable[..., Result]) -> None:
    toml = b"""sop = "threat-alert@1"
tlp = "green"
[fields]
title = "Protest planned at the consulate"
threat_type = "civil-unrest"
severity = "moderate"
region = "Karachi"
[fields.time_window]
start = "2026-11-26T08:00:00Z"
end = "2026-11-26T18:00:00Z"
[fields.source]
kind = "osint"
reliability = "C"
credibility = 3
"""
    r = accord("report", "validate", _write(tmp_path, "r.toml", toml), "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()["valid"] is True


def test_db_file_has_no_plaintext_even_in_wal(tmp_path: Path) -> None:
    node = init_node(
        tmp_path / "pk",
        node="pk-moi",
        name="PK",
        endpoint="127.0.0.1:7441",
        passphrase=None,
        now=NOW,
    )
    valid = check_report_document(registry(), json.dumps(REPORT).encode(), "json")
    with node.store.transaction() as db:
        seal_report(node, db, valid, NOW)
    conn = sqlite3.connect(node.data_dir / "node.db")
    dump = "\n".join(conn.iterdump())
    assert MARKER not in dump
