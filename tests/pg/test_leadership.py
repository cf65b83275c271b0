"""docs/THREATS.md C05 against a real PostgreSQL server (docs/adr/0026): a process that
lost the leader lock cannot write, two processes never both lead, and a standby's copy of
the high-water mark catches a database restored from an old backup.

Each test is the attack first: the edit, the stale leader, the restore; then the state it
leaves behind."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from exchange.errors import KeyringError, StoreError
from node.home import Node, init_node
from node.rpc.leadership import LEADER_KEY, Leadership, recorded_leader
from node.services.log import HIGHWATER_FILE
from node.store import MIGRATIONS, PgStore
from tests.builders import second_data_dir
from tests.conftest import PASSPHRASE
from tests.postgres import SUPERUSER, PgCluster

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _append(node: Node, count: int, at: datetime = NOW) -> None:
    with node.store.transaction() as db:
        node.log.append(
            db,
            [("policy.changed", at, {"policy_digest": f"sha256:{i:064x}"}) for i in range(count)],
        )


def _terminate(cluster: PgCluster, pid: int) -> None:
    """What a network partition or an administrator's pg_terminate_backend does."""
    with cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def _leaves(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM log_leaves").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def pg_node(
    pg_cluster: PgCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Node, str]]:
    name = "lead_" + request.node.name.removeprefix("test_")[:40]
    dsn = pg_cluster.createdb(name)
    node = init_node(
        tmp_path / "pk-moi",
        node="pk-moi",
        name="pk-moi",
        endpoint="127.0.0.1:7441",
        passphrase=None,
        now=NOW,
        database=dsn,
    )
    yield node, dsn
    node.close()


def _second(node: Node) -> Node:
    """The same node opened from a second data directory (keys shared, as for a standby)."""
    return Node.open(second_data_dir(node.data_dir), lambda: PASSPHRASE)


@pytest.mark.threat("C05")
def test_a_leader_whose_lock_session_ended_cannot_commit(
    pg_cluster: PgCluster, pg_node: tuple[Node, str]
) -> None:
    node, dsn = pg_node
    leadership = Leadership.for_node(node)
    assert leadership is not None and leadership.try_lead()
    leadership.take(NOW)
    _append(node, 3)  # a leader writes
    size = _leaves(dsn)
    pid = leadership.lock.backend_pid
    assert pid is not None
    _terminate(pg_cluster, pid)  # its lock session is gone; this process has not noticed

    with pytest.raises(StoreError) as e:
        _append(node, 5)
    assert e.value.code == "server.not_leader"
    with pytest.raises(StoreError) as e:
        node.checkpoint(NOW)  # nor sign
    assert e.value.code == "server.not_leader"
    assert _leaves(dsn) == size  # nothing was written
    assert not leadership.still_leads()
    leadership.release()


@pytest.mark.threat("C05")
def test_two_processes_never_both_lead(pg_node: tuple[Node, str]) -> None:
    node, _dsn = pg_node
    other = _second(node)
    try:
        first, second = Leadership.for_node(node), Leadership.for_node(other)
        assert first is not None and second is not None
        assert first.try_lead()
        assert not second.try_lead() and not second.wait()  # waits a slice, gets nothing
        me = first.take(NOW)
        assert recorded_leader(other) == me  # the standby sees who leads
        first.release()
        assert second.wait()  # granted as soon as the leader gives it up
        assert not first.try_lead()
        second.take(NOW + timedelta(seconds=1))
        assert recorded_leader(node) is not None
        assert recorded_leader(node) != me
        second.release()
    finally:
        other.close()


def test_no_fence_on_sqlite(tmp_path: Path) -> None:
    node = init_node(
        tmp_path / "n", node="pk-moi", name="n", endpoint="127.0.0.1:7441", passphrase=None, now=NOW
    )
    try:
        assert Leadership.for_node(node) is None  # one process per SQLite file
        assert node.store.get_meta(LEADER_KEY) is None
    finally:
        node.close()


