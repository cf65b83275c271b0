"""docs/THREATS.md C01: SIGKILL either node at random moments while reports flow.

Two real ``accord serve`` processes (pk-moi sends, cn-mps receives) with real
certificates and real SQLite files. A submitter streams numbered reports into pk-moi's
Officer API while a killer SIGKILLs one node (sometimes both, sometimes a node that is
still starting) after random sleeps and restarts it. Then the exchange settles and we
check, from the databases and the exported logs, what docs/DESIGN.md §8, §11 and §13.4 promise:

- every report pk-moi acknowledged to the officer is stored at pk-moi (a report whose
  answer was lost in a kill is stored at most once, or not at all);
- every envelope pk-moi committed arrived at cn-mps exactly once: same envelope ids,
  seqs, report ids, nothing extra, nothing rejected, no duplicate log event;
- cn-mps's cursor is pk-moi's highest seq, every outbox row is acknowledged, and the
  signed receipts on both sides cover every seq;
- both logs export, verify offline, are cosigned by the partner, and reconcile.

The bounded run is part of ``make test``; the full acceptance (5,000 reports, at least
30 kills) is marked slow and runs in ``make test-long``. No assertion is about time:
every wait is a bounded poll whose failure message carries the servers' log tails.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exchange.sdjwt import PresentationLimits, verify_presentation
from node.home import Node
from node.services.reports import load_sealed
from tests.conftest import PASSPHRASE, Result, agree, audit_anchors, exchange_cards
from tests.integration.conftest import ServerProcess, free_port
from tests.integration.load import Submitter, title
from tests.postgres import PgCluster

Accord = Callable[..., Result]
SENDER, RECEIVER = "pk-moi", "cn-mps"


# -- nodes that die and come back -------------------------------------------------------------


@dataclass
class CrashingNode:
    """One node's ``accord serve``, started again after each kill; every incarnation
    keeps its own log file so a failure can show what happened before the last kill."""

    data: Path
    work: Path
    incarnations: list[ServerProcess] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def current(self) -> ServerProcess:
        return self.incarnations[-1]

    def start(self) -> ServerProcess:
        n = len(self.incarnations)
        ready = self.work / f"{self.name}.ready"
        ready.unlink(missing_ok=True)  # the killed incarnation's file says nothing now
        proc = ServerProcess(
            data=self.data, ready_file=ready, log_file=self.work / f"{self.name}.{n:03d}.log"
        )
        self.incarnations.append(proc.start())
        return proc

    def alive(self) -> bool:
        proc = self.current.proc
        return proc is not None and proc.poll() is None

    def sigkill(self) -> None:
        proc = self.current.proc
        assert proc is not None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        assert proc.returncode is not None

    def logs(self, tail: int = 3000) -> str:
        """The last lines of the last three incarnations' logs."""
        parts = []
        for proc in self.incarnations[-3:]:
            text = proc.log_file.read_text("utf-8", errors="replace")[-tail:]
            parts.append(f"--- {proc.log_file.name}:\n" + text[text.find("\n") + 1 :])
        return "\n".join(parts)


@pytest.fixture
def crashing(tmp_path: Path) -> Iterator[Callable[[Path], CrashingNode]]:
    made: list[CrashingNode] = []

    def make(data: Path) -> CrashingNode:
        node = CrashingNode(data, tmp_path)
        made.append(node)
        return node

    yield make
    for node in made:
        for proc in node.incarnations:
            proc.kill()


def _logs(*nodes: CrashingNode) -> str:
    return "\n".join(n.logs() for n in nodes)


