"""Real nodes serving each other: two ``accord serve`` processes, mutual TLS, health,
GetCard, cosigned checkpoints, audit, clean SIGTERM; and the witness-only mode in-process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from exchange.errors import ConfigError
from node import clock
from node.home import Node, init_node
from node.rpc._pb.accord.v1 import (
    card_pb2,
    log_pb2,
    officer_pb2,
    officer_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from node.rpc.errors_map import read_error_detail
from node.rpc.server import NodeServer, ServeOptions
from node.rpc.transport import channel_options, client_credentials
from tests.builders import sqlite_store
from tests.conftest import PASSPHRASE, Result, audit_anchors
from tests.integration.conftest import ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)
COSIGN_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0


def _open(data: Path) -> Node:
    return Node.open(data, lambda: PASSPHRASE)


def _peer_channel(caller: Node, callee: Node) -> grpc.Channel:
    card = callee.own_chain().latest
    return grpc.secure_channel(
        card.endpoint, client_credentials(caller, card), options=channel_options()
    )


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT).status)


def _wait_cosigned(accord: Callable[..., Result], data: Path, partner: str) -> dict[str, object]:
    deadline = time.monotonic() + COSIGN_TIMEOUT
    while True:
        r = accord("--data", data, "log", "checkpoint", "--json")
        assert r.code == 0, r.err
        doc = r.json()
        assert isinstance(doc, dict)
        if partner in doc["cosigned_by"]:
            return doc
        if time.monotonic() > deadline:
            pytest.fail(f"{data.name}'s checkpoint not cosigned by {partner}: {doc}")
        time.sleep(0.1)


def test_two_nodes_serve_each_other_and_cosign(
    partners: tuple[Path, Path],
    servers: Callable[..., ServerProcess],
    accord: Callable[..., Result],
    tmp_path: Path,
) -> None:
    a_dir, b_dir = partners
    a_proc, b_proc = servers(a_dir), servers(b_dir)
    ready_a, ready_b = a_proc.wait_ready(), b_proc.wait_ready()
    a, b = _open(a_dir), _open(b_dir)
    try:
        # Health on both peer ports (over mutual TLS, as a partner) and both officer sockets.
        with _peer_channel(a, b) as to_b, _peer_channel(b, a) as to_a:
            assert _health(to_b) == health_pb2.HealthCheckResponse.SERVING
            assert _health(to_a) == health_pb2.HealthCheckResponse.SERVING
            got = peer_pb2_grpc.PeerExchangeStub(to_b).GetCard(
                card_pb2.GetCardRequest(), timeout=RPC_TIMEOUT
            )
            assert got.card.card == b.own_chain().signed[-1].card_bytes
        for ready in (ready_a, ready_b):
            with grpc.insecure_channel(f"unix:{ready['officer_socket']}") as officer:
                assert _health(officer) == health_pb2.HealthCheckResponse.SERVING
            assert Path(str(ready["officer_socket"])).stat().st_mode & 0o777 == 0o660

        # Each node's checkpoint is cosigned by the other, verified and stored.
        for data, partner in ((a_dir, "cn-mps"), (b_dir, "pk-moi")):
            _wait_cosigned(accord, data, partner)
            bundle = tmp_path / f"{data.name}.bundle"
            assert accord("--data", data, "audit", "export", "--out", bundle).code == 0
            r = accord("audit", "verify", bundle, *audit_anchors(accord, a_dir, b_dir), "--json")
            assert r.code == 0, r.out
            report = r.json()
            assert isinstance(report, dict)
            assert report["cosigned_checkpoints"] >= 1

        with grpc.insecure_channel(f"unix:{ready_a['officer_socket']}") as officer:
            status = officer_pb2_grpc.OfficerStub(officer).Status(
                officer_pb2.StatusRequest(), timeout=RPC_TIMEOUT
            )
        assert status.node == "pk-moi"
        assert status.log_size >= status.checkpoint_size > 0
        assert [(p.peer, p.cosigned_size > 0) for p in status.peers] == [("cn-mps", True)]
    finally:
        a.close()
        b.close()

    # SIGTERM: each stops cleanly, with exit code 0, and removes its socket.
    assert a_proc.terminate() == 0, a_proc.logs()
    assert b_proc.terminate() == 0, b_proc.logs()
    assert not Path(str(ready_a["officer_socket"])).exists()
    events = [json.loads(line)["event"] for line in a_proc.logs().splitlines() if line[:1] == "{"]
    assert "server.started" in events and "server.stopped" in events


def test_a_second_server_on_the_same_node_is_refused(
    partners: tuple[Path, Path], servers: Callable[..., ServerProcess]
) -> None:
    a_dir, _b = partners
    first = servers(a_dir)
    first.wait_ready()
    second = servers(a_dir, "serve", "--no-cosign")
    assert second.proc is not None
    assert second.proc.wait(timeout=30) == ConfigError.exit_code
    assert "config.already_serving" in second.logs()
    with grpc.insecure_channel(f"unix:{a_dir / 'officer.sock'}") as officer:
        assert _health(officer) == health_pb2.HealthCheckResponse.SERVING  # still the first's
    assert first.terminate() == 0


# -- accord witness serve (in-process) ---------------------------------------------------


def _node(tmp_path: Path, name: str) -> Node:
    return init_node(
        tmp_path / name,
        node=name,
        name=name,
        endpoint=f"127.0.0.1:{free_port()}",
        passphrase=None,
        now=clock.now(),
    )


def _trust(node: Node, other: Node) -> None:
    chain = other.own_chain()
    node.add_peer(
        chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=clock.now()
    )


def test_witness_serve_cosigns_followed_logs_only(tmp_path: Path) -> None:
    witness, pk, de = (
        _node(tmp_path, "wi-ness"),
        _node(tmp_path, "pk-moi"),
        _node(tmp_path, "de-bka"),
    )
    for n in (pk, de):
        _trust(witness, n)
        _trust(n, witness)

    async def scenario() -> None:
        server = NodeServer(witness, ServeOptions(witness_only=True, follow=("pk-moi",)))
        await server.start()
        try:
            card = witness.own_chain().latest
            for caller, expect in ((pk, None), (de, "witness.not_followed")):
                cp = caller.log.latest_checkpoint()
                assert cp is not None
                async with grpc.aio.secure_channel(
                    card.endpoint, client_credentials(caller, card), options=channel_options()
                ) as channel:
                    stub = peer_pb2_grpc.PeerExchangeStub(channel)
                    request = log_pb2.AddCheckpointRequest(
                        old_size=0, checkpoint=log_pb2.Checkpoint(note=cp.note)
                    )
                    if expect is None:
                        answer = await stub.AddCheckpoint(request, timeout=RPC_TIMEOUT)
                        assert answer.cosignature_lines.startswith(
                            "— wi-ness.accord/witness ".encode()
                        )
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            await stub.GetCard(card_pb2.GetCardRequest(), timeout=RPC_TIMEOUT)
                        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
                        assert read_error_detail(err.value).code == "unimplemented"  # type: ignore[union-attr]
                    else:
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            await stub.AddCheckpoint(request, timeout=RPC_TIMEOUT)
                        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                        assert read_error_detail(err.value).code == expect  # type: ignore[union-attr]
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())
    held = witness.store.conn.execute("SELECT origin FROM witness_state").fetchall()
    assert held == [("pk-moi.accord/log",)]


def test_pull_and_submit_answer_over_real_transports(tmp_path: Path) -> None:
    """Pull (a server stream) on the peer port and Submit on the officer socket: an empty
    outbox is one caught-up batch; an invalid report gets a stable code and a next step."""
    pk, cn = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps")
    _trust(pk, cn)

    async def scenario() -> None:
        server = NodeServer(pk, ServeOptions(cosign=False))
        await server.start()
        try:
            card = pk.own_chain().latest
            async with grpc.aio.secure_channel(
                card.endpoint, client_credentials(cn, card), options=channel_options()
            ) as channel:
                stream = peer_pb2_grpc.PeerExchangeStub(channel).Pull(
                    peer_pb2.PullRequest(), timeout=RPC_TIMEOUT
                )
                batches = [b async for b in stream]
                assert len(batches) == 1 and batches[0].caught_up and not batches[0].envelopes
            async with grpc.aio.insecure_channel(f"unix:{server.officer_socket}") as officer:
                stub = officer_pb2_grpc.OfficerStub(officer)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Submit(officer_pb2.SubmitRequest(report=b"{}"), timeout=RPC_TIMEOUT)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                detail = read_error_detail(err.value)
                assert detail is not None and detail.code == "input.report_invalid"
                assert "sop" in detail.message and detail.next_step
                status = await stub.Status(officer_pb2.StatusRequest(), timeout=RPC_TIMEOUT)
                assert status.node == "pk-moi" and [p.peer for p in status.peers] == ["cn-mps"]
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())


def _followed_pull(tmp_path: Path, timeout: float) -> None:
    """pk-moi serves; cn-mps follows its Pull with ``timeout``: the stream must end with
    OK (ended by the server, never cut by the deadline), having sent heartbeats."""
    pk, cn = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps")
    _trust(pk, cn)

    async def scenario() -> None:
        server = NodeServer(pk, ServeOptions(cosign=False))
        await server.start()
        try:
            card = pk.own_chain().latest
            async with grpc.aio.secure_channel(
                card.endpoint, client_credentials(cn, card), options=channel_options()
            ) as channel:
                stream = peer_pb2_grpc.PeerExchangeStub(channel).Pull(
                    peer_pb2.PullRequest(follow=True), timeout=timeout
                )
                batches = [b async for b in stream]  # raises if the deadline cut it
                assert batches and all(b.caught_up and not b.envelopes for b in batches)
                assert await stream.code() == grpc.StatusCode.OK
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())


def test_followed_pull_ends_cleanly_before_the_callers_deadline(tmp_path: Path) -> None:
    """A stream whose caller set a short deadline is closed by the server just before it."""
    _followed_pull(tmp_path, timeout=4.0)


def test_a_retried_submission_with_the_same_key_is_not_sealed_twice(tmp_path: Path) -> None:
    """An officer whose answer was lost resubmits with the same idempotency key and gets
    the first answer; the report is sealed, logged and released once."""
    import json

    pk, cn = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps")
    _trust(pk, cn)
    report = json.dumps(
        {
            "sop": "threat-alert@1",
            "tlp": "green",
            "fields": {
                "title": "Protest planned at the consulate",
                "threat_type": "civil-unrest",
                "severity": "moderate",
                "region": "Karachi",
                "time_window": {"start": "2026-11-26T08:00:00Z", "end": "2026-11-26T18:00:00Z"},
                "source": {"kind": "osint", "reliability": "C", "credibility": 3},
            },
        }
    ).encode()

    async def scenario() -> tuple[str, str, str]:
        server = NodeServer(pk, ServeOptions(cosign=False))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{server.officer_socket}") as officer:
                stub = officer_pb2_grpc.OfficerStub(officer)
                request = officer_pb2.SubmitRequest(report=report, idempotency_key="officer-7/42")
                first = await stub.Submit(request, timeout=RPC_TIMEOUT)
                again = await stub.Submit(request, timeout=RPC_TIMEOUT)
                other = await stub.Submit(
                    officer_pb2.SubmitRequest(report=report, idempotency_key="officer-7/43"),
                    timeout=RPC_TIMEOUT,
                )
                assert [r.peer for r in again.releases] == [r.peer for r in first.releases]
                return first.report_id, again.report_id, other.report_id
        finally:
            await server.stop(grace=1)

    first, again, other = asyncio.run(scenario())
    assert first == again != other
    count = sqlite_store(pk).conn.execute("SELECT count(*) FROM reports").fetchone()[0]
    assert count == 2


def test_a_followed_pull_is_ended_by_the_server_and_never_cut_by_a_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends a followed stream after FOLLOW_SECONDS; the caller re-opens it."""
    from node.rpc import peer_service

    monkeypatch.setattr(peer_service, "FOLLOW_SECONDS", 2.0)
    _followed_pull(tmp_path, timeout=60.0)
