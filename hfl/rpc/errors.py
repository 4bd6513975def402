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
from hfl.rpc import link
from hfl.rpc.limits import request_limit
from hfl.rpc.metrics import REFUSED_CALLS

log = logging.getLogger("hfl.rpc")

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.StaleRound, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyDone, grpc.StatusCode.ALREADY_EXISTS),
    (errors.BudgetSpent, grpc.StatusCode.OUT_OF_RANGE),  # before NotReady: it is one
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
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


MAX_DETAILS = 300  # characters of an error message sent to the caller or written to the log


def _capped(msg: str) -> str:
    """Error details are capped: whatever a message echoes, the caller and the log get at most
    MAX_DETAILS characters of it."""
    return msg if len(msg) <= MAX_DETAILS else msg[: MAX_DETAILS - 1] + "…"


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    code, msg = status_for(exc)
    msg = _capped(msg)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method)
    else:
        log.info("refused %s: %s (%s)", method, msg, code.name)
        REFUSED_CALLS.labels(method=method.rpartition("/")[2], code=code.name).inc()
    await context.abort(code, msg)


class _Unparsed:
    """The request's bytes, parsed only after the pre-parse checks (size, then who is calling)."""

    __slots__ = ("data", "parse")

    def __init__(self, data: bytes, parse: Callable[[bytes], Any]) -> None:
        self.data = data
        self.parse = parse

    def message(self) -> Any:
        try:
            return self.parse(self.data)
        except Exception:
            raise errors.InvalidInput("the request is not a valid message for this method") from None


class _TooLarge:
    """Stands for a request larger than its method accepts (hfl.rpc.limits); its bytes are dropped."""

    __slots__ = ("limit", "size")

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit


def _gated(
    deserializer: Callable[[bytes], Any] | None, limit: int
) -> Callable[[bytes], _Unparsed | _TooLarge] | None:
    """The deserializer gRPC calls: it only measures the bytes. Parsing happens in the handler after the
    caller passed the pre-parse check; bytes that do not parse become INVALID_ARGUMENT (gRPC itself
    would answer UNKNOWN and name the parser's exception)."""
    if deserializer is None:
        return None
    inner = deserializer

    def measure(data: bytes) -> _Unparsed | _TooLarge:
        if len(data) > limit:
            return _TooLarge(len(data), limit)
        return _Unparsed(data, inner)

    return measure


def _open(request: Any, context: grpc.aio.ServicerContext, precheck: PreCheck | None) -> Any:
    """Refuse an oversized request, run the pre-parse check, then parse."""
    if isinstance(request, _TooLarge):
        raise errors.TooLarge(
            f"the request is {request.size} bytes; this call accepts at most {request.limit} bytes"
        )
    if precheck is not None:
        precheck(context)
    return request.message() if isinstance(request, _Unparsed) else request


PreCheck = Callable[[grpc.aio.ServicerContext], None]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary and server-streaming handler with the mapping above, and with the request
    checks that run before a request is parsed: its size against hfl.rpc.limits, then ``precheck`` (the
    caller's certificate and role, hfl.rpc.authz). Install it first (outermost)."""

    def __init__(self, precheck: Callable[[str], PreCheck] | None = None) -> None:
        self._precheck = precheck

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        raw = link.RAW_STREAMS.get(method)  # frames read by hand, written already serialised
        deserializer = _gated(raw or handler.request_deserializer, request_limit(method))
        precheck = self._precheck(method) if self._precheck is not None else None
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    message = _open(request, context, precheck)
                    return await inner_uu(message, context)  # type: ignore[arg-type]
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=deserializer,
                # a response the servicer wrote already serialised goes out as it is
                response_serializer=None if method in link.RAW_RESPONSES else handler.response_serializer,
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
            # a stream answered with context.write() (the standard health service's Watch)
            inner_uw: Any = handler.unary_stream

            async def unary_write(request: Any, context: grpc.aio.ServicerContext) -> None:
                try:
                    await inner_uw(_open(request, context, precheck), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_write,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    message = _open(request, context, precheck)
                    async for item in inner_us(message, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # FogService.Connect
            inner_ss: Any = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async def opened() -> AsyncIterator[Any]:
                    async for request in requests:
                        yield _open(request, context, None)  # each frame: its size, then parse

                try:
                    if precheck is not None:
                        precheck(context)
                    async for item in inner_ss(opened(), context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=deserializer,
                response_serializer=None if raw else handler.response_serializer,
            )
        return handler
