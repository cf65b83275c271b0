"""docs/THREATS.md N01, L02, P05/H06 at the witness, and error hygiene, on a real mTLS server.

Each N01 row calls AddCheckpoint with a valid checkpoint of a trusted partner's log: had
any handler run, the witness would have stored a view. Every row asserts that no handler
ran and that the node's files and database are unchanged."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from keys.tls import generate_tls, issue_node_certificate
from node import clock
from node.home import Node, init_node
from node.logsetup import configure_logging
from node.rpc._pb.accord.v1 import card_pb2, log_pb2, peer_pb2_grpc
from node.rpc.errors_map import read_error_detail
from node.rpc.peer_service import PeerExchangeService
from node.rpc.server import NodeServer, ServeOptions
from node.rpc.transport import channel_options
from tests.conftest import snapshot
from tests.integration.conftest import free_port

pytestmark = pytest.mark.timeout(60)
RPC_TIMEOUT = 10.0
NOW = clock.now()


class RecordingService(PeerExchangeService):
    """The real service, noting each handler that starts (to prove none did)."""

    def __init__(self, node: Node, calls: list[str]) -> None:
        super().__init__(node)
        self.calls = calls

    async def AddCheckpoint(self, request: Any, context: Any) -> Any:
        self.calls.append("AddCheckpoint")
        return await super().AddCheckpoint(request, context)

    async def GetCard(self, request: Any, context: Any) -> Any:
        self.calls.append("GetCard")
        return await super().GetCard(request, context)


class LeakyService(RecordingService):
    async def GetCard(self, request: Any, context: Any) -> Any:
        raise RuntimeError("secret-internal-detail in /var/lib/accord field=site")


@dataclass
class Setup:
    server: Node  # pk-moi, serving
    partner: Node  # cn-mps, trusted by pk-moi
    other: Node  # de-bka, trusted by pk-moi too

    @property
    def target(self) -> str:
        return self.server.own_chain().latest.endpoint


def _node(tmp_path: Path, name: str) -> Node:
    return init_node(
        tmp_path / name,
        node=name,
        name=name,
        endpoint=f"127.0.0.1:{free_port()}",
        passphrase=None,
        now=NOW,
    )


def _trust(node: Node, other: Node) -> None:
    chain = other.own_chain()
    node.add_peer(chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=NOW)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    pk, cn, de = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps"), _node(tmp_path, "de-bka")
    _trust(pk, cn)
    _trust(pk, de)
    return Setup(server=pk, partner=cn, other=de)


def _ca(node: Node) -> tuple[x509.Certificate, Any]:
    tls = node.keyring().tls
    return x509.load_pem_x509_certificate(tls.ca_cert_pem), load_pem_private_key(
        tls.ca_key_pem, None
    )


def _identity(node: Node) -> tuple[bytes, bytes]:
    cert, key = node.keyring().tls_server_material()
    return key, cert


def _channel(s: Setup, identity: tuple[bytes, bytes] | None) -> grpc.aio.Channel:
    root = s.server.keyring().tls.ca_cert_pem
    if identity is None:
        creds = grpc.ssl_channel_credentials(root_certificates=root)
    else:
        creds = grpc.ssl_channel_credentials(root, identity[0], identity[1])
    return grpc.aio.secure_channel(s.target, creds, options=channel_options())


def _serve(
    s: Setup,
    calls: list[str],
    body: Callable[[], Awaitable[None]],
    service: type[RecordingService] = RecordingService,
) -> None:
    async def scenario() -> None:
        # Partners' TLS CAs are re-read only at start here, so a revocation made while
        # serving is refused by the peer guard, not by TLS.
        options = ServeOptions(cosign=False, roots_refresh_seconds=3600)
        server = NodeServer(s.server, options, peer_service=service(s.server, calls))
        await server.start()
        try:
            await body()
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())


async def _add_checkpoint(channel: grpc.aio.Channel, node: Node) -> log_pb2.AddCheckpointResponse:
    cp = node.log.latest_checkpoint()
    assert cp is not None
    request = log_pb2.AddCheckpointRequest(old_size=0, checkpoint=log_pb2.Checkpoint(note=cp.note))
    async with channel:
        answer: log_pb2.AddCheckpointResponse = await peer_pb2_grpc.PeerExchangeStub(
            channel
        ).AddCheckpoint(request, timeout=RPC_TIMEOUT)
        return answer


def _refused(
    s: Setup,
    identity: Callable[[], tuple[bytes, bytes] | None],
    statuses: set[grpc.StatusCode],
    code: str | None,
    before: Callable[[], None] = lambda: None,
) -> None:
    calls: list[str] = []
    outcome: dict[str, Any] = {}

    async def body() -> None:
        before()
        outcome["snap"] = snapshot(s.server.data_dir)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _add_checkpoint(_channel(s, identity()), s.partner)
        outcome["err"] = err.value

    _serve(s, calls, body)
    error = outcome["err"]
    assert error.code() in statuses, error
    if code is not None:
        detail = read_error_detail(error)
        assert detail is not None and detail.code == code
        assert detail.correlation_id
    assert calls == [], "a handler ran for a refused caller"
    assert snapshot(s.server.data_dir) == outcome["snap"]


# TLS refuses these at the handshake: the client sees UNAVAILABLE, nothing reaches gRPC.
TLS_REFUSED = {grpc.StatusCode.UNAVAILABLE}


@pytest.mark.threat("N01")
def test_n01_no_client_certificate_is_refused(setup: Setup) -> None:
    _refused(setup, lambda: None, TLS_REFUSED, None)


@pytest.mark.threat("N01")
def test_n01_certificate_from_an_unknown_ca_is_refused(setup: Setup) -> None:
    rogue = generate_tls("cn-mps", "127.0.0.1", NOW)  # same node id, a CA nobody trusts
    _refused(setup, lambda: (rogue.key_pem, rogue.cert_pem), TLS_REFUSED, None)


@pytest.mark.threat("N01")
def test_n01_expired_certificate_is_refused(setup: Setup) -> None:
    ca_cert, ca_key = _ca(setup.partner)
    cert, key = issue_node_certificate(
        ca_cert, ca_key, "cn-mps", "127.0.0.1", NOW - timedelta(days=800)
    )
    assert x509.load_pem_x509_certificate(cert).not_valid_after_utc < NOW
    _refused(setup, lambda: (key, cert), TLS_REFUSED | {grpc.StatusCode.UNAUTHENTICATED}, None)


@pytest.mark.threat("N01")
def test_n01_known_ca_but_unknown_node_is_refused(setup: Setup) -> None:
    ca_cert, ca_key = _ca(setup.partner)
    cert, key = issue_node_certificate(ca_cert, ca_key, "xx-ghost", "127.0.0.1", NOW)
    _refused(setup, lambda: (key, cert), {grpc.StatusCode.PERMISSION_DENIED}, "peer.unknown")


@pytest.mark.threat("N01")
def test_n01_partner_ca_vouching_for_another_partner_is_refused(setup: Setup) -> None:
    """cn-mps's CA issues a certificate naming de-bka: TLS accepts the CA, the guard does
    not, because de-bka's card names another CA."""
    ca_cert, ca_key = _ca(setup.partner)
    cert, key = issue_node_certificate(ca_cert, ca_key, "de-bka", "127.0.0.1", NOW)
    _refused(setup, lambda: (key, cert), {grpc.StatusCode.UNAUTHENTICATED}, "auth.bad_certificate")


