"""The one place where exceptions become gRPC status codes.

Servicers raise hfl.errors exceptions (or ValueError for malformed input); the interceptor turns them
into a clear status. Anything unexpected becomes INTERNAL with a generic message: internals never leak
to the caller, the traceback goes to the service's own log.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature

from hfl import errors

log = logging.getLogger("hfl.rpc")

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StaleRound, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyDone, grpc.StatusCode.ALREADY_EXISTS),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidSignature, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.HflError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            msg = str(exc) or kind.__name__
            if isinstance(exc, InvalidSignature):
                msg = "signature check failed"
            return code, msg
    return grpc.StatusCode.INTERNAL, "internal error; the service's log has the details"


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, msg = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method)
    else:
        log.info("refused %s: %s (%s)", method, msg, code.name)
    await context.abort(code, msg)


class _Undecodable:
    """Stands for request bytes that are not a message of the method's type."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Bytes that do not parse become INVALID_ARGUMENT (gRPC itself would answer UNKNOWN and name the
    parser's exception)."""
    if deserializer is None:
        return None
    inner = deserializer

    def parse(data: bytes) -> Any:
        try:
            return inner(data)
        except Exception:
            return _Undecodable()

    return parse


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidInput("the request is not a valid message for this method")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary and server-streaming handler with the mapping above."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    _refuse_undecodable(request)
                    return await inner_uu(request, context)  # type: ignore[arg-type]
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    _refuse_undecodable(request)
                    async for item in inner_us(request, context):  # type: ignore[arg-type,attr-defined]
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            async def writes_to_context(request: Any, context: grpc.aio.ServicerContext) -> None:
                # A streaming handler written as a coroutine calling context.write (e.g. health Watch).
                try:
                    _refuse_undecodable(request)
                    await inner_us(request, context)  # type: ignore[arg-type,misc]
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream if inspect.isasyncgenfunction(inner_us) else writes_to_context,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
