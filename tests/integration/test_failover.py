"""Acceptance (issue 16, docs/THREATS.md C05): two ``accord serve`` processes for one node
on PostgreSQL, one leading and one standing by (docs/adr/0026).

The node pk-moi has two data directories, ``pk-moi`` and ``pk-moi-b``, that share the
database (the same ``database`` URL) and the key file (``keys/`` of the second is a link to
the first's, as a shared mount would be). cn-mps, its partner, is a SQLite node. While the
first process leads, the second answers ``status`` as a standby and refuses everything else.
The PostgreSQL server is killed under both and restarted: with nobody restarting either
process, one leads again and the other stands by. Then the reports flow to cn-mps; the
leader is SIGKILLed in the middle; the standby takes over, binds the node's endpoint, and
cn-mps resumes from its cursor. At the end every report pk-moi stored is at cn-mps exactly
once, and both audits verify and reconcile.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.builders import ALERT, second_data_dir
from tests.conftest import Result, agree, audit_anchors, exchange_cards
from tests.integration.conftest import ServerProcess, free_port
from tests.integration.load import Submitter
from tests.postgres import PgCluster

Accord = Callable[..., Result]
TAKEOVER_BOUND = 10.0  # issue 16: the standby serves within 10 s of the leader's SIGKILL
WAIT = 180.0


# Event families of a node that signs, sends, receives or applies (a standby logs none).
ACTING = {"envelope", "release", "checkpoint", "cosign", "sync", "receipt", "report", "key"}


def events(proc: ServerProcess) -> list[str]:
    out = []
    for line in proc.log_file.read_text("utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            out.append(str(json.loads(line).get("event", "")))
    return out


def status(accord: Accord, data: Path) -> dict[str, Any]:
    r = accord("--data", data, "status", "--json")
    if r.code != 0:
        return {}
    doc = r.json()
    assert isinstance(doc, dict)
    return doc


def wait(what: str, check: Callable[[], object], procs: list[ServerProcess], bound: float) -> Any:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(
        f"{what} not reached in {bound:.0f}s\n" + "\n".join(p.logs() for p in procs)
    )


def received(cn: Path) -> list[tuple[str, str, int]]:
    """(report_id, envelope_id, seq) of every row of cn-mps's inbox from pk-moi."""
    conn = sqlite3.connect(f"file:{cn / 'node.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT report_id, envelope_id, seq FROM inbox WHERE peer = 'pk-moi' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


@pytest.mark.threat("C05")
def test_standby_takes_over_while_reports_flow(
    pg_cluster: PgCluster,
    make_node: Callable[..., Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    """The bounded run of ``make test``: 200 reports."""
    failover(pg_cluster, make_node, servers, accord, tmp_path, reports=200)


@pytest.mark.slow
@pytest.mark.threat("C05")
@pytest.mark.timeout(1200)
def test_standby_takes_over_while_2000_reports_flow(
    pg_cluster: PgCluster,
    make_node: Callable[..., Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
) -> None:
    """Issue 16's acceptance, in ``make test-long``: 2,000 reports."""
    failover(pg_cluster, make_node, servers, accord, tmp_path, reports=2_000)


def failover(
    pg_cluster: PgCluster,
    make_node: Callable[..., Path],
    servers: Callable[..., ServerProcess],
    accord: Accord,
    tmp_path: Path,
    *,
    reports: int,
) -> None:
    dsn = pg_cluster.createdb("failover_pk")
    pk = make_node("pk-moi", free_port(), "--database", dsn)
    cn = make_node("cn-mps", free_port())
    exchange_cards(accord, pk, cn, tmp_path)
    agree(accord, pk, cn, tmp_path)
    pk_b = second_data_dir(pk)

    receiver = servers(cn)
    first = servers(pk)
    first.wait_ready()
    standby = servers(pk_b)
    procs = [first, standby, receiver]
    receiver.wait_ready()
    assert first.proc is not None and standby.proc is not None

    # -- while the first process leads, the second stands by ---------------------------------
    seen = wait(
        "the second process standing by",
        lambda: (s := status(accord, pk_b)).get("role") == "standby" and s,
        procs,
        30.0,
    )
    assert seen["leader"]["pid"] == first.proc.pid and seen["leader"]["data_dir"] == str(pk)
    assert seen["peers"] == []
    leading = status(accord, pk)
    assert leading["role"] == "leader" and leading["leader"]["pid"] == first.proc.pid
    report = tmp_path / "alert.json"
    report.write_text(json.dumps(ALERT))
    refused = accord("--data", pk_b, "report", "submit", report, "--json")
    assert refused.code != 0 and "server.standby" in refused.err, refused.err
    assert str(first.proc.pid) in refused.err  # it names the leader
    text = accord("--data", pk_b, "status")
    assert text.code == 0 and "standby" in text.out and "the leader is pid" in text.out
    assert not standby.ready_file.exists()  # not ready: it serves no partner
    stood_by = events(standby)
    assert "server.standby" in stood_by
    did = {e for e in stood_by if e.split(".")[0] in ACTING or e == "server.started"}
    assert not did, f"the standby acted: {did}"

    # -- the database server dies under both; nobody restarts either -------------------------
    pg_cluster.kill()
    pg_cluster.start()

    def one_each() -> object:
        got = {d: status(accord, d).get("role") for d in (pk, pk_b)}
        return sorted(map(str, got.values())) == ["leader", "standby"] and got

    roles = wait("one leader and one standby again", one_each, procs, 60.0)
    assert first.proc.poll() is None and standby.proc.poll() is None  # neither exited
    if roles[pk] != "leader":  # the lock went to the other process this time
        first, standby = standby, first
    first.wait_ready()
    assert first.proc is not None and standby.proc is not None

    # -- 2,000 reports flow; the leader dies in the middle -----------------------------------
    # Half the reports at a steady rate (about 10 s), the leader killed early in the flow.
    before = Submitter(first.data, tag="leader", target=reports // 2, rate=reports / 20).start()
    wait("the partner receiving", lambda: len(received(cn)) >= reports // 20, procs, WAIT)
    have, sent = len(received(cn)), len(before.accepted)
    first.kill()  # SIGKILL, mid-flow
    killed_at = time.monotonic()
    assert not before.done or have < sent, "the kill did not land while reports flowed"
    before.stop()  # its stream broke with the leader; the rest goes to the new leader
    assert before.join(30) and before.error is None and not before.refused

    standby.wait_ready()  # the ready file: the peer port and the full Officer API are up
    took = time.monotonic() - killed_at
    print(f"failover: the standby served {took:.1f} s after the SIGKILL")
    assert took < TAKEOVER_BOUND, standby.logs()
    now = status(accord, standby.data)
    assert now["role"] == "leader" and now["leader"]["pid"] == standby.proc.pid

    after = Submitter(standby.data, tag="standby", target=reports - len(before.accepted)).start()
    wait("the other half accepted by the new leader", lambda: after.done, procs, WAIT)
    assert after.join(30) and after.error is None and not after.refused
    accepted = set(before.accepted.values()) | set(after.accepted.values())
    assert len(accepted) == reports

    # -- the partner ends with every report exactly once ------------------------------------
    def settled() -> object:
        s = accord("--data", standby.data, "sync", "status", "--json")
        if s.code != 0:
            return False
        [peer] = s.json()
        return peer["backlog"] == 0 and peer["acknowledged_seq"] == peer["outbox_seq"] and peer

    peer = wait("every envelope delivered and receipted", settled, [standby, receiver], WAIT)
    rows = received(cn)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "a report arrived twice"
    assert [r[2] for r in rows] == list(range(1, len(rows) + 1)), "a gap in the seqs"
    assert len(rows) == peer["outbox_seq"]
    with pg_cluster.connect("failover_pk") as conn:
        stored = {str(r[0]) for r in conn.execute("SELECT report_id FROM reports").fetchall()}
        outbox = conn.execute(
            "SELECT seq, envelope_id, report_id FROM outbox WHERE peer = 'cn-mps' ORDER BY seq"
        ).fetchall()
    assert accepted <= stored, "a report acknowledged to the officer was lost"
    assert len(stored - accepted) <= len(before.in_doubt), "a report nobody sent was stored"
    assert set(ids) == stored
    assert [(str(r[2]), str(r[1]), int(str(r[0]))) for r in outbox] == rows

    # -- both audits pass --------------------------------------------------------------------
    def cosigned() -> object:
        a = accord("--data", standby.data, "log", "checkpoint", "--json").json()
        return "cn-mps" in a["cosigned_by"]

    wait("a cosigned checkpoint after the takeover", cosigned, [standby, receiver], WAIT)
    for p in (standby, receiver):
        assert p.terminate() == 0, p.logs()
    anchors = audit_anchors(accord, standby.data, cn)
    bundles = []
    for data in (standby.data, cn):
        out = tmp_path / f"{data.name}.bundle"
        exported = accord("--data", data, "audit", "export", "--out", out)
        assert exported.code == 0, exported.err
        verified = accord("audit", "verify", out, *anchors, "--json")
        assert verified.code == 0, verified.out
        bundles.append(out)
    reconciled = accord("audit", "reconcile", *bundles, *anchors, "--json")
    assert reconciled.code == 0, reconciled.out
    assert reconciled.json()["matched"] == len(rows)
    for proc in (first, standby):  # no process logged an error of ours but the lost lock
        errors = [
            line
            for line in proc.log_file.read_text("utf-8", errors="replace").splitlines()
            if '"level": "error"' in line
            and '"logger": "grpc.' not in line
            and '"event": "server.leadership_lost"' not in line  # the database restart
        ]
        assert not errors, "\n".join(errors[:10])
