"""Per-method request limits and the role check run before a request is parsed (issue 18, finding 5).

An in-process gRPC server with hfl's interceptors and a servicer whose request parser counts its calls:
an oversized request and a caller that may not call the method are refused without the parser ever
running."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from hfl.errors import NotAllowed
from hfl.rpc import limits
from hfl.rpc.authz import _CheckingInterceptor
from hfl.rpc.errors import ErrorInterceptor
from hfl.rpc.server import MAX_MESSAGE_BYTES

SERVICE = "hfl.v1.FogService"  # real method names, so the real limits apply
parsed: list[int] = []


def _parse(data: bytes) -> bytes:
    parsed.append(len(data))
    if data.startswith(b"bad"):
        raise ValueError("not a message")
    return data


class _Refuse(_CheckingInterceptor):
    """Allows every method but SubmitUpdate (as the role table refuses a role)."""

    def __init__(self) -> None:
        self.bound: list[Any] = []

    def check_for(self, method: str) -> Any:
        def check(context: grpc.aio.ServicerContext) -> None:
            if method.endswith("/SubmitUpdate"):
                raise NotAllowed("a facility may not call SubmitUpdate")

        return check

    def bind_for(self, method: str) -> Any:
        def bind(request: Any, who: Any) -> None:
            self.bound.append(request)

        return bind


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"ok:" + request[:8]


def _handlers() -> grpc.GenericRpcHandler:
    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            _echo, request_deserializer=_parse, response_serializer=lambda b: b
        )
        for name in ("RunRound", "SubmitUpdate", "Evaluate")
    }
    methods["GetStatus"] = methods["RunRound"]
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def _run(calls: list[tuple[str, bytes]], with_precheck: bool = True) -> list[tuple[Any, str]]:
    auth = _Refuse()
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(precheck=auth.precheck if with_precheck else None), auth],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
    )
    server.add_generic_rpc_handlers((_handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out: list[tuple[Any, str]] = []
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)]
        ) as ch:
            for method, payload in calls:
                call = ch.unary_unary(method, lambda b: b, lambda b: b)
                try:
                    answer = await call(payload, timeout=30)
                    out.append((grpc.StatusCode.OK, bytes(answer).decode()))
                except grpc.aio.AioRpcError as e:
                    out.append((e.code(), e.details() or ""))
    finally:
        await server.stop(None)
    return out


@pytest.fixture(autouse=True)
def _clear() -> None:
    parsed.clear()


def test_the_limits_are_small_for_control_calls_and_model_sized_for_updates() -> None:
    assert limits.request_limit("/hfl.v1.AuthorityService/Register") <= 64 * 1024
    assert limits.request_limit("/hfl.v1.LeaderService/GetStatus") <= 64 * 1024
    assert limits.request_limit("/hfl.v1.Unknown/Anything") == limits.CONTROL
    assert limits.request_limit("/hfl.v1.FogService/SubmitUpdate") == limits.MODEL
    assert max(limits.REQUEST_LIMITS.values()) <= MAX_MESSAGE_BYTES


def test_each_server_receives_only_what_its_own_methods_accept() -> None:
    """gRPC refuses anything larger while it arrives; the first value of a repeated option wins."""
    from hfl.rpc.server import server_options

    assert limits.server_limit("leader") == limits.CONTROL
    assert limits.server_limit("authority") == limits.REPORT
    assert limits.server_limit("fog") == limits.MODEL
    assert limits.server_limit("validator") == limits.MODEL
    first = next(v for k, v in server_options("authority") if k == "grpc.max_receive_message_length")
    assert first == limits.REPORT
    assert ("grpc.http2.bdp_probe", 0) in server_options("authority")  # the HTTP/2 window stays small
    assert ("grpc.http2.bdp_probe", 0) in server_options("leader")
    assert ("grpc.http2.bdp_probe", 0) not in server_options("validator")  # models flow at full speed
    # a fog's window is fixed at 1 MiB per connection (tests/unit/test_fog_answer.py)
    assert ("grpc.http2.lookahead_bytes", 1 << 20) in server_options("fog")


def test_an_oversized_control_request_is_refused_before_it_is_parsed() -> None:
    method = "/hfl.v1.FogService/GetStatus"  # not in the table: CONTROL
    big = b"x" * (limits.CONTROL + 1)
    [(code, details)] = asyncio.run(_run([(method, big)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {limits.CONTROL} bytes" in details
    assert parsed == []


def test_a_model_sized_request_passes_where_the_method_carries_models() -> None:
    payload = b"y" * (limits.CONTROL * 4)
    [(code, answer)] = asyncio.run(_run([("/hfl.v1.FogService/RunRound", payload)]))
    assert code == grpc.StatusCode.OK and answer == "ok:yyyyyyyy"
    assert parsed == [len(payload)]


def test_a_caller_that_may_not_call_the_method_is_refused_before_its_request_is_parsed() -> None:
    [(code, details)] = asyncio.run(_run([("/hfl.v1.FogService/SubmitUpdate", b"bad request")]))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert parsed == []


def test_bytes_that_do_not_parse_are_invalid_argument_after_the_role_check() -> None:
    [(code, _)] = asyncio.run(_run([("/hfl.v1.FogService/RunRound", b"bad request")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert parsed == [len(b"bad request")]


def test_without_the_precheck_the_role_check_still_runs_before_the_servicer() -> None:
    [(code, _)] = asyncio.run(_run([("/hfl.v1.FogService/SubmitUpdate", b"fine")], with_precheck=False))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_error_details_are_capped() -> None:
    """A servicer error quoting a whole request reaches the caller (and the log) cut short."""
    from hfl.rpc.errors import MAX_DETAILS

    async def shout(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise NotAllowed("you sent " + request.decode())

    async def go() -> tuple[Any, str]:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {"RunRound": grpc.unary_unary_rpc_method_handler(shout, _parse, lambda b: b)},
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.unary_unary(f"/{SERVICE}/RunRound", lambda b: b, lambda b: b)
                try:
                    await call(b"z" * 100_000, timeout=30)
                except grpc.aio.AioRpcError as e:
                    return e.code(), e.details() or ""
        finally:
            await server.stop(None)
        return grpc.StatusCode.OK, ""

    code, details = asyncio.run(go())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert len(details) <= MAX_DETAILS


def test_health_watch_works_through_the_interceptors() -> None:
    """The standard health service answers Watch with context.write(); the wrappers used to iterate it
    and failed with INTERNAL (found by the fuzz suite)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    async def go() -> int:
        auth = _Refuse()
        server = grpc.aio.server(interceptors=[ErrorInterceptor(precheck=auth.precheck), auth])
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
                first = await call.read()
                call.cancel()
                return int(first.status)
        finally:
            await server.stop(None)

    assert asyncio.run(go()) == health_pb2.HealthCheckResponse.SERVING
