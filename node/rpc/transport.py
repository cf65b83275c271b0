"""Mutual TLS between partner nodes: credentials, channel options and the peer's identity.

Server side: the peer port accepts a client certificate only if it chains to the TLS CA of
a trusted, unrevoked partner (:class:`PartnerRoots`). The set of CAs is re-read from the
trust store every few seconds and handed to gRPC through
``grpc.dynamic_ssl_server_credentials``, whose fetcher gRPC calls at every new handshake:
a partner added (or removed) while the node serves is accepted (or refused at TLS) without
a restart. Independently of TLS, :class:`PeerGuard` runs before every handler and accepts
a call only from the node named in the certificate's URI SAN ``accord:node:<id>`` when
that node is trusted at the time of the call and the certificate was issued by the CA in
*that node's* card (so partner A's CA cannot vouch for partner B).

Client side: :func:`dial` opens a channel to a partner's card endpoint, trusting only the
CA in its card and presenting our own node certificate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from exchange.card import Card, VerifiedChain
from exchange.errors import AccordError, InputError, TransportError
from exchange.key_revocation import tls_ca_id
from exchange.names import check_node_id
from keys.tls import node_uri
from node import clock
from node.home import Node
from node.rpc.tls_policy import HYBRID_GROUP, is_post_quantum, negotiated_group

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 32  # per HTTP/2 connection
MAX_CALLS_PER_PEER = 16  # in flight, over all of a partner's connections (docs/THREATS.md L03)
ROOTS_REFRESH_SECONDS = 5.0
NODE_URI_PREFIX = node_uri("")

log = structlog.get_logger("accord.transport")

_current_peer: ContextVar[AuthenticatedPeer | None] = ContextVar("accord_peer", default=None)


def server_options() -> list[tuple[str, Any]]:
    """Limits and keepalive enforcement for the peer and officer servers (docs/THREATS.md N05)."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing
        ("grpc.keepalive_time_ms", 60_000),  # ping idle clients every minute
        ("grpc.keepalive_timeout_ms", 20_000),  # and drop those that do not answer
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.http2.max_ping_strikes", 2),  # a client pinging faster is sent GOAWAY
        ("grpc.max_connection_idle_ms", 300_000),
    ]


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),  # retries are ours: backoff with jitter, deadlines
    ]


# -- server credentials ---------------------------------------------------------------------


def partner_ca_pems(node: Node, now: datetime) -> list[bytes]:
    """The TLS CA of every partner trusted (and not revoked) at ``now``."""
    trust = node.trust_store()
    out = []
    for record in trust.list():
        try:
            chain = trust.trusted_chain(record.node, now)
        except AccordError:
            continue  # revoked or damaged: its CA is not offered to TLS
        if _revoked_ca(node, record.node, chain.latest.tls_ca_pem, now):
            continue  # the partner revoked this CA (ADR 0018)
        out.append(chain.latest.tls_ca_pem.encode("ascii"))
    return out


def _revoked_ca(node: Node, peer: str, pem: str, now: datetime) -> bool:
    """Whether ``peer`` revoked the TLS CA ``pem`` from a time at or before ``now``. Only
    the card's latest CA is ever a root (a replaced CA, and the cross certificate it
    issued, chain to nothing we trust); this refuses it too if the partner revoked it."""
    revoked = node.peer_revoked_keys(peer, "tls")
    if not revoked:
        return False
    at = revoked.get(tls_ca_id(pem))
    return at is not None and now >= at


