"""``accord serve``: the node's gRPC servers in one process (docs/DESIGN.md §10).

Two ``grpc.aio`` servers share one event loop: PeerExchange on the TCP listen address with
mutual TLS, and Officer on the unix socket ``DATA/officer.sock`` (mode 0660). Two servers
rather than two ports of one server, so that no interceptor mistake can expose the Officer
API on the network or PeerExchange without TLS (ADR 0007). Both serve gRPC health checking
and reflection. Background tasks: the cosigner (node/rpc/cosigning.py) and the refresh of the
TLS client CAs from the trust store (node/rpc/transport.py).

On PostgreSQL two processes may serve one node (docs/adr/0026): :meth:`NodeServer.lead`
waits as a standby (Status only, on its own Officer socket) until this process holds the
node's leader lock, and a leader that loses the lock stops.

Programmatic use::

    server = NodeServer(node, ServeOptions(listen="127.0.0.1:7441"))
    await server.start()          # serving; server.peer_port, server.officer_socket
    ...
    await server.stop()           # graceful, within options.grace_seconds
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from exchange.errors import ConfigError, StoreError
from node import clock
from node.home import OFFICER_SOCKET, Node
from node.logsetup import failure_level
from node.rpc import leadership as leading
from node.rpc import tls_policy
from node.rpc._pb.accord.v1 import officer_pb2, officer_pb2_grpc, peer_pb2, peer_pb2_grpc
from node.rpc.cosigning import Cosigner
from node.rpc.errors_map import Audience, EdgeInterceptor
from node.rpc.leadership import Leadership, recorded_leader
from node.rpc.officer_service import ExchangeOfficerService, OfficerService, StandbyOfficer
from node.rpc.peer_service import PeerExchangeService, WitnessService
from node.rpc.sync import OutboxSignal, Puller
from node.rpc.transport import (
    ROOTS_REFRESH_SECONDS,
    PartnerChannels,
    PartnerRoots,
    PeerGuard,
    server_options,
)
from node.services.alerts import AlertRunner
from node.services.inbox import BatchOutcome
from node.services.keywatch import CHECK_SECONDS, WARN_DAYS, KeyWatch
from node.services.warning import DeadlineWatch

MAX_UNIX_PATH = 107
PEER_SERVICE = peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"].full_name
OFFICER_SERVICE = officer_pb2.DESCRIPTOR.services_by_name["Officer"].full_name
log = structlog.get_logger("accord.server")


@dataclass(frozen=True)
class ServeOptions:
    listen: str | None = None  # HOST:PORT; default: the node's config
    ready_file: Path | None = None  # written (JSON) once both servers accept calls
    witness_only: bool = False  # accord witness serve: AddCheckpoint/GetCheckpoint only
    follow: tuple[str, ...] = ()  # witness: the partners whose logs it cosigns
    cosign: bool = True  # run the cosigner (off for a witness and in some tests)
    grace_seconds: float = 5.0
    cosign_poll_seconds: float = 2.0
    roots_refresh_seconds: float = ROOTS_REFRESH_SECONDS  # re-read partners' TLS CAs
    # Partners allowed to call over a classical TLS group (docs/adr/0015): logged, in status.
    allow_classical_tls: tuple[str, ...] = ()
    # How often the key schedule runs (new encryption epochs, expiry warnings; ADR 0017).
    key_check_seconds: float = CHECK_SECONDS
    warn_days: int = WARN_DAYS  # key.expiry_warning log lines for what ends this soon
    # How often passed deadlines of the warning loop are looked for (ADR 0022).
    deadline_check_seconds: float = 5.0


def _cannot_listen(listen: str) -> ConfigError:
    return ConfigError(
        f"cannot listen on {listen} (in use, or not an address of this host)",
        code="config.listen",
        next_step="Stop whatever uses the port, or pass another --listen HOST:PORT.",
    )


def _prepare_unix_socket(path: Path) -> None:
    if len(str(path).encode()) > MAX_UNIX_PATH:
        raise ConfigError(
            f"officer socket path {path} is longer than {MAX_UNIX_PATH} bytes",
            next_step="Use a shorter --data directory path.",
        )
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ConfigError(f"{path} exists and is not a socket", next_step="Move that file away.")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left behind by a server that did not stop cleanly
        return
    finally:
        probe.close()
    raise ConfigError(
        f"another 'accord serve' is already running on {path}",
        code="config.already_serving",
        next_step="Stop it first (SIGTERM), or use another --data directory.",
    )


STOP_STEP_SECONDS = 5.0


class NodeServer:
    def __init__(
        self,
        node: Node,
        options: ServeOptions | None = None,
        *,
        peer_service: peer_pb2_grpc.PeerExchangeServicer | None = None,
        officer_service: Callable[[Node, Cosigner | None], officer_pb2_grpc.OfficerServicer]
        | None = None,
        now: Callable[[], datetime] = clock.now,
    ) -> None:
        self.node = node
        self.options = options or ServeOptions()
        self._now = now
        self._peer_service = peer_service
        self._officer_factory = officer_service
        self.signal: OutboxSignal | None = None
        self.puller: Puller | None = None
        self.channels = PartnerChannels(node)
        self.cosigner: Cosigner | None = None
        self.keywatch: KeyWatch | None = None
        self.deadlines: DeadlineWatch | None = None
        # Called with each overdue step's payload (services/alerts.py runs on_overdue).
        self.on_overdue: Callable[[dict[str, Any]], None] | None = None
        # Escalation commands of config.toml [alerts] (docs/adr/0021-alert-commands.md).
        self.alerts = AlertRunner(node.config.alerts)
        self._officer_service: officer_pb2_grpc.OfficerServicer | None = None
        self._roots: PartnerRoots | None = None
        self.peer_port = 0
        self.officer_socket = node.data_dir / OFFICER_SOCKET
        self.leadership: Leadership | None = None  # on PostgreSQL (docs/adr/0026)
        self.lost = asyncio.Event()  # set when a leader finds its leader lock gone
        self._tasks: list[asyncio.Task[None]] = []
        self._health: list[tuple[health.aio.HealthServicer, str]] = []
        self._servers: list[grpc.aio.Server] = []
        self._owns_socket = False

    @property
    def listen(self) -> str:
        return self.options.listen or self.node.config.listen

    async def lead(self, stop: asyncio.Event) -> bool:
        """On PostgreSQL, become the node's leader before serving (docs/adr/0026): take the
        leader lock, or stand by (Status only, nothing signed, sent, applied or written)
        until it is granted. True once this process leads (always on SQLite); False when
        ``stop`` was set while standing by."""
        leadership = Leadership.for_node(self.node)
        if leadership is None:
            return True
        self.leadership = leadership
        if not await asyncio.to_thread(leadership.try_lead):
            await self._stand_by(leadership, stop)
            if stop.is_set() or not leadership.lock.held:
                return False
            self.node.reload_keys()  # the leader may have rotated keys while we waited
            self.node.reopen_store(wait=RECONNECT_SECONDS)  # a fresh session for the writes
        me = leadership.take(self._now())
        log.info("server.leading", node=self.node.config.node, host=me.host, pid=me.pid)
        return True

    async def _stand_by(self, leadership: Leadership, stop: asyncio.Event) -> None:
        node = self.node
        node.check_passphrase()  # a wrong passphrase fails now, not when it must take over
        _prepare_unix_socket(self.officer_socket)  # refuses when another server runs here
        server = grpc.aio.server(
            interceptors=[EdgeInterceptor(Audience.OFFICER)], options=server_options()
        )
        # Every RPC but Status is refused by StandbyOfficer (set on the class, not seen by mypy).
        standby = StandbyOfficer(node, leadership)  # type: ignore[abstract]
        officer_pb2_grpc.add_OfficerServicer_to_server(standby, server)
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        old_umask = os.umask(0o117)
        try:
            server.add_insecure_port(f"unix:{self.officer_socket}")
            await server.start()
        finally:
            os.umask(old_umask)
        self.officer_socket.chmod(0o660)
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        await checker.set(OFFICER_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        leader = recorded_leader(node)
        log.info(
            "server.standby",
            node=node.config.node,
            leader_host=None if leader is None else leader.host,
            leader_pid=None if leader is None else leader.pid,
        )
        followed = 0.0
        try:
            while not stop.is_set():
                try:
                    if await asyncio.to_thread(leadership.wait):
                        break
                except StoreError as e:  # the database server is down or restarting
                    log.warning("server.standby_waiting", node=node.config.node, code=e.code)
                    await asyncio.sleep(leading.WAIT_SLICE_SECONDS)
                    continue
                if time.monotonic() - followed >= leading.FOLLOW_SECONDS:
                    leadership.follow_highwater()
                    followed = time.monotonic()
        finally:
            await server.stop(0)
            with contextlib.suppress(FileNotFoundError):
                self.officer_socket.unlink()
        if stop.is_set():
            leadership.release()
            return
        log.info("server.taking_over", node=node.config.node)

    async def _watch_leadership(self, leadership: Leadership) -> None:
        """A leader asks the server every second whether it still holds the lock; when it
        does not (its session was ended), it stops serving at once (``lost``)."""
        while True:
            await asyncio.sleep(leading.CHECK_SECONDS)
            if not await asyncio.to_thread(leadership.still_leads):
                log.error("server.leadership_lost", node=self.node.config.node)
                self.lost.set()
                return

    async def start(self) -> None:
        node, opts = self.node, self.options
        node.keyring()  # a wrong passphrase fails here, before anything listens
        if not tls_policy.TLS12_REFUSED:
            raise ConfigError(
                "grpc was imported before Accord set its TLS policy: TLS 1.2 would be accepted",
                code="transport.tls12_not_refused",
                next_step="Start the node with the 'accord' command (or import node first).",
            )
        for peer in opts.allow_classical_tls:
            node.trust_store().trusted_chain(peer, self._now())  # names a trusted partner
        if opts.allow_classical_tls:
            log.warning(
                "transport.classical_tls_allowed",
                peers=sorted(opts.allow_classical_tls),
                group_required=tls_policy.HYBRID_GROUP,
            )
        # Never serve (or sign, or let partners cosign) a log shorter than what this node
        # published or holding an entry it did not write (docs/THREATS.md I04, I07, I09).
        node.check_log()
        for peer in opts.follow:
            node.trust_store().trusted_chain(peer, self._now())  # each followed log is trusted
        roots = PartnerRoots(node, self._now())
        self._roots = roots
        if opts.cosign and not opts.witness_only:
            self.cosigner = Cosigner(
                node, self.channels, now=self._now, poll_seconds=opts.cosign_poll_seconds
            )
        self.signal = OutboxSignal()
        poke = self.cosigner.poke if self.cosigner is not None else None
        if not opts.witness_only:
            self.puller = Puller(
                node, self.channels, now=self._now, on_applied=poke, on_outcome=self._applied
            )
        peer_service = self._peer_service or (
            WitnessService(node, follow=opts.follow, now=self._now)
            if opts.witness_only
            else PeerExchangeService(
                node,
                follow=opts.follow or None,
                now=self._now,
                signal=self.signal,
                on_commit=poke,
            )
        )

        _prepare_unix_socket(self.officer_socket)  # refuses when another server runs here
        guard = PeerGuard(
            node, now=self._now, classical_tls_allowed=frozenset(opts.allow_classical_tls)
        )
        peer_server = self._new_server(Audience.PEER, guard)
        peer_pb2_grpc.add_PeerExchangeServicer_to_server(peer_service, peer_server)
        self._add_health_and_reflection(peer_server, PEER_SERVICE)
        host = self.listen.rpartition(":")[0]
        try:
            self.peer_port = peer_server.add_secure_port(self.listen, roots.credentials())
        except RuntimeError as e:  # grpc's way of saying the bind failed
            raise _cannot_listen(self.listen) from e
        if self.peer_port == 0:
            raise _cannot_listen(self.listen)

        officer_server = self._new_server(Audience.OFFICER)
        self._officer_service = self._officer()
        if isinstance(self._officer_service, OfficerService):
            self._officer_service.leadership = self.leadership
        officer_pb2_grpc.add_OfficerServicer_to_server(self._officer_service, officer_server)
        self._add_health_and_reflection(officer_server, OFFICER_SERVICE)
        old_umask = os.umask(0o117)  # the socket is born 0660
        try:
            officer_server.add_insecure_port(f"unix:{self.officer_socket}")
            for server in self._servers:
                await server.start()
        finally:
            os.umask(old_umask)
        self._owns_socket = True
        self.officer_socket.chmod(0o660)
        for checker, service in self._health:
            for name in ("", service):
                await checker.set(name, health_pb2.HealthCheckResponse.SERVING)

        self._tasks.append(asyncio.create_task(self._refresh_roots(roots)))
        if not opts.witness_only:  # a witness exchanges nothing: its card has no use for epochs
            self.keywatch = KeyWatch(
                node,
                now=self._now,
                interval=opts.key_check_seconds,
                warn_days=opts.warn_days,
                on_change=self.keys_changed,
            )
            self._tasks.append(asyncio.create_task(self.keywatch.run()))
            self.deadlines = DeadlineWatch(
                node,
                now=self._now,
                interval=opts.deadline_check_seconds,
                on_overdue=self._overdue,
            )
            self._tasks.append(asyncio.create_task(self.deadlines.run()))
        if self.leadership is not None:
            self._tasks.append(asyncio.create_task(self._watch_leadership(self.leadership)))
        if self.cosigner is not None:
            self._tasks.append(asyncio.create_task(self.cosigner.run()))
        if self.puller is not None:
            self._tasks.append(asyncio.create_task(self.puller.run()))
        log.info(
            "server.started",
            node=node.config.node,
            listen=f"{host}:{self.peer_port}",
            path=str(self.officer_socket),
            kind="witness" if opts.witness_only else "node",
        )
        if opts.ready_file is not None:
            self._write_ready(opts.ready_file)

    def _officer(self) -> officer_pb2_grpc.OfficerServicer:
        if self._officer_factory is not None:
            return self._officer_factory(self.node, self.cosigner)
        if self.options.witness_only:
            # The generated stubs mark every RPC abstract; unserved ones answer UNIMPLEMENTED.
            return OfficerService(self.node, self.cosigner)  # type: ignore[abstract]
        return ExchangeOfficerService(
            self.node,
            self.cosigner,
            signal=self.signal,
            puller=self.puller,
            now=self._now,
            classical_tls_allowed=frozenset(self.options.allow_classical_tls),
            on_keys_rotated=self.keys_changed,
        )

    def _applied(self, peer: str, outcome: BatchOutcome) -> None:
        """A batch from ``peer`` committed: run ``on_critical`` for each critical report
        applied, and wake the inbox watchers of this process."""
        self.alerts.on_applied(outcome.items)
        wake = getattr(self._officer_service, "inbox_changed", None)
        if wake is not None:
            wake()

    def keys_changed(self) -> None:
        """Our keys were rotated in this process: the peer port presents the new TLS
        certificate from the next handshake on, not only at the next periodic refresh."""
        if self._roots is not None:
            self._roots.refresh(self._now())

    def _new_server(self, audience: Audience, guard: PeerGuard | None = None) -> grpc.aio.Server:
        interceptor = (
            EdgeInterceptor(audience) if guard is None else EdgeInterceptor(audience, guard)
        )
        server = grpc.aio.server(interceptors=[interceptor], options=server_options())
        self._servers.append(server)
        return server

    def _add_health_and_reflection(self, server: grpc.aio.Server, service: str) -> None:
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        self._health.append((checker, service))
        names = (service, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)

    def _write_ready(self, path: Path) -> None:
        doc = {
            "node": self.node.config.node,
            "peer_port": self.peer_port,
            "officer_socket": str(self.officer_socket),
            "pid": os.getpid(),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc), "utf-8")
        os.replace(tmp, path)

    def _overdue(self, payload: dict[str, Any]) -> None:
        """A step passed its deadline (logged once as ack.overdue): run [alerts] on_overdue."""
        if self.on_overdue is not None:
            self.on_overdue(payload)
        self.alerts.fire_soon("overdue", payload)

    async def _refresh_roots(self, roots: PartnerRoots) -> None:
        while True:
            await asyncio.sleep(self.options.roots_refresh_seconds)
            try:
                roots.refresh(self._now())
            except Exception as e:  # keep serving with the CAs we have
                getattr(log, failure_level(e))("transport.refresh_failed", exc_info=e)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running ones finish within the grace period."""
        grace = self.options.grace_seconds if grace is None else grace
        for checker, _service in self._health:
            await checker.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task stuck in a call must not hold up the shutdown
            _done, stuck = await asyncio.wait(self._tasks, timeout=STOP_STEP_SECONDS)
            for task in stuck:
                log.warning("server.task_not_stopped", method=task.get_name())
        self._tasks.clear()
        closing = getattr(self._officer_service, "close", None)
        if closing is not None:  # open WatchInbox streams end now, not at the grace's end
            closing()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))
        await self.alerts.drain(timeout=STOP_STEP_SECONDS)
        try:
            await asyncio.wait_for(self.channels.close(), timeout=STOP_STEP_SECONDS)
        except TimeoutError:
            log.warning("server.channels_not_closed")
        if self._owns_socket:
            with contextlib.suppress(FileNotFoundError):
                self.officer_socket.unlink()
            self._owns_socket = False
        if self.options.ready_file is not None:  # not ready any more: scripts waiting see it
            with contextlib.suppress(FileNotFoundError):
                self.options.ready_file.unlink()
        if self.leadership is not None:  # a standby takes over now, not at a timeout
            self.leadership.release()
        log.info("server.stopped", node=self.node.config.node)


