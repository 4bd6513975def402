"""A fog node: runs its buckets of a round and forwards only bucket sums to the leader."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from hfl import bounds
from hfl.deadline import StragglerWindow
from hfl.domain import Bucket, BucketEvaluation, BucketResult, Metrics, RoundConfig, TrainingPlan
from hfl.errors import InvalidInput, NotReady, StaleRound, clip
from hfl.learning.metrics import EVAL_VECTOR_LEN, metrics_from_vector
from hfl.memory import release_soon
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import facility_pb2, fog_pb2, fog_pb2_grpc
from hfl.round.bucket import PlainTally
from hfl.rpc import authz, link, serde
from hfl.rpc.client import ByteCount, describe_rpc_error
from hfl.rpc.link import encode_call, encode_call_with
from hfl.rpc.metrics import REFUSED, ROUND
from hfl.rpc.settings import FogSettings
from services.fog.links import Links
from services.fog.rounds import BucketRequest, PhaseMarks, bucket_requests
from services.fog.secure import FacilityMemberLink, StageTimeouts, no_answer, run_secure_bucket

log = logging.getLogger("hfl.fog")

EVAL_TIMEOUT_S = 60.0  # the longest a facility may take to evaluate the model (seconds)


@dataclass
class PlainBucket:
    """Collects the plain (--no-secagg) updates of one bucket: the tally (hfl.round.bucket) and, for the
    wait, when each member was heard and whether the bucket is complete."""

    bucket: Bucket
    dim: int
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever a member is heard from
    started: float = 0.0  # time.monotonic() when the round was handed out (for the straggler window)
    heard: list[float] = field(default_factory=list)  # seconds after ``started`` each member was heard
    tally: PlainTally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = PlainTally(self.bucket, self.dim)

    def _note(self) -> None:
        self.heard.append(time.monotonic() - self.started)
        self.changed.set()
        if self.tally.all_heard():
            self.complete.set()

    def window(self, limit_s: float, factor: float, floor_s: float) -> StragglerWindow:
        """The straggler window of the wait for updates, over the times this bucket records."""
        members = len(self.bucket.members)
        return StragglerWindow(
            self.started, members, limit_s, factor=factor, floor_s=floor_s, heard=self.heard
        )

    def stragglers(self) -> list[str]:
        """Members not heard from at all (still expected)."""
        return self.tally.stragglers()

    def lost(self, node_id: str) -> None:
        """A member did not answer at all: do not wait for its update, and tell the leader."""
        if self.tally.lost(node_id):
            self._note()

    def decline(self, node_id: str) -> None:
        """A member refused to start this round: do not wait for its update."""
        if self.tally.decline(node_id):
            self._note()

    def refuse(self, node_id: str) -> None:
        """A member sent a malformed update: it counts as missing, and as evidence against it."""
        if self.tally.refuse(node_id):
            self._note()

    def add(self, node_id: str, update: np.ndarray) -> None:
        self.tally.add(node_id, update)
        self._note()

    def result(self) -> BucketResult:
        return self.tally.result()


def _named_in_header(context: grpc.aio.ServicerContext) -> str:
    """Without TLS (debugging only) nobody is authenticated: the facility names itself."""
    for key, value in context.invocation_metadata() or ():
        if key == "hfl-node" and isinstance(value, str):
            return bounds.node_id(value)
    raise InvalidInput("a connection must name its facility (the hfl-node header)")


async def _gather_owned(coros: Iterable[Awaitable[BucketResult]]) -> list[BucketResult]:
    """asyncio.gather, but the results are held by the returned list alone: gather's tasks keep each
    result too while the caller runs on, so a sum the caller lets go would stay in memory."""
    out: list[Any] = []

    async def into(i: int, coro: Awaitable[BucketResult]) -> None:
        out[i] = await coro

    coros = list(coros)
    out.extend([None] * len(coros))
    await asyncio.gather(*(into(i, c) for i, c in enumerate(coros)))
    return out


class Fog(fog_pb2_grpc.FogServiceServicer):
    def __init__(self, settings: FogSettings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.authority_key = b""
        self.current: tuple[int, int] = (0, 0)
        self.open: dict[str, PlainBucket] = {}
        self.received_bytes = 0
        self.dim = 0
        self.links = Links()  # the facilities' connections to this fog (links.py)

    def ready(self, authority_key: bytes) -> None:
        self.authority_key = authority_key

    def member_link(
        self,
        config: RoundConfig,
        request: BucketRequest,
        bucket_id: str,
        counter: ByteCount,
        d: int,
        marks: PhaseMarks,
    ) -> FacilityMemberLink:
        """How this fog reaches the members of one training bucket in secure aggregation (a faulty fog
        for experiments returns another, services/fog/faults.py)."""
        return FacilityMemberLink(config, request, bucket_id, self.links, counter, d, marks=marks)

    def _config(self, proto: pb.RoundConfig) -> RoundConfig:
        if not self.authority_key:
            raise NotReady("this fog is still starting")
        config = serde.config_from_proto(proto)
        config.verify(self.authority_key)
        if (config.round, config.attempt) < self.current:
            raise StaleRound(f"round {config.round} is older than the current round {self.current[0]}")
        return config

    # ------------------------------------------------------------------ leader -> fog
    async def RunRound(  # type: ignore[override]  # answered already serialised (hfl.rpc.link.RAW_RESPONSES)
        self, request: fog_pb2.RunRoundRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Run this fog's buckets of the round and answer the leader with their sums (a RunRoundResponse,
        serialised by hfl.rpc.serde.run_round_response)."""
        config = self._config(request.config)
        try:
            return await self._run_round(config, request)
        finally:
            release_soon()  # the round's buffers are freed once its answer has gone (hfl/memory.py)

    async def _run_round(self, config: RoundConfig, request: fog_pb2.RunRoundRequest) -> bytes:
        d = serde.model_from_proto(request.model)[1].size  # checks the model; its copy is not kept
        plan = serde.plan_from_proto(request.plan)
        mine = [b for b in config.buckets if b.fog_id == self.node_id]
        self._open_round(config, plan, mine, d)
        counter = ByteCount()
        # Each bucket's facilities get the authority's signed view of their bucket only (rounds.py).
        requests = bucket_requests(config, request, mine, self.authority_key)
        marks = PhaseMarks()
        if plan.secure:  # masked updates, stage by stage (services/fog/secure.py)
            results = await self._run_secure(config, plan, mine, requests, d, counter, marks)
        else:
            results = await _gather_owned(
                self._run_plain_bucket(config, b, requests[b.bucket_id], plan, counter, marks) for b in mine
            )
        self.open = {}
        return serde.run_round_response(
            results,
            bytes_to_facilities=counter.sent,
            bytes_from_facilities=counter.received + self.received_bytes,
            phases_s=marks.seconds(),
        )

    def _open_round(self, config: RoundConfig, plan: TrainingPlan, mine: list[Bucket], dim: int) -> None:
        """This fog's round is now ``config``'s: plain updates for it are collected here; on the secure
        path there is none to take (SubmitUpdate refuses)."""
        self.current = (config.round, config.attempt)
        self.dim = dim
        ROUND.set(config.round)
        self.received_bytes = 0
        self.open = {} if plan.secure else {b.bucket_id: PlainBucket(b, dim) for b in mine}

    async def _run_secure(
        self,
        config: RoundConfig,
        plan: TrainingPlan,
        mine: list[Bucket],
        requests: dict[str, BucketRequest],
        d: int,
        counter: ByteCount,
        marks: PhaseMarks,
    ) -> list[BucketResult]:
        """This fog's training buckets over secure aggregation, all at once."""
        timeouts = StageTimeouts.for_plan(
            plan.timeout_s, self.settings.straggler_factor, self.settings.straggler_floor_s
        )
        return await _gather_owned(
            run_secure_bucket(
                b,
                config.round,
                config.attempt,
                d,
                plan,
                self.member_link(config, requests[b.bucket_id], b.bucket_id, counter, d, marks),
                timeouts,
                as_integers=True,  # sent to the leader as they add up, half the bytes of float64
            )
            for b in mine
        )

    async def _run_plain_bucket(
        self,
        config: RoundConfig,
        bucket: Bucket,
        request: BucketRequest,
        plan: TrainingPlan,
        counter: ByteCount,
        marks: PhaseMarks,
    ) -> BucketResult:
        collector = self.open[bucket.bucket_id]
        # One message for the whole bucket, with the round's one serialised copy of the model (rounds.py).
        start_request = encode_call_with(
            "start_round",
            facility_pb2.StartRoundRequest(
                config=request.config, plan=request.plan, bucket_id=bucket.bucket_id
            ),
            await request.model.field(),
        )
        collector.started = time.monotonic()
        # StartRound answers at once (training runs after it); one that hangs is just a straggler below.
        starts = [
            asyncio.create_task(self._start_member(config, collector, m, start_request, plan, counter))
            for m in bucket.members
        ]
        await asyncio.wait(starts, timeout=self.settings.straggler_floor_s)
        marks.mark("distributed")
        await self._await_updates(collector, plan)
        self._go_on_without_stragglers(config, collector)
        for task in starts:
            task.cancel()
        await asyncio.gather(*starts, return_exceptions=True)
        marks.mark("collected")
        result = collector.result()
        if result.dropped:
            log.info(
                "round %d bucket %s: %d of %d members missing (%s)",
                config.round,
                bucket.bucket_id,
                len(result.dropped),
                len(bucket.members),
                ", ".join(result.dropped),
            )
        return result

    async def _start_member(
        self,
        config: RoundConfig,
        collector: PlainBucket,
        member: str,
        start_request: link.Message,
        plan: TrainingPlan,
        counter: ByteCount,
    ) -> None:
        """Hand ``member`` the round; one that declines or does not answer is not waited for."""
        try:
            await self.links.call(member, "start_round", start_request, min(30.0, plan.timeout_s), counter)
        except grpc.aio.AioRpcError as e:
            log.warning(
                "round %d: facility %s did not start: %s", config.round, member, describe_rpc_error(e)
            )
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:  # it declined (e.g. privacy budget)
                collector.decline(member)
            elif no_answer(e):  # down, cut off, or gone
                collector.lost(member)

    async def _await_updates(self, collector: PlainBucket, plan: TrainingPlan) -> None:
        """Wait until every member is heard from or the straggler window (hfl.deadline) closes."""
        window = collector.window(
            plan.timeout_s, self.settings.straggler_factor, self.settings.straggler_floor_s
        )
        while not collector.complete.is_set():
            left = window.left(time.monotonic())
            if left <= 0:
                break
            collector.changed.clear()
            try:
                await asyncio.wait_for(collector.changed.wait(), timeout=left)
            except TimeoutError:
                pass

    def _go_on_without_stragglers(self, config: RoundConfig, collector: PlainBucket) -> None:
        for member in collector.stragglers():  # started the round, then silent past the window
            log.warning(
                "round %d: %s sent no update within %.1f s; going on without it",
                config.round,
                member,
                time.monotonic() - collector.started,
            )
            collector.lost(member)

    # ------------------------------------------------------------------ facility -> fog
    async def SubmitUpdate(
        self, request: fog_pb2.SubmitUpdateRequest, context: grpc.aio.ServicerContext
    ) -> fog_pb2.SubmitUpdateResponse:
        try:
            try:
                update = serde.vector_from_proto(
                    request.update,
                    expected_length=self.dim or None,
                    dtype=None,
                    what="update",
                    as_float64=False,
                )  # float32 (or float64), as received: summed in float64 at the end
            except InvalidInput:
                bucket = self.open.get(request.bucket_id)
                if bucket is not None and (request.round, request.attempt) == self.current:
                    bucket.refuse(request.node_id)
                raise
            if (request.round, request.attempt) != self.current or request.bucket_id not in self.open:
                raise StaleRound(
                    f"no open bucket {clip(request.bucket_id)} for round {request.round} here "
                    f"(current round: {self.current[0]})"
                )
            self.open[request.bucket_id].add(request.node_id, update)
        except Exception as e:
            REFUSED.labels(reason=type(e).__name__).inc()
            raise
        self.received_bytes += request.ByteSize()
        return fog_pb2.SubmitUpdateResponse()

    # ------------------------------------------------------------------ the facilities' connections
    async def Connect(  # type: ignore[override]  # frames are read and written by hand (hfl.rpc.link)
        self, request_iterator: AsyncIterator[link.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """A facility's one connection to this fog: the fog's calls go down it, the answers come up
        (services/fog/links.py; frames read and written by hand, hfl.rpc.link). Its certificate says
        which facility it is (with HFL_TLS=false, the ``hfl-node`` header of the call, for debugging
        only)."""
        node_id = authz.caller_id() or _named_in_header(context)
        async for frame in self.links.serve(node_id, request_iterator, context):
            yield frame

    # ------------------------------------------------------------------ evaluation
    async def Evaluate(
        self, request: fog_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> fog_pb2.EvaluateResponse:
        """Summed test metrics of the committed model, one sum per evaluation bucket of this fog: masked
        like the round's updates when the round used secure aggregation, so this fog learns no
        facility's own numbers (how many test patients it has, how well the model does there)."""
        config = self._config(request.config)
        serde.model_from_proto(request.model)  # refuse a malformed model before asking anyone
        plan = serde.plan_from_proto(request.plan)
        mine = [b for b in config.eval_buckets if b.fog_id == self.node_id]
        requests = bucket_requests(config, request, mine, self.authority_key)
        if plan.secure:
            timeouts = StageTimeouts.for_plan(
                min(plan.timeout_s, EVAL_TIMEOUT_S),
                self.settings.straggler_factor,
                self.settings.straggler_floor_s,
            )
            parts = await asyncio.gather(
                *(self._evaluate_secure(config, b, requests[b.bucket_id], plan, timeouts) for b in mine)
            )
        else:
            parts = await asyncio.gather(*(self._evaluate_plain(config, b, request.model) for b in mine))
        return fog_pb2.EvaluateResponse(buckets=[serde.bucket_evaluation_to_proto(e) for e in parts])

    async def _evaluate_secure(
        self,
        config: RoundConfig,
        bucket: Bucket,
        request: BucketRequest,
        plan: TrainingPlan,
        timeouts: StageTimeouts,
    ) -> BucketEvaluation:
        link = FacilityMemberLink(config, request, bucket.bucket_id, self.links, None, EVAL_VECTOR_LEN)
        try:
            quant = serde.eval_quant_config(len(bucket.members))
        except InvalidInput as e:
            return BucketEvaluation(bucket.bucket_id, bucket.group, 0, Metrics(), problem=str(e))
        r = await run_secure_bucket(
            bucket, config.round, config.attempt, EVAL_VECTOR_LEN, plan, link, timeouts, quant=quant
        )
        if r.abandoned:
            return BucketEvaluation(bucket.bucket_id, bucket.group, 0, Metrics(), problem=r.reason)
        try:
            metrics = metrics_from_vector(r.total)
        except ValueError as e:  # a member sent numbers that do not add up: the sum is not usable
            log.warning(
                "round %d: evaluation bucket %s gave an unusable sum: %s", config.round, bucket.bucket_id, e
            )
            return BucketEvaluation(
                bucket.bucket_id, bucket.group, 0, Metrics(), problem=f"unusable sum: {e}"
            )
        return BucketEvaluation(bucket.bucket_id, bucket.group, r.count, metrics)

    async def _evaluate_plain(self, config: RoundConfig, bucket: Bucket, model: pb.Model) -> BucketEvaluation:
        """Without secure aggregation (experiments): each member answers with its own sums, as its
        updates reach this fog unmasked too."""
        msg = encode_call("evaluate_model", facility_pb2.EvaluateModelRequest(model=model))

        async def one(member: str) -> Metrics | None:
            try:
                resp = await self.links.call(member, "evaluate_model", msg, EVAL_TIMEOUT_S)
                return serde.metrics_from_proto(resp.metrics)
            except (grpc.aio.AioRpcError, InvalidInput) as e:
                log.warning("evaluation at %s failed: %s", member, e)
                return None

        parts = [p for p in await asyncio.gather(*(one(m) for m in bucket.members)) if p is not None]
        total = Metrics()
        for p in parts:
            total = total + p
        return BucketEvaluation(bucket.bucket_id, bucket.group, len(parts), total)
