"""The CLI's side of the Officer API: one call over the node's unix socket, errors turned
back into AccordError (same code, message and next step as the server raised)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc

from exchange.errors import (
    AccordError,
    ConfigError,
    InputError,
    KeyringError,
    PeerDataError,
    PolicyError,
    StoreError,
    TransportError,
)
from node.home import OFFICER_SOCKET
from node.rpc._pb.accord.v1 import officer_pb2_grpc
from node.rpc.errors_map import read_error_detail

CALL_TIMEOUT = 60.0
T = TypeVar("T")

_FAMILIES: list[tuple[str, type[AccordError]]] = [
    ("input.", InputError),
    ("report.", InputError),
    ("inbox.", InputError),
    ("peer.", PeerDataError),
    ("policy.", PolicyError),
    ("keyring.", KeyringError),
    ("store.", StoreError),
    ("log.", StoreError),
    ("config.", ConfigError),
    ("auth.", TransportError),
    ("transport.", TransportError),
]


def _error(e: grpc.RpcError) -> AccordError:
    detail = read_error_detail(e)
    if detail is None or not detail.code:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return TransportError(
                "the node is not running (no answer on its Officer socket)",
                code="transport.node_down",
                next_step="Start it with 'accord --data DIR serve' (see the README).",
            )
        return TransportError(f"the node refused the call ({e.code().name})")
    family = next((cls for prefix, cls in _FAMILIES if detail.code.startswith(prefix)), AccordError)
    message = detail.message or f"the node refused the call ({detail.code})"
    if detail.correlation_id:
        message += f" [correlation id {detail.correlation_id}]"
    return family(message, code=detail.code, next_step=detail.next_step or None)


@contextmanager
def officer(data_dir: Path) -> Iterator[officer_pb2_grpc.OfficerStub]:
    socket = data_dir / OFFICER_SOCKET
    if not socket.exists():
        raise TransportError(
            f"no node is serving {data_dir} (no {OFFICER_SOCKET})",
            code="transport.node_down",
            next_step=f"Start it with 'accord --data {data_dir} serve'.",
        )
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        yield officer_pb2_grpc.OfficerStub(channel)


def call(method: Callable[..., T], request: Any, *, timeout: float = CALL_TIMEOUT) -> T:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        raise _error(e) from None


def stream(
    method: Callable[..., Iterator[T]], requests: Iterator[Any], *, timeout: float = 3600.0
) -> Iterator[T]:
    try:
        yield from method(requests, timeout=timeout)
    except grpc.RpcError as e:
        raise _error(e) from None