async def serve_until_signalled(server: NodeServer) -> None:
    """Lead (on PostgreSQL, maybe after standing by), start, serve until SIGTERM or SIGINT
    or until the leader lock is lost, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lost = False
    try:
        if await server.lead(stop):
            await server.start()
            waits = {asyncio.create_task(stop.wait()), asyncio.create_task(server.lost.wait())}
            _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            lost = server.lost.is_set() and not stop.is_set()
            log.info("server.stopping", node=server.node.config.node)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
    if lost:
        raise StoreError(
            f"this process lost the leader lock of node {server.node.config.node} and stopped",
            code="server.leadership_lost",
            next_step="Start it again: it waits as a standby while another process leads.",
        )


RECONNECT_SECONDS = 600.0  # how long a node on PostgreSQL waits for its server to come back


def run(node: Node, options: ServeOptions) -> None:
    """Serve ``node`` in this process until a signal; the caller closes the node.

    On PostgreSQL a leader that lost its lock (the database server restarted, or its
    session was ended) stops serving at once, reconnects (waiting up to
    ``RECONNECT_SECONDS`` for the server) and serves again: as the leader if the lock is
    free, as a standby otherwise (docs/adr/0026)."""
    while True:
        try:
            asyncio.run(serve_until_signalled(NodeServer(node, options)))
            return
        except StoreError as e:
            if e.code != "server.leadership_lost":
                raise
        log.warning("server.restarting", node=node.config.node, reason="leadership_lost")
        node.reopen_store(wait=RECONNECT_SECONDS)
        node.reload_keys()