@pytest.mark.threat("C05")
def test_a_standby_follows_the_mark_and_catches_a_restored_backup(
    pg_cluster: PgCluster, pg_node: tuple[Node, str]
) -> None:
    node, dsn = pg_node
    standby = _second(node)
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    assert isinstance(dbname, str)
    try:
        _append(node, 4)
        node.checkpoint(NOW)
        # The operator's backup, taken now (a template copy is a consistent snapshot).
        standby.close()
        node.close()
        with pg_cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}_old" TEMPLATE "{dbname}"')
        node, standby = (
            Node.open(node.data_dir, lambda: PASSPHRASE),
            Node.open(standby.data_dir, lambda: PASSPHRASE),
        )
        _append(node, 6)
        signed = node.checkpoint(NOW + timedelta(minutes=1))  # the leader signs more
        assert standby.follow_highwater() == signed.size  # the standby copies the mark
        assert json.loads((standby.data_dir / HIGHWATER_FILE).read_text())["size"] == signed.size

        # The leader's host is lost, with its own mark; the database is restored from the
        # backup and the standby's process is the one to start.
        standby.close()
        node.close()
        (node.data_dir / HIGHWATER_FILE).unlink()
        with pg_cluster.connect(dbname="postgres", user=SUPERUSER) as conn:
            conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            conn.execute(f'ALTER DATABASE "{dbname}_old" RENAME TO "{dbname}"')
        restored = Node.open(standby.data_dir, lambda: PASSPHRASE)
        try:
            with pytest.raises(StoreError) as e:
                restored.check_log()  # what serve runs before it takes over
            assert e.value.code == "log.rolled_back"
            assert str(signed.size) in str(e.value)
            with pytest.raises(StoreError) as e:
                restored.follow_highwater()
            assert e.value.code == "log.rolled_back"
        finally:
            restored.close()
    finally:
        standby.close()  # closing a closed PostgreSQL connection is a no-op


@pytest.mark.threat("C05")
def test_a_standby_never_raises_its_mark_to_a_checkpoint_it_cannot_verify(
    pg_cluster: PgCluster, pg_node: tuple[Node, str]
) -> None:
    node, dsn = pg_node
    standby = _second(node)
    try:
        _append(node, 2)
        good = node.checkpoint(NOW)
        assert standby.follow_highwater() == good.size
        mark = (standby.data_dir / HIGHWATER_FILE).read_text()
        _append(node, 3)
        # An insider inserts a checkpoint row the node never signed, over a larger size.
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO log_checkpoints (size, root, note, signed_at) "
                "SELECT %s, root, note, signed_at FROM log_checkpoints WHERE size = %s",
                (good.size + 3, good.size),
            )
        with pytest.raises(StoreError) as e:
            standby.follow_highwater()
        assert e.value.code == "log.inconsistent"
        assert (standby.data_dir / HIGHWATER_FILE).read_text() == mark  # not raised
    finally:
        standby.close()


@pytest.mark.threat("C05")
def test_a_leader_and_a_standby_opening_a_new_database_at_once_migrate_it_once(
    pg_cluster: PgCluster,
) -> None:
    """Both processes of a new node start together: each runs the migrations it sees
    missing, under the writer lock, and skips the ones the other ran meanwhile."""
    dsn = pg_cluster.createdb("lead_both_migrate")
    opened: list[PgStore] = []
    failed: list[BaseException] = []
    gate = threading.Barrier(4)

    def open_it() -> None:
        gate.wait()
        try:
            opened.append(PgStore.open(dsn, node_id="pk-moi"))
        except BaseException as e:  # reported below
            failed.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not failed, failed
        assert len(opened) == 4
        versions = [s.schema_version() for s in opened]
        assert versions == [MIGRATIONS[-1][0]] * 4
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT version FROM _migrations ORDER BY version").fetchall()
        assert [int(r[0]) for r in rows] == [m[0] for m in MIGRATIONS]  # each once
    finally:
        for store in opened:
            store.close()


def test_a_standby_checks_the_passphrase_at_start_and_keeps_nothing(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    dsn = pg_cluster.createdb("lead_passphrase")
    made = init_node(
        tmp_path / "pk-moi",
        node="pk-moi",
        name="pk-moi",
        endpoint="127.0.0.1:7441",
        passphrase="the right one",
        now=NOW,
        database=dsn,
    )
    made.close()
    wrong = Node.open(tmp_path / "pk-moi", lambda: "a wrong one")
    right = Node.open(tmp_path / "pk-moi", lambda: "the right one")
    try:
        with pytest.raises(KeyringError):
            wrong.check_passphrase()
        right.check_passphrase()
        assert right._keyring is None  # checked, not kept
    finally:
        wrong.close()
        right.close()
