"""Builders shared by tests: one report used across the suite, checked like an officer's.

Tests import from here (or use conftest fixtures), never from another ``test_*`` module.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from exchange import merkle
from exchange.audit import Anchor
from exchange.events import event_bytes
from exchange.sop import ValidReport, check_report_document
from exchange.times import format_time
from node.home import Node
from node.services.schemas import registry
from node.store import Store

# A string in every withheld field of ALERT: if it shows up where the partner or a log
# can see it, a withheld value leaked.
MARKER = "QWX-marker-5521"
ALERT: dict[str, Any] = {
    "sop": "threat-alert@1",
    "tlp": "amber",
    "fields": {
        "title": f"IED threat {MARKER}",
        "threat_type": "ied",
        "severity": "high",
        "region": "Balochistan",
        "site": f"Convoy yard {MARKER}",
        "location": {"lat": 25.1264, "lon": 62.3225},
        "time_window": {"start": "2026-11-26T00:00:00Z", "end": "2026-11-30T00:00:00Z"},
        "indicators": [f"white pickup {MARKER}"],
        "recommended_actions": ["Avoid the east gate"],
        "source": {"kind": "humint", "reliability": "B", "credibility": 2},
    },
}


def sqlite_store(node: Node) -> Store:
    """The node's SQLite Store, for tests that read or edit ``node.db`` directly."""
    assert isinstance(node.store, Store), "this test runs on a SQLite node"
    return node.store


def valid_report(report: dict[str, Any] = ALERT) -> ValidReport:
    """``report`` validated against the shipped SOP schemas, as ``report submit`` does."""
    return check_report_document(registry(), json.dumps(report).encode(), "json")


# -- the insider: node.db, sqlite3 and the public hash functions, no keyring -------------------


class _SqlReader:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def subtree(self, level: int, index: int) -> bytes:
        row = self.conn.execute(
            "SELECT hash FROM log_subtrees WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        return bytes(row[0])


def insider_append_leaf(conn: sqlite3.Connection, data: bytes) -> int:
    """Append the leaf ``data`` and its subtree rows with correct RFC 6962 hashes, as
    someone with the database file but not the passphrase can; returns its index."""
    with conn:
        size = int(conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM log_leaves").fetchone()[0])
        leaf = merkle.leaf_hash(data)
        result = merkle.new_subtrees_after_append_batch(size, [leaf], _SqlReader(conn))
        conn.execute(
            "INSERT INTO log_leaves (idx, event, leaf_hash) VALUES (?, ?, ?)", (size, data, leaf)
        )
        conn.executemany(
            "INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)",
            [s.as_row() for s in result.subtrees],
        )
    return size


def insider_append_event(conn: sqlite3.Connection, kind: str, at: datetime, **attrs: Any) -> int:
    """A well-formed event of ``kind`` appended by the insider (its index is the next one)."""
    size = int(conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM log_leaves").fetchone()[0])
    return insider_append_leaf(conn, event_bytes(kind, size, format_time(at), attrs))


def anchors(*nodes: Node) -> list[Anchor]:
    """Each node's fingerprint, as the auditor checked it out of band."""
    return [Anchor(n.config.node, n.own_chain().latest.fingerprint) for n in nodes]


# -- the warning loop (ADR 0022) ------------------------------------------------------------

CRITICAL_ALERT: dict[str, Any] = {
    **ALERT,
    "fields": {**ALERT["fields"], "severity": "critical", "title": "Critical convoy threat"},
}


def loop_terms(example_terms: str, *, acknowledge: str = "PT1M", respond: str = "PT1H") -> str:
    """The example terms with a response rule for critical threat alerts, and response@1
    replies allowed from cn-mps to pk-moi."""
    return (
        example_terms
        + f"""
[receive.schema."response@1"]
labels = ["public", "operational"]

[response."threat-alert@1".critical]
acknowledge = "{acknowledge}"
respond = "{respond}"
"""
    )


def reply(in_reply_to: str, *, title: str = "Convoy moves suspended") -> ValidReport:
    return valid_report(
        {
            "sop": "response@1",
            "tlp": "amber",
            "fields": {
                "in_reply_to": in_reply_to,
                "status": "measures-taken",
                "title": title,
                "measures_taken": ["Road moves suspended"],
            },
        }
    )


def second_data_dir(data: Path) -> Path:
    """A second data directory of the same PostgreSQL node, as a standby has: config and
    TLS copied, ``keys/`` shared (a link, as a shared mount would be; docs/adr/0026)."""
    other = data.with_name(data.name + "-b")
    shutil.copytree(data, other, symlinks=True, ignore=shutil.ignore_patterns("officer.sock"))
    shutil.rmtree(other / "keys")
    (other / "keys").symlink_to(data / "keys", target_is_directory=True)
    other.chmod(0o700)
    return other
