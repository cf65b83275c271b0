"""Active/standby for a node on PostgreSQL (docs/adr/0026).

Two ``accord serve`` processes for one node (same key file, same database) race for the
node's leader lock. The one that holds it serves; the other is a standby: it answers
``Status`` on its own Officer socket and nothing else, binds no peer port, loads no private
key, writes nothing, follows the high-water mark, and takes over the moment the leader's
database session ends. The leader fences its own store with the lock (every write
transaction checks, inside the transaction, that the lock is still granted to it) and stops
when it loses the lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from exchange.errors import AccordError, StoreError
from exchange.times import format_time
from node.home import Node
from node.store import PgStore
from node.store.pg import LeaderLock

log = structlog.get_logger("accord.server")

LEADER_KEY = "leader"  # the meta row naming the process that leads (host, pid, data dir)
WAIT_SLICE_SECONDS = 1.0  # a standby waits on the lock in slices, so SIGTERM stops it soon
FOLLOW_SECONDS = 2.0  # how often a standby raises its high-water mark to the leader's
CHECK_SECONDS = 1.0  # how often the leader asks the server whether it still holds the lock


@dataclass(frozen=True)
class Leader:
    """Who leads a node, as the leader recorded it."""

    host: str
    pid: int
    data_dir: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.data_dir}) since {self.since}"


def recorded_leader(node: Node) -> Leader | None:
    """The process the ``leader`` meta row names, or None (never led, or unreadable)."""
    raw = node.store.get_meta(LEADER_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return Leader(str(doc["host"]), int(doc["pid"]), str(doc["data_dir"]), str(doc["since"]))
    except (ValueError, KeyError, TypeError):
        return None


class Leadership:
    """The leader lock of one serve process. ``None`` from :meth:`for_node` on SQLite."""

    def __init__(self, node: Node, lock: LeaderLock) -> None:
        self.node = node
        self.lock = lock
        self.role = "standby"

    @classmethod
    def for_node(cls, node: Node) -> Leadership | None:
        if not isinstance(node.store, PgStore) or node.config.database is None:
            return None
        return cls(node, LeaderLock(node.config.database, node.config.node))

    @property
    def leads(self) -> bool:
        return self.role == "leader"

    def try_lead(self) -> bool:
        return self.lock.try_acquire()

    def wait(self) -> bool:
        """Wait one slice for the lock (blocking: run it in a thread); True once held."""
        return self.lock.acquire(timeout=WAIT_SLICE_SECONDS)

    def take(self, now: datetime) -> Leader:
        """This process holds the lock: fence the store with it and record who leads."""
        store = self.node.store
        assert isinstance(store, PgStore)
        store.fence = self.lock
        me = Leader(socket.gethostname(), os.getpid(), str(self.node.data_dir), format_time(now))
        with store.transaction() as db:
            store.set_meta(db, LEADER_KEY, json.dumps(me.__dict__, sort_keys=True))
        self.role = "leader"
        return me

    def still_leads(self) -> bool:
        """A round trip to the server: is the lock still granted to this process?"""
        return self.lock.check()

    def follow_highwater(self) -> int | None:
        """As a standby: raise this process's high-water mark to the newest checkpoint the
        leader signed, once verified with the node's public log key (ADR 0026)."""
        try:
            return self.node.follow_highwater()
        except AccordError as e:  # logged; the takeover's own check refuses such a log
            log.warning("server.highwater_not_followed", code=e.code)
            if e.code == "store.unavailable":  # the database restarted: a new session
                with contextlib.suppress(AccordError):
                    self.node.reopen_store()
            return None

    def release(self) -> None:
        store = self.node.store
        if isinstance(store, PgStore) and store.fence is self.lock:
            store.fence = None
        self.lock.release()
        self.role = "standby"


def standby_error(node: Node) -> StoreError:
    leader = recorded_leader(node)
    who = f": the leader is {leader.describe()}" if leader is not None else ""
    return StoreError(
        f"this process is a standby of node {node.config.node}{who}",
        code="server.standby",
        next_step="Run the command with --data set to the leader's data directory.",
    )


def leader_fields(leadership: Leadership | None, node: Node) -> dict[str, Any]:
    """The Status fields ``role`` and ``leader_*`` (empty on SQLite)."""
    if leadership is None:
        return {}
    leader = recorded_leader(node)
    out: dict[str, Any] = {"role": leadership.role}
    if leader is not None:
        out |= {
            "leader_host": leader.host,
            "leader_pid": leader.pid,
            "leader_data_dir": leader.data_dir,
            "leader_since": leader.since,
        }
    return out
