"""Acceptance (issue 16): a node whose state lives in PostgreSQL and a SQLite node, both real
``accord serve`` processes on loopback, exchange reports both ways and cosign each other's
logs; both audit bundles verify and reconcile. The PostgreSQL node is created with
``accord init --database DSN``; its server finds the DSN in config.toml alone."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path

from tests.builders import ALERT
from tests.conftest import POLICY, Result, agree, audit_anchors, exchange_cards
from tests.integration.conftest import ServerProcess, free_port, inbox_count, until
from tests.postgres import PgCluster

Accord = Callable[..., Result]


def test_postgres_node_and_sqlite_node_exchange_both_ways(
    pg_cluster: PgCluster,
    make_node: Callable[..., Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    secret = "not-logged-anywhere"  # the cluster trusts its socket; libpq never sends it
    dsn = pg_cluster.createdb("pk_moi_node") + f" password={secret}"
    pk = make_node("pk-moi", free_port(), "--database", dsn)
    cn = make_node("cn-mps", free_port())
    config = tomllib.loads((pk / "config.toml").read_text("utf-8"))
    assert config["database"] == dsn
    assert not (pk / "node.db").exists()  # the state is in PostgreSQL
    assert (pk / "keys" / "secrets.key").is_file() and (pk / "tls" / "node.pem").is_file()
    assert "database" not in tomllib.loads((cn / "config.toml").read_text("utf-8"))
    with pg_cluster.connect("pk_moi_node") as conn:
        row = conn.execute("SELECT count(*) FROM log_leaves").fetchone()
        assert row is not None and isinstance(row[0], int) and row[0] >= 1  # node.created

    exchange_cards(accord, pk, cn, tmp_path)
    agree(accord, pk, cn, tmp_path)  # pk-moi releases to cn-mps under the example policy
    reverse = tmp_path / "to-pk-moi.toml"  # and cn-mps to pk-moi under the same rules
    reverse.write_text(POLICY.read_text("utf-8").replace("cn-mps", "pk-moi"), "utf-8")
    assert accord("--data", cn, "policy", "apply", reverse).code == 0
    procs = [servers(pk), servers(cn)]
    for p in procs:
        p.wait_ready()

    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    for sender in (pk, cn):
        sent = accord("--data", sender, "report", "submit", report, "--json")
        assert sent.code == 0, sent.err
    until("the report at cn-mps", lambda: inbox_count(accord, cn) == 1, procs)
    until("the report at pk-moi", lambda: inbox_count(accord, pk) == 1, procs)

    def acknowledged() -> object:
        return all(
            (s := accord("--data", d, "sync", "status", "--json").json())[0]["acknowledged_seq"]
            == 1
            and s[0]["backlog"] == 0
            for d in (pk, cn)
        )

    until("the receipts on both sides", acknowledged, procs)

    def cosigned_both() -> object:
        a = accord("--data", pk, "log", "checkpoint", "--json").json()
        b = accord("--data", cn, "log", "checkpoint", "--json").json()
        return "cn-mps" in a["cosigned_by"] and "pk-moi" in b["cosigned_by"]

    until("cosignatures on both logs", cosigned_both, procs)
    for p in procs:
        assert p.terminate() == 0

    bundles = []
    anchors = audit_anchors(accord, pk, cn)
    for data in (pk, cn):
        out = tmp_path / f"{data.name}.bundle"
        exported = accord("--data", data, "audit", "export", "--out", out)
        assert exported.code == 0, exported.err
        verified = accord("audit", "verify", out, *anchors, "--json")
        assert verified.code == 0, verified.out
        assert verified.json()["cosigned_checkpoints"] >= 1
        bundles.append(out)
    reconciled = accord("audit", "reconcile", *bundles, *anchors, "--json")
    assert reconciled.code == 0, reconciled.out
    assert reconciled.json()["matched"] == 2
    # The password in the DSN never reaches a log line or an output.
    for p in procs:
        assert secret not in p.logs()
    shown = accord("--data", pk, "status")
    assert secret not in shown.out + shown.err
