"""docs/THREATS.md I08 against two real `accord serve` processes, as the finding was reproduced:
an insider edits cn-mps's database (inbox TLP) and pk-moi's policy file with its meta row
while both serve; the officer's CLI never shows CLEAR and nothing is released (ADR 0013)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from node import clock
from node.home import Node
from node.services.policy import check_policy
from tests.conftest import PASSPHRASE, Result
from tests.integration.conftest import ServerProcess, inbox_count, serving_with_one_report

Accord = Callable[..., Result]
pytestmark = pytest.mark.threat("I08")


def _sql(data: Path, sql: str, *args: object) -> None:
    """The insider: the sqlite3 tool on the live database file, no keyring, no log."""
    conn = sqlite3.connect(data / "node.db", timeout=30)
    try:
        with conn:
            conn.execute(sql, args)
    finally:
        conn.close()


def test_i08_cli_never_shows_an_edited_tlp_and_an_edited_policy_releases_nothing(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    pk, cn = partners
    pk_server, cn_server, report = serving_with_one_report(accord, servers, pk, cn, tmp_path)
    [item] = accord("--data", cn, "inbox", "list", "--json").json()
    envelope_id = item["envelope_id"]
    assert item["tlp"] == "amber"  # the control
    _sql(cn, "UPDATE inbox SET tlp = 'clear'")
    commands = [
        ("inbox", "list"),
        ("inbox", "list", "--json"),
        ("inbox", "show", envelope_id),
        ("inbox", "export", envelope_id, "--format", "stix"),
        ("inbox", "export", envelope_id, "--format", "json"),
    ]
    for args in commands:
        r = accord("--data", cn, *args)
        assert r.code != 0, (args, r.out)
        assert "store.row_tampered" in r.out + r.err and envelope_id in r.out + r.err, args
        assert "clear" not in (r.out + r.err).lower(), args

    # pk-moi: the policy file and its meta digest edited together, to release indicators.
    path = pk / "policy.toml"
    text = path.read_text("utf-8")
    edited = text.replace('release = ["recommended_actions"]', 'release = ["indicators"]')
    assert edited != text
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        digest = check_policy(node, edited, clock.now()).digest
    finally:
        node.close()
    path.write_text(edited, "utf-8")
    _sql(pk, "UPDATE meta SET value = ? WHERE key = 'policy.digest'", digest)
    r = accord("--data", pk, "report", "submit", report, "--json")
    assert r.code != 0 and "policy.unlogged" in r.out + r.err
    r = accord("--data", pk, "log", "show", "--json")
    kinds = [e["kind"] for e in r.json()["entries"]]
    assert kinds.count("policy.changed") == 1 and kinds.count("release.decided") == 1
    _sql(cn, "UPDATE inbox SET tlp = 'amber'")
    assert inbox_count(accord, cn) == 1  # nothing more arrived
    for p in (pk_server, cn_server):
        assert p.terminate() == 0
