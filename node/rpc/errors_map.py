"""The gRPC edge of every Accord error: one table to status codes, one interceptor.

Servicers raise ``AccordError`` (or let anything else escape). :class:`EdgeInterceptor`
wraps every handler of a server: it runs the server's guard first (peer identity on the
peer port), then the handler, and turns any failure into an abort with

- the status code from :data:`BY_CODE` (by the error's stable code) or :data:`BY_FAMILY`
  (by its class),
- a generic status message (a peer never sees our message, a stack trace or a field name),
- ``ErrorDetail{code, correlation_id}`` in the trailing metadata key ``accord-error-bin``;
  towards the local officer the detail also carries the message and the next step.

The real error is logged with the same correlation id, so an operator finds it from the
id the partner quotes (docs/DESIGN.md §10).
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

import grpc
import structlog

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
from node.rpc._pb.accord.v1 import error_pb2

ERROR_DETAIL_KEY = "accord-error-bin"
log = structlog.get_logger("accord.rpc")


class Audience(Enum):
    """Who reads the error: a partner node (code only) or the local officer (everything)."""

    PEER = "peer"
    OFFICER = "officer"


@dataclass(frozen=True)
class Mapped:
    status: grpc.StatusCode
    code: str  # the stable code the caller sees


# Specific codes first: they say more than the family.
BY_CODE: dict[str, grpc.StatusCode] = {
    "auth.no_certificate": grpc.StatusCode.UNAUTHENTICATED,
    "auth.bad_certificate": grpc.StatusCode.UNAUTHENTICATED,
    "auth.classical_tls": grpc.StatusCode.UNAUTHENTICATED,
    "auth.revoked_tls_ca": grpc.StatusCode.UNAUTHENTICATED,
    "peer.unknown": grpc.StatusCode.PERMISSION_DENIED,
    "peer.revoked": grpc.StatusCode.PERMISSION_DENIED,
    "witness.not_followed": grpc.StatusCode.PERMISSION_DENIED,
    "limit.peer_calls": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "log.bad_range": grpc.StatusCode.OUT_OF_RANGE,
    "log.bad_size": grpc.StatusCode.OUT_OF_RANGE,
    "log.no_entry": grpc.StatusCode.NOT_FOUND,
    "log.no_checkpoint": grpc.StatusCode.NOT_FOUND,
    "witness.inconsistent": grpc.StatusCode.FAILED_PRECONDITION,
    "witness.revoked_log_key": grpc.StatusCode.PERMISSION_DENIED,
    "witness.conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    "server.standby": grpc.StatusCode.FAILED_PRECONDITION,  # docs/adr/0026
    "server.not_leader": grpc.StatusCode.UNAVAILABLE,
}

# Families in order (first match wins). The third column is the generic code the caller sees
# instead of the error's own code (our database or keys are none of a partner's business);
# None lets the caller see the error's own stable code.
BY_FAMILY: tuple[tuple[type[AccordError], grpc.StatusCode, str | None], ...] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT, None),
    (PeerDataError, grpc.StatusCode.INVALID_ARGUMENT, None),
    (PolicyError, grpc.StatusCode.PERMISSION_DENIED, None),
    (TransportError, grpc.StatusCode.UNAVAILABLE, None),
    (StoreError, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    (KeyringError, grpc.StatusCode.INTERNAL, "internal"),
    (ConfigError, grpc.StatusCode.INTERNAL, "internal"),
    (AccordError, grpc.StatusCode.INTERNAL, "internal"),
)

GENERIC_MESSAGE = {
    grpc.StatusCode.UNAUTHENTICATED: "caller not authenticated",
    grpc.StatusCode.PERMISSION_DENIED: "caller not allowed",
    grpc.StatusCode.INVALID_ARGUMENT: "request refused",
    grpc.StatusCode.OUT_OF_RANGE: "request out of range",
    grpc.StatusCode.NOT_FOUND: "not found",
    grpc.StatusCode.FAILED_PRECONDITION: "request refused in the current state",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "limit reached, retry later",
    grpc.StatusCode.UNAVAILABLE: "temporarily unavailable, retry later",
    grpc.StatusCode.UNIMPLEMENTED: "not implemented",
    grpc.StatusCode.INTERNAL: "internal error",
}


def unimplemented(what: str) -> AccordError:
    """A stable placeholder error for an RPC this build does not serve yet."""
    return AccordError(f"{what} is not implemented by this node", code="unimplemented")


def mapped(error: BaseException) -> Mapped:
    """The status code and the caller-visible code of any exception."""
    if isinstance(error, NotImplementedError):
        return Mapped(grpc.StatusCode.UNIMPLEMENTED, "unimplemented")
    if not isinstance(error, AccordError):
        return Mapped(grpc.StatusCode.INTERNAL, "internal")
    if error.code in BY_CODE:
        return Mapped(BY_CODE[error.code], error.code)
    for family, status, generic in BY_FAMILY:
        if isinstance(error, family):
            return Mapped(status, generic or error.code)
    raise AssertionError("AccordError is the last family")  # pragma: no cover


def new_correlation_id() -> str:
    return secrets.token_hex(8)


def error_detail(error: BaseException, audience: Audience, correlation_id: str) -> bytes:
    m = mapped(error)
    detail = error_pb2.ErrorDetail(code=m.code, correlation_id=correlation_id)
    if audience is Audience.OFFICER and isinstance(error, AccordError):
        # The local officer sees the error's own stable code too (e.g. store.row_tampered,
        # not the partner's generic "unavailable"): scripts match on it.
        detail.code = error.code
        detail.message = error.message
        detail.next_step = error.next_step
    return detail.SerializeToString()


def read_error_detail(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_pb2.ErrorDetail | None:
    """The ErrorDetail a server put in a failed call's trailing metadata, if any."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_DETAIL_KEY and isinstance(value, bytes):
            detail = error_pb2.ErrorDetail()
            detail.ParseFromString(value)
            return detail
    return None


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: BaseException,
    *,
    audience: Audience,
    method: str,
) -> NoReturn:
    """Log ``error`` under a new correlation id and end the call with its mapped status."""
    correlation_id = new_correlation_id()
    m = mapped(error)
    level = log.error if m.status is grpc.StatusCode.INTERNAL else log.warning
    level(
        "rpc.failed",
        method=method,
        status=m.status.name,
        code=getattr(error, "code", "internal"),
        correlation_id=correlation_id,
        exc_info=error,
    )
    if audience is Audience.OFFICER and isinstance(error, AccordError):
        message = error.message
    else:
        message = f"{GENERIC_MESSAGE.get(m.status, 'request failed')} ({m.code})"
    await context.abort(
        m.status,
        message,
        trailing_metadata=((ERROR_DETAIL_KEY, error_detail(error, audience, correlation_id)),),
    )
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