def _until(
    what: str,
    check: Callable[[], object],
    timeout: float,
    *nodes: CrashingNode,
    state: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in nodes:
            if not n.alive():
                raise AssertionError(f"{n.name} exited while waiting for {what}\n{_logs(*nodes)}")
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s {state()}\n{_logs(*nodes)}")


# -- reading the databases ----------------------------------------------------------------------


def _ro(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data / 'node.db'}?mode=ro", uri=True, timeout=10)


def _database(data: Path) -> str | None:
    """The PostgreSQL DSN of a node created with --database, else None (SQLite)."""
    value = tomllib.loads((data / "config.toml").read_text("utf-8")).get("database")
    return value if isinstance(value, str) else None


def _rows(data: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    dsn = _database(data)
    if dsn is not None:  # the same question in PostgreSQL's placeholder style
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as pg:
            return [tuple(r) for r in pg.execute(sql.replace("?", "%s"), args).fetchall()]
    conn = _ro(data)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _one(data: Path, sql: str, *args: object) -> Any:
    return _rows(data, sql, *args)[0][0]


@dataclass(frozen=True)
class Progress:
    outbox_seq: int
    pending: int
    cursor: int
    sender_cosigned: bool
    receiver_cosigned: bool

    @property
    def settled(self) -> bool:
        return (
            self.outbox_seq > 0
            and self.pending == 0
            and self.cursor == self.outbox_seq
            and self.sender_cosigned
            and self.receiver_cosigned
        )


def _cosigned(data: Path, witness: str) -> bool:
    """The node's latest checkpoint carries the partner's cosignature."""
    latest = _one(data, "SELECT max(size) FROM log_checkpoints")
    held = _one(data, "SELECT max(size) FROM log_cosignatures WHERE witness = ?", witness)
    return latest is not None and held == latest


def _progress(pk: Path, cn: Path) -> Progress:
    return Progress(
        outbox_seq=int(
            _one(pk, "SELECT coalesce(max(seq), 0) FROM outbox WHERE peer = ?", RECEIVER)
        ),
        pending=int(
            _one(pk, "SELECT count(*) FROM outbox WHERE peer = ? AND state = 'pending'", RECEIVER)
        ),
        cursor=int(
            _one(cn, "SELECT coalesce(max(last_applied), 0) FROM cursors WHERE peer = ?", SENDER)
        ),
        sender_cosigned=_cosigned(pk, RECEIVER),
        receiver_cosigned=_cosigned(cn, SENDER),
    )


def _covered(ranges: list[tuple[Any, ...]], last: int) -> list[int]:
    """Seqs in 1..last that no (first_seq, last_seq) range covers."""
    seen = bytearray(last + 1)
    for first, end, *_ in ranges:
        for seq in range(int(first), min(int(end), last) + 1):
            seen[seq] = 1
    return [s for s in range(1, last + 1) if not seen[s]]


# -- the crash loop ------------------------------------------------------------------------------


@dataclass
class Killer:
    rng: random.Random
    nodes: tuple[CrashingNode, CrashingNode]
    max_pause: float
    kills: int = 0  # SIGKILLs delivered to a serving node
    early_kills: int = 0  # SIGKILLs delivered to a node still starting up
    victims: dict[str, int] = field(default_factory=dict)
    database: PgCluster | None = None  # the sender's PostgreSQL server, killed now and then
    database_kills: int = 0

    def round(self) -> None:
        time.sleep(self.rng.uniform(0.05, self.max_pause))
        if self.database is not None and self.rng.random() < 0.3:
            self.kill_database()
            return
        both = self.rng.random() < 0.1
        victims = list(self.nodes) if both else [self.rng.choice(self.nodes)]
        for node in victims:
            node.sigkill()
            self.kills += 1
            self.victims[node.name] = self.victims.get(node.name, 0) + 1
        for node in victims:
            node.start()
            if self.rng.random() < 0.15:  # now and then, kill it again while it starts
                time.sleep(self.rng.uniform(0.0, 0.6))
                node.sigkill()
                self.early_kills += 1
                node.start()
        for node in victims:
            node.current.wait_ready()

    def kill_database(self) -> None:
        """SIGKILL of the PostgreSQL server and every backend (C05): the sender's serve
        loses its sessions, stops leading at once and reconnects by itself once the
        server has recovered; nobody restarts it."""
        assert self.database is not None
        self.database.kill()
        self.database_kills += 1
        self.victims["postgres"] = self.victims.get("postgres", 0) + 1
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.database.start()
        for node in self.nodes:
            ready = node.current.ready_file
            _until(f"{node.name} serving again", ready.exists, 60.0, *self.nodes)


def crash_loop(
    accord: Accord,
    partners: tuple[Path, Path],
    crashing: Callable[[Path], CrashingNode],
    tmp_path: Path,
    *,
    reports: int,
    rate: float,
    kills: int,
    seed: int,
    max_pause: float,
    settle_timeout: float,
    database: PgCluster | None = None,
) -> None:
    pk, cn = partners
    agree(accord, pk, cn, tmp_path)
    sender, receiver = crashing(pk), crashing(cn)
    for node in (sender, receiver):
        node.start()
    for node in (sender, receiver):
        node.current.wait_ready()

    print(f"crash loop: seed {seed} (ACCORD_CRASH_SEED={seed} repeats this run's choices)")
    rng = random.Random(seed)
    submitter = Submitter(pk, tag=f"seed{seed}", target=reports, rate=rate).start()
    killer = Killer(rng, (sender, receiver), max_pause, database=database)
    try:
        while killer.kills < kills:
            killer.round()
            if submitter.error is not None:
                raise AssertionError(f"submitter failed: {submitter.error!r}")
        if database is not None and killer.database_kills == 0:
            killer.kill_database()  # whatever the seed chose, the server dies at least once
        _until(
            f"{reports} reports accepted (have {len(submitter.accepted)})",
            lambda: submitter.done,
            settle_timeout,
            sender,
            receiver,
        )
    finally:
        submitter.stop()
        assert submitter.join(30), "the submitter did not stop"
    assert submitter.error is None, repr(submitter.error)
    assert not submitter.refused, f"valid reports were refused: {submitter.refused}"

    def settled() -> bool:
        return _progress(pk, cn).settled

    _until(
        "every envelope applied, acknowledged and both logs cosigned",
        settled,
        settle_timeout,
        sender,
        receiver,
        state=lambda: _progress(pk, cn),
    )
    status: Any = accord("--data", pk, "sync", "status", "--json").json()
    [peer] = status
    assert peer["backlog"] == 0 and peer["acknowledged_seq"] == peer["outbox_seq"], peer
    for node in (sender, receiver):
        assert node.current.terminate() == 0, node.logs()

    check_server_logs(sender, receiver, database_killed=killer.database_kills > 0)
    committed_in_doubt = check_exactly_once(pk, cn, submitter)
    check_logs(accord, pk, cn, tmp_path, _progress(pk, cn).outbox_seq)
    print(
        f"\ncrash loop: {len(submitter.accepted)} reports accepted, {submitter.sent} sent "
        f"({len(submitter.in_doubt)} in doubt of which {committed_in_doubt} committed, "
        f"{submitter.broken_streams} streams broken), "
        f"{killer.kills} kills {killer.victims} + {killer.early_kills} during start-up, "
        f"{killer.database_kills} of the database server"
    )


# What a node logs as an error when its database server dies under it (C05): the lost
# leader lock. The work in flight at that moment fails with store.unavailable, a warning.
DATABASE_DIED = ('"event": "server.leadership_lost"',)


def check_server_logs(*nodes: CrashingNode, database_killed: bool = False) -> None:
    """A partner's crash is something to ride out, never an internal error of ours.

    gRPC itself logs (logger ``grpc._cython.cygrpc``) a write to a stream whose client
    died a moment before; no server can avoid that race, so those lines are not ours. After
    a kill of the database server, the lines that say so are expected too, no others."""
    errors = [
        f"{proc.log_file.name}: {line}"
        for node in nodes
        for proc in node.incarnations
        for line in proc.log_file.read_text("utf-8", errors="replace").splitlines()
        if '"level": "error"' in line
        and '"logger": "grpc.' not in line
        and not (database_killed and any(mark in line for mark in DATABASE_DIED))
    ]
    assert not errors, "errors in the servers' logs:\n" + "\n".join(errors[:20])


def check_exactly_once(pk: Path, cn: Path, submitter: Submitter) -> int:
    """Returns how many reports whose answer was lost were committed nonetheless."""
    # 1. Every report the officer saw accepted is stored; anything else was in doubt.
    stored = {str(r[0]) for r in _rows(pk, "SELECT report_id FROM reports")}
    acked = set(submitter.accepted.values())
    assert len(acked) == len(submitter.accepted), "one report id answered twice"
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged reports are missing at {SENDER}"
    extra = stored - acked
    assert len(extra) <= len(submitter.in_doubt)
    node = Node.open(pk, lambda: PASSPHRASE)
    try:
        titles = []
        for report_id in sorted(extra):
            sealed = load_sealed(node, report_id)
            key = _one(pk, "SELECT issuer_key FROM reports WHERE report_id = ?", report_id)
            fields = verify_presentation(
                sealed.full_presentation(), bytes(key), limits=PresentationLimits()
            ).fields
            titles.append(fields["title"])
    finally:
        node.close()
    doubtful = {title(submitter.tag, n) for n in submitter.in_doubt}
    assert set(titles) <= doubtful, "a report nobody was waiting for was stored"
    assert len(titles) == len(set(titles)), "a report in doubt was stored twice"

    # 2. One envelope per stored report, gap-free seqs, every one acknowledged.
    outbox = _rows(
        pk,
        "SELECT seq, envelope_id, report_id, digest, state FROM outbox WHERE peer = ? ORDER BY seq",
        RECEIVER,
    )
    last = len(outbox)
    assert [int(r[0]) for r in outbox] == list(range(1, last + 1))
    assert sorted(str(r[2]) for r in outbox) == sorted(stored), "reports and envelopes differ"
    states = {str(r[4]) for r in outbox}
    assert states == {"delivered"}, f"outbox states {states}: a receipt is missing or rejected"

    # 3. Exactly those envelopes arrived, each once, applied, nothing kept as evidence.
    inbox = _rows(
        cn,
        "SELECT seq, envelope_id, report_id FROM inbox WHERE peer = ? ORDER BY seq",
        SENDER,
    )
    assert [tuple(r) for r in inbox] == [tuple(r[:3]) for r in outbox]
    inbound = _rows(
        cn, "SELECT seq, digest, status FROM inbound WHERE peer = ? ORDER BY seq", SENDER
    )
    assert [(r[0], r[1]) for r in inbound] == [(r[0], r[3]) for r in outbox]
    assert {str(r[2]) for r in inbound} == {"applied"}
    assert _one(cn, "SELECT count(*) FROM evidence") == 0
    assert _one(cn, "SELECT last_applied FROM cursors WHERE peer = ?", SENDER) == last

    # 4. Signed receipts: cn-mps's cover 1..last without overlap, pk-moi holds each of them.
    sent = _rows(
        cn,
        "SELECT first_seq, last_seq, digest FROM receipts "
        "WHERE peer = ? AND direction = 'sent' ORDER BY first_seq",
        SENDER,
    )
    assert [int(r[0]) for r in sent] == [1] + [int(r[1]) + 1 for r in sent[:-1]]
    assert int(sent[-1][1]) == last
    received = _rows(
        pk,
        "SELECT first_seq, last_seq, digest FROM receipts WHERE peer = ? AND direction = 'received'",
        RECEIVER,
    )
    assert not _covered(received, last), "seqs without a receipt at the sender"
    assert {r[2] for r in received} <= {r[2] for r in sent}
    return len(extra)


def _events(accord: Accord, data: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    while True:
        page = accord("--data", data, "log", "show", "--from", len(out), "--limit", 1000, "--json")
        assert page.code == 0, page.err
        entries = page.json()["entries"]
        if not entries:
            return out
        out.extend(entries)


def check_logs(accord: Accord, pk: Path, cn: Path, tmp_path: Path, last: int) -> None:
    """Each envelope is logged once on each side; both bundles verify and reconcile."""
    decided = [
        e for e in _events(accord, pk) if e["kind"] == "release.decided" and e.get("envelope_id")
    ]
    arrived = [e for e in _events(accord, cn) if e["kind"] == "envelope.received"]
    assert len(decided) == len({e["envelope_id"] for e in decided}) == last
    assert len(arrived) == len({e["envelope_id"] for e in arrived}) == last
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
    assert reconciled.json()["matched"] == last


# -- the runs -----------------------------------------------------------------------------------


def test_crash_loop_bounded(
    accord: Accord,
    partners: tuple[Path, Path],
    crashing: Callable[[Path], CrashingNode],
    tmp_path: Path,
) -> None:
    """The bounded version for ``make test``: 300 reports, 6 kills."""
    crash_loop(
        accord,
        partners,
        crashing,
        tmp_path,
        reports=300,
        rate=40.0,
        kills=6,
        seed=int(os.environ.get("ACCORD_CRASH_SEED", "6")),
        max_pause=0.8,
        settle_timeout=60.0,
    )


@pytest.mark.threat("C05")
def test_crash_loop_on_postgresql(
    accord: Accord,
    make_node: Callable[..., Path],
    pg_cluster: PgCluster,
    crashing: Callable[[Path], CrashingNode],
    tmp_path: Path,
) -> None:
    """The same loop with the sender's state in PostgreSQL (issue 16): SIGKILL of either
    node and, now and then, of the PostgreSQL server itself; 120 reports, 3 kills of a node."""
    pk = make_node(SENDER, free_port(), "--database", pg_cluster.createdb("crash_pk"))
    cn = make_node(RECEIVER, free_port())
    exchange_cards(accord, pk, cn, tmp_path)
    crash_loop(
        accord,
        (pk, cn),
        crashing,
        tmp_path,
        reports=120,
        rate=40.0,
        kills=3,
        seed=int(os.environ.get("ACCORD_CRASH_SEED", "16")),
        max_pause=0.8,
        settle_timeout=90.0,
        database=pg_cluster,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crash_loop_full(
    accord: Accord,
    partners: tuple[Path, Path],
    crashing: Callable[[Path], CrashingNode],
    tmp_path: Path,
) -> None:
    """Acceptance: 5,000 reports, at least 30 kills of either node."""
    crash_loop(
        accord,
        partners,
        crashing,
        tmp_path,
        reports=5000,
        rate=0.0,
        kills=30,
        seed=int(os.environ.get("ACCORD_CRASH_SEED", "5000")),
        max_pause=2.0,
        settle_timeout=240.0,
    )