@pytest.mark.threat("N01")
def test_n01_our_own_certificate_is_refused(setup: Setup) -> None:
    _refused(
        setup,
        lambda: _identity(setup.server),
        TLS_REFUSED | {grpc.StatusCode.PERMISSION_DENIED},
        None,
    )


@pytest.mark.threat("N01")
def test_n01_revoked_partner_is_refused_while_serving(setup: Setup) -> None:
    def revoke() -> None:
        setup.server.revoke_peer("cn-mps", NOW - timedelta(minutes=1), NOW)

    _refused(
        setup,
        lambda: _identity(setup.partner),
        {grpc.StatusCode.PERMISSION_DENIED},
        "peer.revoked",
        before=revoke,
    )


@pytest.mark.threat("N01")
def test_n01_revoked_partner_is_refused_at_tls_after_restart(setup: Setup) -> None:
    setup.server.revoke_peer("cn-mps", NOW - timedelta(minutes=1), NOW)
    _refused(setup, lambda: _identity(setup.partner), TLS_REFUSED, None)


@pytest.mark.threat("N01")
def test_n01_a_trusted_partner_is_served(setup: Setup) -> None:
    """The control row: the same call with the partner's real certificate is cosigned."""
    calls: list[str] = []
    answers: list[log_pb2.AddCheckpointResponse] = []

    async def body() -> None:
        answers.append(
            await _add_checkpoint(_channel(setup, _identity(setup.partner)), setup.partner)
        )

    _serve(setup, calls, body)
    assert calls == ["AddCheckpoint"]
    assert answers[0].cosignature_lines.startswith("— pk-moi.accord/witness ".encode())