class PartnerRoots:
    """The client CAs the peer port accepts, kept current while the node serves.

    :meth:`refresh` runs on the event loop (it reads the database); gRPC calls the fetcher
    from its own threads at each handshake, so the two meet only at a lock-guarded slot.
    With no partner yet, the node's own CA stands in: TLS then requires a certificate only
    this node can issue, and :class:`PeerGuard` refuses this node itself.
    """

    def __init__(self, node: Node, now: datetime) -> None:
        self._node = node
        cert_pem, key_pem = node.keyring().tls_server_material()
        self._pair = [(key_pem, cert_pem)]
        self._own_ca = node.keyring().tls.ca_cert_pem
        self._lock = threading.Lock()
        self._roots = b""
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._initial = self._config(self._compute(now))

    def _compute(self, now: datetime) -> bytes:
        pems = partner_ca_pems(self._node, now)
        return b"".join(sorted(set(pems))) or self._own_ca

    def _config(self, roots: bytes) -> grpc.ServerCertificateConfiguration:
        self._roots = roots
        return grpc.ssl_server_certificate_configuration(self._pair, root_certificates=roots)

    def refresh(self, now: datetime) -> bool:
        """Re-read the trust store and our own TLS material (a rotation while serving,
        ADR 0017); returns True when the accepted CAs or our certificate changed."""
        cert_pem, key_pem = self._node.keyring().tls_server_material()
        pair = [(key_pem, cert_pem)]
        self._own_ca = self._node.keyring().tls.ca_cert_pem
        roots = self._compute(now)
        with self._lock:
            if roots == self._roots and pair == self._pair:
                return False
            if pair != self._pair:
                log.info("transport.own_certificate_changed")
            self._pair = pair
            self._pending = self._config(roots)
        log.info("transport.partner_cas_changed", count=roots.count(b"BEGIN CERTIFICATE"))
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=True
        )


# -- the peer's identity --------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatedPeer:
    """A caller whose certificate names a trusted partner and was issued by its card's CA."""

    node: str
    chain: VerifiedChain

    @property
    def card(self) -> Card:
        return self.chain.latest


def current_peer() -> AuthenticatedPeer:
    """The authenticated partner of the call being handled (set by :class:`PeerGuard`)."""
    peer = _current_peer.get()
    if peer is None:
        raise TransportError("no authenticated partner for this call", code="auth.no_peer")
    return peer


def _bad(message: str) -> TransportError:
    return TransportError(message, code="auth.bad_certificate")