# A guard runs before any handler logic; it raises AccordError to refuse the call.
Guard = Callable[[grpc.aio.ServicerContext[Any, Any], str], AbstractContextManager[object]]


def no_guard(_context: grpc.aio.ServicerContext[Any, Any], _method: str) -> nullcontext[None]:
    return nullcontext()


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler: guard first, then the handler, any failure mapped by the table."""

    def __init__(self, audience: Audience, guard: Guard = no_guard) -> None:
        self._audience = audience
        self._guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
        )
        for attr, make, streams in kinds:
            behavior = getattr(handler, attr)
            if behavior is not None:
                wrap = self._wrap_stream if streams else self._wrap_unary
                return make(
                    wrap(behavior, method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                with self._guard(context, method):
                    return await behavior(request, context)
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                raise
            except Exception as e:
                await abort(context, e, audience=self._audience, method=method)

        return unary

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                with self._guard(context, method):
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result  # the handler writes with context.write()
                    else:
                        for item in _iterate(result):
                            yield item
            except (grpc.aio.AbortError, grpc.aio.UsageError):
                raise
            except Exception as e:
                await abort(context, e, audience=self._audience, method=method)

        return stream


def _iterate(result: object) -> Iterator[Any]:
    if result is None:
        return iter(())
    return iter(result)  # type: ignore[call-overload,no-any-return]