# -- L02, P05/H06 and error hygiene ---------------------------------------------------------


def _call_as_partner(
    setup: Setup,
    call: Callable[[peer_pb2_grpc.PeerExchangeStub], Awaitable[Any]],
    service: type[RecordingService] = RecordingService,
) -> grpc.aio.AioRpcError:
    errors: list[grpc.aio.AioRpcError] = []

    async def body() -> None:
        async with _channel(setup, _identity(setup.partner)) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(peer_pb2_grpc.PeerExchangeStub(channel))
            errors.append(err.value)

    _serve(setup, [], body, service)
    return errors[0]


@pytest.mark.parametrize(
    ("old_size", "new_size"),
    [(1, 2**63), (1, 2**64 - 1), (0, 1), (5, 2)],
    ids=["endless-range", "max-uint64", "from-zero", "backwards"],
)
@pytest.mark.threat("L02")
def test_l02_absurd_consistency_proof_range_is_refused(
    setup: Setup, old_size: int, new_size: int
) -> None:
    request = log_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
    error = _call_as_partner(
        setup, lambda stub: stub.GetConsistencyProof(request, timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert read_error_detail(error).code == "log.bad_range"  # type: ignore[union-attr]


@pytest.mark.threat("L02")
def test_l02_inclusion_proof_beyond_the_log_is_refused(setup: Setup) -> None:
    request = log_pb2.GetInclusionProofRequest(leaf_index=2**63, tree_size=2**64 - 1)
    error = _call_as_partner(
        setup, lambda stub: stub.GetInclusionProof(request, timeout=RPC_TIMEOUT)
    )
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert read_error_detail(error).code == "log.bad_range"  # type: ignore[union-attr]


@pytest.mark.threat("H06")
def test_h06_witness_refuses_a_checkpoint_of_another_log(setup: Setup) -> None:
    """cn-mps submits de-bka's (validly signed) checkpoint as if it were its own log."""
    before = snapshot(setup.server.data_dir)
    cp = setup.other.log.latest_checkpoint()
    assert cp is not None
    request = log_pb2.AddCheckpointRequest(old_size=0, checkpoint=log_pb2.Checkpoint(note=cp.note))
    error = _call_as_partner(setup, lambda stub: stub.AddCheckpoint(request, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(setup.server.data_dir) == before


def _assert_no_internals(error: grpc.aio.AioRpcError, *secrets: str) -> None:
    detail = read_error_detail(error)
    assert detail is not None and len(detail.correlation_id) == 16
    assert detail.message == "" and detail.next_step == ""
    text = (error.details() or "") + repr(error.trailing_metadata())
    for word in ("Traceback", "File ", ".py", *secrets):
        assert word not in text


def test_peer_error_carries_a_code_and_correlation_id_and_no_internals(setup: Setup) -> None:
    request = log_pb2.AddCheckpointRequest(old_size=0, checkpoint=log_pb2.Checkpoint(note=b"x\n"))
    error = _call_as_partner(setup, lambda stub: stub.AddCheckpoint(request, timeout=RPC_TIMEOUT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert read_error_detail(error).code.startswith("peer.")  # type: ignore[union-attr]
    _assert_no_internals(error, "note", "signature")


def test_unexpected_error_is_internal_and_logged_under_the_correlation_id(setup: Setup) -> None:
    logs = io.StringIO()
    configure_logging("json", "info", stream=logs)
    try:
        error = _call_as_partner(
            setup,
            lambda stub: stub.GetCard(card_pb2.GetCardRequest(), timeout=RPC_TIMEOUT),
            LeakyService,
        )
    finally:
        configure_logging("console", "warning")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert read_error_detail(error).code == "internal"  # type: ignore[union-attr]
    _assert_no_internals(error, "secret-internal-detail", "RuntimeError", "site")
    correlation = read_error_detail(error).correlation_id  # type: ignore[union-attr]
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("correlation_id") == correlation]
    assert failed and failed[0]["event"] == "rpc.failed" and failed[0]["error"] == "RuntimeError"
    assert "secret-internal-detail" not in logs.getvalue()  # messages never reach the logs
