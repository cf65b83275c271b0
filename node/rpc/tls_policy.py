"""What the peer port accepts from TLS (docs/adr/0015-post-quantum-transport.md).

Two rules, each enforced where this stack lets us enforce it:

1. **TLS 1.3 only, at the handshake.** grpcio's Python API has no minimum TLS version, but
   gRPC core reads the TLS 1.2 cipher list from the environment variable
   ``GRPC_SSL_CIPHER_SUITES`` when it initialises, at ``import grpc``; TLS 1.3 suites are
   not affected by it. :func:`refuse_tls12` sets that list to one PSK suite; no node has a
   pre-shared key configured, so no TLS 1.2 handshake can complete (a client restricted to
   TLS 1.2, ``openssl s_client -tls1_2``, gets a handshake failure). It runs when the
   ``node`` package is imported, before any module imports grpc; ``serve`` refuses to
   start in a process where grpc was imported first (:data:`TLS12_REFUSED` is False).
2. **The hybrid group, before any handler.** BoringSSL in grpcio offers and prefers
   X25519MLKEM768, but the group list cannot be restricted from Python: a TLS 1.3 client
   that offers only X25519 (OpenSSL 3.0, Go before 1.24) completes the handshake. gRPC
   reports the negotiated group in the call's auth context
   (``ssl_negotiated_key_exchange_group``); the peer guard refuses every call made over a
   classical group (``auth.classical_tls``) unless the operator named that partner with
   ``accord serve --allow-classical-tls PEER``. Only the client's request (a cursor, a
   checkpoint) has then crossed the classical session; nothing is answered on it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

CIPHER_SUITES_ENV = "GRPC_SSL_CIPHER_SUITES"
# TLS <= 1.2 suite list handed to gRPC core: a PSK suite needs a pre-shared key, which no
# node has, so the server can choose no TLS 1.2 suite. TLS 1.3 suites are configured apart.
TLS12_UNUSABLE_SUITES = "PSK-AES128-CBC-SHA"
HYBRID_GROUP = "X25519MLKEM768"
GROUP_KEY = "ssl_negotiated_key_exchange_group"


def refuse_tls12() -> bool:
    """Make gRPC core offer no usable TLS 1.2 suite; True if it can still take effect.

    False when grpc was imported before us (its settings are read once, at import)."""
    os.environ[CIPHER_SUITES_ENV] = TLS12_UNUSABLE_SUITES
    return "grpc" not in sys.modules


TLS12_REFUSED = False  # set by node/__init__.py through refuse_tls12()


def negotiated_group(auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """The key-exchange group of the call's TLS session, or "" when gRPC did not say."""
    values = auth_context.get(GROUP_KEY) or [b""]
    return values[0].decode("ascii", errors="replace")


def is_post_quantum(auth_context: Mapping[str, Sequence[bytes]]) -> bool:
    return negotiated_group(auth_context) == HYBRID_GROUP
