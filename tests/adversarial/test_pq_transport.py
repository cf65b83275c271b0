"""docs/THREATS.md N07 on a real mutual-TLS peer port: TLS 1.2 and classical key exchange.

The clients here are not grpcio (whose BoringSSL always offers X25519MLKEM768): they are
Python's ``ssl`` module (the machine's OpenSSL, which a partner's OpenSSL- or Go-based client
resembles), restricted to TLS 1.2, or to TLS 1.3 with the classical group X25519 only, and
speaking gRPC over HTTP/2 with the ``h2`` library. Each presents a valid certificate of a
trusted partner, so nothing but the TLS version or group can be the reason for a refusal.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2

from node import clock
from node.home import Node, init_node
from node.rpc import tls_policy
from node.rpc._pb.accord.v1 import error_pb2
from node.rpc.errors_map import ERROR_DETAIL_KEY
from node.rpc.server import NodeServer, ServeOptions
from tests.integration.conftest import free_port

pytestmark = pytest.mark.timeout(60)
NOW = clock.now()


@dataclass
class Pair:
    server: Node  # pk-moi, serving
    partner: Node  # cn-mps, trusted by pk-moi
    tmp: Path

    def client_context(self, *, tls12: bool = False, classical: bool = False) -> ssl.SSLContext:
        cert, key = self.partner.keyring().tls_server_material()
        (self.tmp / "c.pem").write_bytes(cert)
        (self.tmp / "c.key").write_bytes(key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=self.server.keyring().tls.ca_cert_pem.decode("ascii"))
        ctx.load_cert_chain(self.tmp / "c.pem", self.tmp / "c.key")
        ctx.set_alpn_protocols(["h2"])
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if classical:
            ctx.set_ecdh_curve("X25519")  # the only group offered: no post-quantum share
        return ctx

    @property
    def port(self) -> int:
        return int(self.server.config.listen.rpartition(":")[2])


def _node(tmp_path: Path, name: str) -> Node:
    endpoint = f"127.0.0.1:{free_port()}"
    return init_node(
        tmp_path / name, node=name, name=name, endpoint=endpoint, passphrase=None, now=NOW
    )


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    pk, cn = _node(tmp_path, "pk-moi"), _node(tmp_path, "cn-mps")
    chain = cn.own_chain()
    pk.add_peer(chain.to_bytes(), fingerprint=chain.latest.fingerprint, tofu=False, now=NOW)
    return Pair(pk, cn, tmp_path)


def _serving(pair: Pair, body: Callable[[], Awaitable[None]], allow: tuple[str, ...] = ()) -> None:
    async def scenario() -> None:
        options = ServeOptions(cosign=False, roots_refresh_seconds=3600, allow_classical_tls=allow)
        server = NodeServer(pair.server, options)
        await server.start()
        try:
            await body()
        finally:
            await server.stop(grace=1)

    asyncio.run(scenario())


def _handshake(pair: Pair, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", pair.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


def _health_check(pair: Pair, ctx: ssl.SSLContext) -> dict[str, str]:
    """One gRPC call (Health/Check) over HTTP/2; returns the response headers and trailers."""
    with (
        socket.create_connection(("127.0.0.1", pair.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", "/grpc.health.v1.Health/Check"),
                (":authority", f"127.0.0.1:{pair.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        message = health_pb2.HealthCheckRequest(service="").SerializeToString()
        conn.send_data(stream, b"\0" + len(message).to_bytes(4, "big") + message, True)
        tls.sendall(conn.data_to_send())
        seen: dict[str, str] = {}
        while True:
            data = tls.recv(65536)
            if not data:
                return seen
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.update({str(k): str(v) for k, v in event.headers})
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return seen
            tls.sendall(conn.data_to_send())


def _accord_code(headers: dict[str, str]) -> str:
    raw = headers.get(ERROR_DETAIL_KEY)
    if raw is None:
        return ""
    detail = error_pb2.ErrorDetail()
    detail.ParseFromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    return detail.code


@pytest.mark.threat("N07")
def test_n07_a_client_restricted_to_tls12_fails_the_handshake(pair: Pair) -> None:
    assert tls_policy.TLS12_REFUSED  # importing node set gRPC core's TLS 1.2 suites first
    outcome: dict[str, object] = {}

    async def body() -> None:
        outcome["1.3"] = await asyncio.to_thread(_handshake, pair, pair.client_context())
        with pytest.raises(ssl.SSLError) as err:
            await asyncio.to_thread(_handshake, pair, pair.client_context(tls12=True))
        outcome["1.2"] = str(err.value)

    _serving(pair, body)
    # The same certificate is fine over TLS 1.3, so the version alone was refused (the
    # server logs NO_SHARED_CIPHER: it has no TLS 1.2 suite it can use).
    assert outcome["1.3"] == "TLSv1.3"
    assert outcome["1.2"]


@pytest.mark.threat("N07")
def test_n07_tls13_with_a_classical_group_is_refused_before_any_handler(pair: Pair) -> None:
    outcome: dict[str, dict[str, str]] = {}

    async def body() -> None:
        ctx = pair.client_context(classical=True)
        outcome["classical"] = await asyncio.to_thread(_health_check, pair, ctx)

    _serving(pair, body)
    refused = outcome["classical"]
    assert refused.get("grpc-status") == "16", refused  # UNAUTHENTICATED
    assert _accord_code(refused) == "auth.classical_tls"


@pytest.mark.threat("N07", "B04")
def test_n07_allow_classical_tls_lets_only_the_named_partner_in(pair: Pair) -> None:
    outcome: dict[str, dict[str, str]] = {}

    async def body() -> None:
        ctx = pair.client_context(classical=True)
        outcome["allowed"] = await asyncio.to_thread(_health_check, pair, ctx)

    _serving(pair, body, allow=("cn-mps",))
    answered = outcome["allowed"]
    assert answered.get("grpc-status") == "0", answered
    assert _accord_code(answered) == ""
