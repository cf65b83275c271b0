"""The writer and leader locks of node/store/pg.py against a real PostgreSQL server: one holder per
node and purpose, and a lock that dies with its session, so a waiting process takes over
within 10 s of the holder's SIGKILL (issue 16; docs/adr/0024)."""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from exchange.errors import StoreError
from node.store.pg import LeaderLock, SessionLock, WriterLock, lock_key
from tests.postgres import SUPERUSER, PgCluster

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-a.example"
TAKEOVER = 10.0  # seconds: issue 16's bound for a standby taking over


@pytest.fixture(scope="module")
def locks_dsn(pg_cluster: PgCluster) -> str:
    dsn = pg_cluster.createdb("locks")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE writes (node text NOT NULL, writer_pid int NOT NULL)")
    return dsn


def test_the_lock_key_is_the_first_8_bytes_of_a_domain_separated_sha256() -> None:
    digest = hashlib.sha256(b"accord/v1/writer\nnode-a.example").digest()
    assert lock_key("writer", NODE) == int.from_bytes(digest[:8], "big", signed=True)
    keys = {lock_key(p, n) for p in ("writer", "leader") for n in (NODE, "node-b.example")}
    assert len(keys) == 4
    assert all(-(2**63) <= k < 2**63 for k in keys)
    assert WriterLock("", NODE).key == lock_key("writer", NODE)
    assert LeaderLock("", NODE).key == lock_key("leader", NODE)


def test_one_holder_per_node_and_purpose(locks_dsn: str) -> None:
    with (
        WriterLock(locks_dsn, NODE) as first,
        WriterLock(locks_dsn, NODE) as second,
        LeaderLock(locks_dsn, NODE) as leader,
        WriterLock(locks_dsn, "node-b.example") as other_node,
    ):
        assert first.try_acquire() and first.held and first.check()
        assert not second.try_acquire() and not second.held
        started = time.monotonic()
        assert not second.acquire(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        assert leader.try_acquire()  # another purpose: another key
        assert other_node.try_acquire()  # another node: another key
        first.release()
        assert not first.held and not first.check()
        assert second.acquire(timeout=5) and second.check()
        assert not first.try_acquire()


def test_a_waiter_gets_the_lock_as_soon_as_it_is_released(locks_dsn: str) -> None:
    with LeaderLock(locks_dsn, NODE) as active, LeaderLock(locks_dsn, NODE) as standby:
        assert active.try_acquire()
        timer = threading.Timer(0.5, active.release)
        timer.start()
        started = time.monotonic()
        try:
            assert standby.acquire(timeout=10)
        finally:
            timer.join()
        assert time.monotonic() - started < 5


def test_a_lock_whose_session_ends_is_lost(pg_cluster: PgCluster, locks_dsn: str) -> None:
    """The server ends the holder's backend (as it does for a dead client): the holder sees
    it has lost the lock, and can no longer write through it."""
    with WriterLock(locks_dsn, NODE) as holder, WriterLock(locks_dsn, NODE) as standby:
        assert holder.try_acquire()
        with holder.transaction() as conn:
            conn.execute("INSERT INTO writes VALUES (%s, pg_backend_pid())", (NODE,))
        with pg_cluster.connect("locks", SUPERUSER) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
        assert standby.acquire(timeout=5)
        assert not holder.check() and not holder.held
        with pytest.raises(StoreError) as refused, holder.transaction():
            pass
        assert refused.value.code == "store.not_writer"


def test_no_transaction_without_the_writer_lock(locks_dsn: str) -> None:
    with WriterLock(locks_dsn, NODE) as lock:
        with pytest.raises(StoreError) as refused, lock.transaction():
            pass
        assert refused.value.code == "store.not_writer"
        assert NODE in refused.value.message


def test_a_failed_write_rolls_back_and_keeps_the_lock(locks_dsn: str) -> None:
    with WriterLock(locks_dsn, NODE) as lock:
        assert lock.try_acquire()
        with pytest.raises(psycopg.errors.UndefinedTable), lock.transaction() as conn:
            conn.execute("INSERT INTO writes VALUES ('rolled-back', 1)")
            conn.execute("SELECT * FROM no_such_table")
        assert lock.held and lock.check()
        with lock.transaction() as conn:
            row = conn.execute("SELECT count(*) FROM writes WHERE node = 'rolled-back'").fetchone()
        assert row == (0,)


# ---- two real processes -----------------------------------------------------------------


class Holder:
    """``python -m tests.pg.lockholder``: another process with a lock of its own."""

    def __init__(self, kind: str, mode: str, dsn: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.pg.lockholder", kind, mode, dsn, NODE],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def said(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect(self, word: str, timeout: float = 30) -> None:
        line = self.said(timeout)
        if line != word:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"expected {word!r}, the process said {line!r}; stderr:\n{err}")

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.stop()


@pytest.mark.parametrize("kind", ["writer", "leader"])
def test_a_standby_process_takes_over_within_10_s_of_the_holders_sigkill(
    kind: str, locks_dsn: str, holders: list[Holder]
) -> None:
    lock: SessionLock = (
        WriterLock(locks_dsn, NODE) if kind == "writer" else LeaderLock(locks_dsn, NODE)
    )
    with psycopg.connect(locks_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE writes")
    active = Holder(kind, "hold", locks_dsn)
    holders.append(active)
    active.expect("acquired")
    standby = Holder(kind, "contend", locks_dsn)
    holders.append(standby)
    standby.expect("busy")
    assert standby.said(timeout=1.5) is None  # still waiting while the active one lives
    with lock:
        assert not lock.try_acquire()  # nor can anyone else take it
    killed = time.monotonic()
    active.sigkill()
    standby.expect("acquired", timeout=TAKEOVER)
    assert time.monotonic() - killed < TAKEOVER
    with lock:
        assert not lock.try_acquire()  # the standby holds it now
    with psycopg.connect(locks_dsn) as conn:
        writers = conn.execute("SELECT writer_pid FROM writes").fetchall()
    assert len(writers) == (2 if kind == "writer" else 0)
    assert len(set(writers)) == len(writers)  # two sessions, one after the other
