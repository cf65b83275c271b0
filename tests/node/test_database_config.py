"""The ``database`` setting (issue 16, docs/adr/0024): a PostgreSQL URL or libpq keyword
string in config.toml puts the node's state in PostgreSQL; anything else is refused naming
the key, and no message or repr ever shows the value (it may hold a password)."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.errors import ConfigError
from node.config import NodeConfig
from node.home import Node, init_node
from node.store import PgStore, Store
from node.store.pg import WriterLock
from tests.conftest import PASSPHRASE, Result
from tests.postgres import PgCluster

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = "hunter2-never-shown"


def _config(tmp_path: Path, database: str) -> Path:
    (tmp_path / "config.toml").write_text(
        f"database = {database}\n"
        '[node]\nid = "pk-moi"\nname = "Agency"\nendpoint = "127.0.0.1:7441"\n',
        "utf-8",
    )
    return tmp_path


@pytest.mark.parametrize(
    "value",
    [
        f"postgresql://accord:{SECRET}@db.example:5432/accord",
        f"postgres://accord:{SECRET}@db.example/accord?sslmode=verify-full",
        f"host=/run/postgresql dbname=accord user=accord password={SECRET}",
    ],
)
def test_a_postgresql_url_or_keyword_string_is_kept_and_never_shown(
    tmp_path: Path, value: str
) -> None:
    config = NodeConfig.load(_config(tmp_path, f'"{value}"'))
    assert config.database == value
    assert SECRET not in repr(config)
    assert tomllib.loads(config.to_toml())["database"] == value


@pytest.mark.parametrize(
    "value",
    [
        '"sqlite:///var/lib/accord/node.db"',
        f'"mysql://root:{SECRET}@db/accord"',
        '"just-a-name"',
        f'"host=/tmp password={SECRET} dangling"',
        '""',
        "5432",
        '["postgresql://a/b"]',
    ],
)
def test_anything_else_is_refused_naming_the_key_not_the_value(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        NodeConfig.load(_config(tmp_path, value))
    assert e.value.code == "config.database"
    assert "config database" in str(e.value)
    assert SECRET not in str(e.value) + str(e.value.next_step)


def test_without_the_setting_the_node_stays_on_sqlite(tmp_path: Path) -> None:
    node = init_node(
        tmp_path / "n", node="pk-moi", name="Agency", endpoint="127.0.0.1:7441",
        passphrase=None, now=NOW,
    )  # fmt: skip
    try:
        assert isinstance(node.store, Store)
        assert (tmp_path / "n" / "node.db").is_file()
        assert "database" not in (tmp_path / "n" / "config.toml").read_text("utf-8")
    finally:
        node.close()


def test_init_with_a_bad_database_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        init_node(
            tmp_path / "n", node="pk-moi", name="Agency", endpoint="127.0.0.1:7441",
            passphrase=None, now=NOW, database=f"mysql://root:{SECRET}@db/x",
        )  # fmt: skip
    assert "--database" in str(e.value) and SECRET not in str(e.value)
    assert not (tmp_path / "n").exists()


def test_init_database_puts_the_state_in_postgresql_and_keys_in_the_directory(
    pg_cluster: PgCluster, accord: Callable[..., Result], tmp_path: Path
) -> None:
    dsn = pg_cluster.createdb("config_init_node")
    data = tmp_path / "pk-moi"
    args = ["--node", "pk-moi", "--name", "Agency", "--endpoint", "127.0.0.1:7441"]
    r = accord("--data", data, "init", *args, "--database", dsn)
    assert r.code == 0, r.err
    assert NodeConfig.load(data).database == dsn
    held = sorted(p.name for p in data.iterdir())
    assert held == ["config.toml", "keys", "log.highwater", "log.highwater.lock", "tls"]
    node = Node.open(data, lambda: PASSPHRASE)
    try:
        assert isinstance(node.store, PgStore)
        node.check_log()  # a REPEATABLE READ snapshot on PostgreSQL
        assert node.log.size() == 1 and node.own_chain().latest.node == "pk-moi"
    finally:
        node.close()
    # A second node on the same database is refused; the directory is left clean.
    again = accord("--data", tmp_path / "other", "init", *args, "--database", dsn)
    assert again.code != 0 and "already holds an Accord node" in again.err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("node_id", [None, "pk-moi"])
def test_write_transactions_on_postgresql_queue_like_sqlite_begin_immediate(
    pg_cluster: PgCluster, node_id: str | None
) -> None:
    """Two connections to one node's database: the second writer waits for the first to
    commit, then reads what it wrote (the log's next index cannot be taken twice); with a
    node id through the node's WriterLock, without one a transaction-scoped lock."""
    dsn = pg_cluster.createdb(f"config_writer_queue_{node_id is None}")
    first, second = PgStore.open(dsn, node_id=node_id), PgStore.open(dsn, node_id=node_id)
    seen: list[str | None] = []
    try:
        with first.transaction() as db:
            first.set_meta(db, "k", "first")
            waiter = threading.Thread(target=lambda: _write_after(second, seen))
            waiter.start()
            waiter.join(timeout=1.0)
            assert waiter.is_alive()  # queued behind the open transaction
        waiter.join(timeout=30)
        assert seen == ["first"]
        assert first.get_meta("k") == "second"
    finally:
        first.close()
        second.close()


def test_a_node_store_writes_only_under_its_writer_lock(pg_cluster: PgCluster) -> None:
    """docs/adr/0024: the node's writes run on the session that holds its WriterLock, taken
    for the transaction and given up after it commits."""
    dsn = pg_cluster.createdb("config_writer_lock")
    store = PgStore.open(dsn, node_id="pk-moi")
    other = WriterLock(dsn, "pk-moi")
    try:
        assert store.writer is not None
        with store.transaction() as db:
            store.set_meta(db, "k", "v")
            assert store.writer.check() and store.writer.uses(store.conn)
            assert not other.try_acquire()
        assert other.try_acquire()  # given up at commit
        other.unlock()
    finally:
        other.release()
        store.close()


def _write_after(store: PgStore, seen: list[str | None]) -> None:
    with store.transaction() as db:
        seen.append(store.get_meta("k"))
        store.set_meta(db, "k", "second")


def test_read_snapshot_on_postgresql_sees_one_state(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.createdb("config_snapshot")
    reader, writer = PgStore.open(dsn), PgStore.open(dsn)
    try:
        with writer.transaction() as db:
            writer.set_meta(db, "k", "before")
        with reader.read_snapshot():
            assert reader.get_meta("k") == "before"
            with writer.transaction() as db:
                writer.set_meta(db, "k", "after")
            assert reader.get_meta("k") == "before"  # the snapshot, not the latest commit
        assert reader.get_meta("k") == "after"
    finally:
        reader.close()
        writer.close()
