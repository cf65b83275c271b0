"""The throwaway cluster of tools/pgcluster.py (the tests' fixture: tests/postgres.py), and
the durability node/store/pg.py's pool promises, against a real PostgreSQL server started
from ``initdb`` (docs/adr/0024)."""

from __future__ import annotations

import os
import pwd

import psycopg
import pytest

from exchange.errors import StoreError
from node.store.pg import describe, open_pool
from tests.postgres import SERVER_USER, SUPERUSER, PgCluster, require_server_bin


def test_the_cluster_listens_on_a_short_unix_socket_only(pg_cluster: PgCluster) -> None:
    with pg_cluster.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('listen_addresses'), current_setting('fsync'),"
            " current_setting('synchronous_commit'),"
            " current_setting('server_version_num')::int, current_user, current_database()"
        ).fetchone()
    assert row is not None
    listen, fsync, synchronous_commit, version, user, database = row
    assert (listen, fsync, synchronous_commit) == ("", "on", "on")
    assert (user, database) == ("accord", "accord")
    assert isinstance(version, int) and version >= 150000
    socket = pg_cluster.socket_dir / ".s.PGSQL.5432"
    assert socket.is_socket()
    assert len(str(socket).encode()) < 100  # sun_path is 108 bytes, NUL included
    if os.geteuid() == 0:  # initdb refuses root: the server runs as Debian's postgres user
        assert pg_cluster.data_dir.stat().st_uid == pwd.getpwnam(SERVER_USER).pw_uid


def test_createdb_gives_a_database_of_the_test_role(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.createdb("created")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_database(), pg_get_userbyid(datdba) FROM pg_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row == ("created", "accord")


def test_a_committed_row_survives_sigkill_of_the_server(pg_cluster: PgCluster) -> None:
    """``kill -9`` of the database server (postmaster and backends) and a restart on the
    same data directory: what COMMIT acknowledged is there, what was in flight is not."""
    dsn = pg_cluster.createdb("crash")
    pool = open_pool(dsn)
    try:
        with pool.connection() as conn:
            conn.execute("CREATE TABLE acked (n int PRIMARY KEY)")
            with conn.transaction():
                conn.execute("INSERT INTO acked VALUES (1), (2)")
        in_flight = psycopg.connect(dsn)  # an open transaction when the server dies
        in_flight.execute("INSERT INTO acked VALUES (3)")
        pid = pg_cluster.postmaster_pid()
        assert pid is not None
        try:
            pg_cluster.kill()
            assert not pg_cluster.running
        finally:
            pg_cluster.start()
        assert pg_cluster.postmaster_pid() not in (None, pid)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT n FROM acked ORDER BY n").fetchall()
        assert rows == [(1,), (2,)]
        with pytest.raises(psycopg.OperationalError):
            in_flight.execute("SELECT 1")
        in_flight.close()
    finally:
        pool.close()
    assert "database system was interrupted" in pg_cluster.log_file.read_text("utf-8")


def test_stop_and_start_keep_the_data(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.createdb("restart")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    try:
        pg_cluster.stop()
        assert not pg_cluster.running
    finally:
        pg_cluster.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT answer FROM kept").fetchall() == [(42,)]


def test_the_pool_commits_synchronously_whatever_the_role_default(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.createdb("asyncrole")
    with pg_cluster.connect("asyncrole", SUPERUSER) as admin:
        admin.execute("ALTER ROLE accord IN DATABASE asyncrole SET synchronous_commit = off")
    with psycopg.connect(dsn) as plain:  # what a connection of its own would get
        assert plain.execute("SHOW synchronous_commit").fetchone() == ("off",)
    pool = open_pool(dsn, min_size=2)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
                assert conn.autocommit
    finally:
        pool.close()


def test_the_pool_refuses_a_server_without_fsync() -> None:
    """A cluster of its own: fsync is a command-line setting of the shared one."""
    unsafe = PgCluster.create(require_server_bin(), settings={"fsync": "off"})
    try:
        with pytest.raises(StoreError) as refused:
            open_pool(unsafe.dsn)
        assert refused.value.code == "store.not_durable"
        assert "fsync = off" in refused.value.message
    finally:
        unsafe.destroy()
    assert not unsafe.base.exists()


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    dsn = "postgresql://accord:hunter2@/accord?host=/nonexistent-apg&connect_timeout=1"
    with pytest.raises(StoreError) as refused:
        open_pool(dsn, timeout=1.0)
    assert refused.value.code == "store.unavailable"
    assert "hunter2" not in refused.value.message
    assert describe(dsn) == "database accord on /nonexistent-apg"
