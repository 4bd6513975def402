"""What a fog holds while it answers the leader (issue 17): the answer written with each bucket's sum copied
once, sent as it is, the sums let go as they are written, one model shared by every bucket, and the
fog's receive window fixed."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import weakref
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl import memory
from hfl.domain import Bucket, BucketResult, RoundConfig, TrainingPlan
from hfl.errors import InvalidInput
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import fog_pb2, fog_pb2_grpc
from hfl.rpc import serde
from hfl.rpc.errors import ErrorInterceptor
from hfl.rpc.server import FOG_RECEIVE_WINDOW, server_options
from hfl.rpc.settings import load_settings
from hfl.secagg import dequantize_sum
from services.fog import service as fog_service
from services.fog.rounds import bucket_requests

from .test_scale_parts import make_config


def _result(i: int, d: int, rng: np.random.Generator, *, abandoned: bool = False) -> BucketResult:
    if abandoned:
        return BucketResult(
            f"b{i}", "fog-1", np.zeros(0), 0, (), ("x", "y"), True, "too few left", (), ("x",)
        )
    members = tuple(f"facility-{i}-{k}" for k in range(3))
    return BucketResult(f"b{i}", "fog-1", rng.normal(size=d), 3, members, (), refused=members[:1])


def _ordinary(results: list[BucketResult], **fields: Any) -> fog_pb2.RunRoundResponse:
    return fog_pb2.RunRoundResponse(buckets=[serde.bucket_result_to_proto(r) for r in results], **fields)


FIELDS: dict[str, Any] = {
    "bytes_to_facilities": 12,
    "bytes_from_facilities": 34,
    "phases_s": {"local_work": 1.5},
}


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=6),
    abandoned=st.lists(st.booleans(), max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_answer_written_by_hand_reads_as_the_ordinary_message(
    sizes: list[int], abandoned: list[bool], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    results = [_result(i, d, rng, abandoned=i < len(abandoned) and abandoned[i]) for i, d in enumerate(sizes)]
    expected = _ordinary(results, **FIELDS)
    given_away = list(results)
    data = serde.run_round_response(given_away, **FIELDS)
    assert given_away == []  # each result let go as it is written
    got = fog_pb2.RunRoundResponse.FromString(data)
    assert got == expected
    back = [serde.bucket_result_from_proto(b, expected_length=None) for b in got.buckets]
    for r, b in zip(results, back, strict=True):
        assert b.bucket_id == r.bucket_id and b.members == r.members and b.refused == r.refused
        assert np.array_equal(b.total, r.total)  # bit for bit


PLAN = TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=2.5, secure=True, timeout_s=60)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=5), seed=st.integers(0, 2**32 - 1))
def test_a_secure_buckets_sum_goes_to_the_leader_in_integers_and_reads_back_exactly(
    sizes: list[int], seed: int
) -> None:
    """The fog sends a secure bucket's sum as the members' quantised vectors add up (uint32, half the
    bytes of float64); the leader, which knows the round's plan and the bucket's size, reads the exact
    float64 sum, bit for bit what the fog would have computed."""
    rng = np.random.default_rng(seed)
    results, buckets = [], []
    for i, d in enumerate(sizes):
        members = tuple(f"facility-{i}-{k}" for k in range(3))
        buckets.append(Bucket(f"b{i}", "fog-1", members, 3))
        cfg = serde.quant_config(PLAN, 3)
        ints = rng.integers(0, 2 * cfg.offset * 3, d, endpoint=True).astype(np.uint32)
        results.append(BucketResult(f"b{i}", "fog-1", ints, 3, members))
    data = serde.run_round_response(list(results), **FIELDS)
    assert len(data) < sum(4 * d + 200 for d in sizes)  # four bytes a value, not eight
    got = fog_pb2.RunRoundResponse.FromString(data)
    assert all(b.total.dtype == pb.D_TYPE_UINT32 for b in got.buckets)
    quant = serde.bucket_quant_configs(PLAN, buckets)
    for r, b in zip(results, got.buckets, strict=True):
        back = serde.bucket_result_from_proto(b, expected_length=r.total.size, quant=quant)
        assert back.total.dtype == np.float64
        assert np.array_equal(back.total, dequantize_sum(r.total, 3, quant[r.bucket_id]))
        assert (back.bucket_id, back.count, back.members) == (r.bucket_id, r.count, r.members)


def test_an_integer_sum_is_refused_where_it_cannot_be_read() -> None:
    """An integer sum for a bucket the reader has no quantisation for (a validator, a plain round), or
    one larger than its members could add up to, is refused as bad input, never read as numbers."""
    members = ("a", "b", "c")
    cfg = serde.quant_config(PLAN, 3)
    quant = serde.bucket_quant_configs(PLAN, [Bucket("b0", "fog-1", members, 3)])

    def sent(values: list[int]) -> pb.BucketResult:
        ints = np.array(values, dtype=np.uint32)
        data = serde.run_round_response([BucketResult("b0", "fog-1", ints, 3, members)], **FIELDS)
        return fog_pb2.RunRoundResponse.FromString(data).buckets[0]

    ok = sent([0, 2 * cfg.offset * 3])
    assert serde.bucket_result_from_proto(ok, expected_length=2, quant=quant).total.tolist() == [
        -3 * cfg.clip,
        3 * cfg.clip,
    ]
    with pytest.raises(InvalidInput, match="not a secure bucket"):
        serde.bucket_result_from_proto(ok, expected_length=2)
    with pytest.raises(InvalidInput, match="not a secure bucket"):
        serde.bucket_result_from_proto(
            ok,
            expected_length=2,
            quant=serde.bucket_quant_configs(
                replace(PLAN, secure=False), [Bucket("b0", "fog-1", members, 3)]
            ),
        )
    with pytest.raises(InvalidInput, match="out of range"):
        serde.bucket_result_from_proto(sent([2 * cfg.offset * 3 + 1]), expected_length=1, quant=quant)
    with pytest.raises(InvalidInput, match="values but the model has"):
        serde.bucket_result_from_proto(ok, expected_length=3, quant=quant)


def test_the_sums_are_let_go_as_the_answer_is_written() -> None:
    rng = np.random.default_rng(1)
    results = [_result(i, 1000, rng) for i in range(3)]
    alive = [weakref.ref(r.total) for r in results]
    data = serde.run_round_response(results, **FIELDS)
    gc.collect()
    assert all(a() is None for a in alive)
    assert len(fog_pb2.RunRoundResponse.FromString(data).buckets) == 3


def test_gathered_results_are_held_by_the_returned_list_alone() -> None:
    """A result the caller lets go is freed at once, while the caller runs on (with asyncio.gather, the
    finished tasks still hold it)."""
    rng = np.random.default_rng(2)

    async def bucket(i: int) -> BucketResult:
        await asyncio.sleep(0.01 * (3 - i))  # finish out of order
        return _result(i, 1000, rng)

    async def go() -> tuple[list[str], bool]:
        results = await fog_service._gather_owned(bucket(i) for i in range(3))
        ids = [r.bucket_id for r in results]
        first = weakref.ref(results[0].total)
        results.pop(0)
        gc.collect()
        return ids, first() is None  # checked before this coroutine (and gather's tasks) end

    ids, freed = asyncio.run(go())
    assert ids == ["b0", "b1", "b2"]  # in the order asked, as gather
    assert freed


def test_every_bucket_is_sent_the_leaders_model_itself_not_a_copy() -> None:
    config, key = make_config(n=40, fogs=1)
    mine = list(config.buckets)
    good = [serde.config_to_proto(config.bucket_view(b.bucket_id).sign(key)) for b in mine[1:]]
    request = fog_pb2.RunRoundRequest(config=serde.config_to_proto(config), bucket_configs=good)
    request.model.params.data = b"\x00" * 8000
    out = bucket_requests(config, request, mine, key.public_bytes)
    assert len(mine) > 1
    shared = out[mine[0].bucket_id].model
    assert shared.message is request.model
    assert all(out[b.bucket_id].model is shared for b in mine)  # one serialised copy for the round
    assert all(out[b.bucket_id].plan is request.plan for b in mine)
    assert out[mine[0].bucket_id].config == request.config  # no view for it: the full configuration
    assert all(len(out[b.bucket_id].config.buckets) == 1 for b in mine[1:])


class _Fog(fog_pb2_grpc.FogServiceServicer):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    async def RunRound(self, request: Any, context: Any) -> Any:
        return self.answer


def test_a_run_round_answer_written_by_hand_goes_out_as_it_is() -> None:
    rng = np.random.default_rng(3)
    results = [_result(i, 500, rng) for i in range(2)]
    expected = _ordinary(results, **FIELDS)
    answer = serde.run_round_response(list(results), **FIELDS)

    async def go() -> fog_pb2.RunRoundResponse:
        server = grpc.aio.server(interceptors=[ErrorInterceptor()])
        fog_pb2_grpc.add_FogServiceServicer_to_server(_Fog(answer), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                reply: fog_pb2.RunRoundResponse = await fog_pb2_grpc.FogServiceStub(ch).RunRound(
                    fog_pb2.RunRoundRequest(), timeout=30
                )
                return reply
        finally:
            await server.stop(None)

    assert asyncio.run(go()) == expected


def test_after_a_round_the_fog_hands_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: released.append(1) or True)
    monkeypatch.setattr(memory, "RELEASE_AFTER_S", 0.0)
    fog = fog_service.Fog.__new__(fog_service.Fog)
    outcomes: list[bytes | Exception] = [b"answer", RuntimeError("the round failed")]

    async def run_round(config: Any, request: Any) -> bytes:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(fog, "_config", lambda proto: cast(RoundConfig, None))
    monkeypatch.setattr(fog, "_run_round", run_round)

    async def go() -> None:
        request = cast(Any, SimpleNamespace(config=None))
        assert await fog.RunRound(request, cast(Any, None)) == b"answer"
        await asyncio.sleep(0.05)
        assert len(released) == 1
        with pytest.raises(RuntimeError):
            await fog.RunRound(request, cast(Any, None))
        await asyncio.sleep(0.05)
        assert len(released) == 2  # a failed round's buffers too

    asyncio.run(go())


def test_the_fog_serves_with_a_fixed_receive_window() -> None:
    options = dict(server_options("fog"))
    assert options["grpc.http2.bdp_probe"] == 0
    assert options["grpc.http2.lookahead_bytes"] == FOG_RECEIVE_WINDOW == 1 << 20
    assert dict(server_options("fog", 8 << 20))["grpc.http2.lookahead_bytes"] == 8 << 20
    assert "grpc.http2.lookahead_bytes" not in dict(server_options("leader"))
    assert load_settings(role="fog").receive_window_kib * 1024 == FOG_RECEIVE_WINDOW  # the default
    assert load_settings(role="fog", receive_window_kib=8192).receive_window_kib == 8192


WINDOW_PROBE = """
import asyncio, grpc, sys
from hfl.rpc.server import server_options
async def main():
    server = grpc.aio.server(options=server_options("fog", int(sys.argv[1])))
    async def echo(request, context):
        return request
    handler = grpc.method_handlers_generic_handler("t.T", {"E": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await ch.unary_unary("/t.T/E")(b"x" * 100_000, timeout=30)
    await server.stop(None)
asyncio.run(main())
"""


@pytest.mark.parametrize("window", [FOG_RECEIVE_WINDOW, 8 << 20])
def test_a_fog_announces_its_fixed_window_to_facilities(window: int) -> None:
    """gRPC's own trace of the settings the server sends: its window goes from HTTP/2's 65535 bytes to
    the fog's window (the default, or HFL_RECEIVE_WINDOW_KIB's) once, and the bandwidth probe never
    raises it (with the probe on, the server announces 4 MiB at once here)."""
    env = {**os.environ, "GRPC_TRACE": "flowctl,http", "GRPC_VERBOSITY": "debug"}
    out = subprocess.run(
        [sys.executable, "-c", WINDOW_PROBE, str(window)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    # "[cli] adding N": the client taking in the window the server announced (N over HTTP/2's default)
    grown = [line for line in out.stderr.splitlines() if "[cli] adding" in line and "initial_window" in line]
    assert grown, out.stderr[-2000:]
    assert all(f"adding {window - 65535} for initial_window" in line for line in grown), grown