def node_from_certificate_unverified(cert: x509.Certificate) -> str:
    """The node id in the certificate's single ``accord:node:<id>`` URI SAN (not verified)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as e:
        raise _bad("client certificate has no subject alternative name") from e
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(NODE_URI_PREFIX)
    ]
    if len(uris) != 1:
        raise _bad("client certificate must name exactly one accord node")
    try:
        return check_node_id(uris[0][len(NODE_URI_PREFIX) :], field="certificate node")
    except InputError as e:
        raise _bad("client certificate names an invalid node id") from e


def check_issued_by(cert: x509.Certificate, ca: x509.Certificate, now: datetime) -> None:
    """``cert`` was signed by the self-signed ``ca`` and both are valid at ``now``."""
    if ca.subject != ca.issuer:
        raise _bad("the partner's TLS CA is not self-signed")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise _bad("client certificate was not issued by the partner's TLS CA") from e
    for what, c in (("client certificate", cert), ("partner TLS CA", ca)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            raise _bad(f"{what} is outside its validity period")


def authenticate_peer(
    auth_context: Mapping[str, Sequence[bytes]], node: Node, now: datetime
) -> AuthenticatedPeer:
    """Who is calling: from the TLS client certificate, checked against the trust store."""
    pems = auth_context.get("x509_pem_cert") or []
    if auth_context.get("transport_security_type", [b""])[0] != b"ssl" or not pems:
        raise TransportError("no client certificate", code="auth.no_certificate")
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError as e:
        raise _bad("client certificate does not parse") from e
    peer = node_from_certificate_unverified(cert)
    if peer == node.config.node:
        raise TransportError("a node does not call itself", code="peer.unknown")
    chain = node.trust_store().trusted_chain(peer, now)  # peer.unknown / peer.revoked
    try:
        ca = x509.load_pem_x509_certificate(chain.latest.tls_ca_pem.encode("ascii"))
    except ValueError as e:
        raise _bad("the partner's card carries an unreadable TLS CA") from e
    if _revoked_ca(node, peer, chain.latest.tls_ca_pem, now):
        raise TransportError(f"{peer} revoked the TLS CA of its card", code="auth.revoked_tls_ca")
    check_issued_by(cert, ca, now)
    return AuthenticatedPeer(node=peer, chain=chain)


class PeerGuard:
    """Runs before every handler on the peer port: authenticate, bound calls per partner."""

    def __init__(
        self,
        node: Node,
        *,
        now: Callable[[], datetime] = clock.now,
        max_calls_per_peer: int = MAX_CALLS_PER_PEER,
        classical_tls_allowed: frozenset[str] = frozenset(),
    ) -> None:
        self._node = node
        self._now = now
        self._max = max_calls_per_peer
        self._classical_ok = classical_tls_allowed
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def __call__(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> Iterator[None]:
        auth = context.auth_context()
        peer = authenticate_peer(auth, self._node, self._now())
        if not is_post_quantum(auth) and peer.node not in self._classical_ok:
            # docs/THREATS.md N07: refused before any handler, whatever TLS negotiated.
            raise TransportError(
                f"{peer.node} called over TLS group '{negotiated_group(auth) or 'unknown'}', "
                f"not {HYBRID_GROUP}",
                code="auth.classical_tls",
                next_step="Use a TLS library that offers X25519MLKEM768 (grpcio does), or "
                "let this partner in with 'accord serve --allow-classical-tls PEER'.",
            )
        count = self._in_flight.get(peer.node, 0)
        if count >= self._max:
            raise TransportError(
                f"more than {self._max} concurrent calls from {peer.node}", code="limit.peer_calls"
            )
        self._in_flight[peer.node] = count + 1
        token = _current_peer.set(peer)
        try:
            yield
        finally:
            left = self._in_flight[peer.node] - 1
            if left:
                self._in_flight[peer.node] = left
            else:
                del self._in_flight[peer.node]
            # A stream the partner abandoned (it crashed, or cancelled) is closed by gRPC
            # from another context, where the token cannot be reset; that context ends here.
            with suppress(ValueError):
                _current_peer.reset(token)


# -- client side ----------------------------------------------------------------------------


def client_credentials(node: Node, partner: Card) -> grpc.ChannelCredentials:
    cert_pem, key_pem = node.keyring().tls_server_material()
    return grpc.ssl_channel_credentials(
        root_certificates=partner.tls_ca_pem.encode("ascii"),
        private_key=key_pem,
        certificate_chain=cert_pem,
    )


def dial(node: Node, partner: Card) -> grpc.aio.Channel:
    """A mutual-TLS channel to ``partner``'s card endpoint, trusting only its card's CA.

    The partner's server certificate names its endpoint host (keys/tls.py), so no
    ``grpc.ssl_target_name_override`` is needed."""
    return grpc.aio.secure_channel(
        partner.endpoint, client_credentials(node, partner), options=channel_options()
    )


class PartnerChannels:
    """One channel per partner, reopened when its card's endpoint or CA changes."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._open: dict[str, tuple[tuple[str, str, bytes], grpc.aio.Channel]] = {}

    async def get(self, partner: Card) -> grpc.aio.Channel:
        # Our own certificate too: after a TLS rotation channels re-dial with the new one.
        key = (partner.endpoint, partner.tls_ca_pem, self._node.keyring().tls.chain_pem)
        held = self._open.get(partner.node)
        if held is not None and held[0] == key:
            return held[1]
        if held is not None:
            await held[1].close()
        channel = dial(self._node, partner)
        self._open[partner.node] = (key, channel)
        return channel

    async def close(self) -> None:
        for _key, channel in self._open.values():
            await channel.close()
        self._open.clear()
