"""Fog side of secure aggregation over gRPC: drive one BucketAggregator per bucket, stage by stage.

Each stage is a concurrent fan-out to the members still in the protocol, with a per-stage timeout: a
member that does not answer in time, answers with an error, or sends something unusable is dropped at
that stage. Up to g - t dropouts are recovered from the Shamir shares; with more, the bucket is
abandoned for this round (reported with the reason) and the round goes on with the other buckets.
The fog only ever holds masked vectors and, at the end, the exact sum of the survivors' updates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
import numpy as np

from hfl.deadline import STRAGGLER_FACTOR, STRAGGLER_FLOOR_S, StragglerWindow
from hfl.domain import Bucket, BucketResult, RoundConfig, TrainingPlan
from hfl.errors import HflError, clip
from hfl.proto.v1 import facility_pb2
from hfl.round.bucket import abandoned
from hfl.rpc import serde
from hfl.rpc.client import ByteCount, describe_rpc_error
from hfl.rpc.link import Joined, Lifted, Message, encode_call, encode_call_with
from hfl.rpc.metrics import SECAGG_DROPOUTS
from hfl.secagg import (
    STAGE_NAMES,
    BucketAggregator,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    QuantConfig,
    QuantizationError,
    SecAggError,
    UnmaskRequest,
    UnmaskResponse,
)
from services.fog.links import Links
from services.fog.rounds import BucketRequest, PhaseMarks

log = logging.getLogger("hfl.fog")

T = TypeVar("T")


class MemberLink(Protocol):
    """How the driver reaches the members of one bucket (their connections in the service, fakes in
    tests)."""

    async def advertise(self, member: str, timeout: float) -> KeyAdvertisement: ...

    async def share_keys(
        self, member: str, ads: Sequence[KeyAdvertisement], timeout: float
    ) -> list[EncryptedShare]: ...

    async def masked_input(
        self, member: str, shares: Sequence[EncryptedShare], timeout: float
    ) -> MaskedInput: ...

    async def unmask(self, member: str, request: UnmaskRequest, timeout: float) -> UnmaskResponse: ...


@dataclass(frozen=True)
class StageTimeouts:
    """Seconds a member has to answer at most: ``keys`` for the three key stages, ``masked`` for the
    masked input (which includes the member's local training). Within those limits a stage stops waiting
    for its last members earlier, as hfl.deadline.stage_deadline decides from ``factor`` and ``floor_s``."""

    keys: float
    masked: float
    factor: float = STRAGGLER_FACTOR
    floor_s: float = STRAGGLER_FLOOR_S

    @classmethod
    def for_plan(
        cls, timeout_s: float, factor: float = STRAGGLER_FACTOR, floor_s: float = STRAGGLER_FLOOR_S
    ) -> StageTimeouts:
        """Split the plan's round timeout: the whole bucket finishes within about ``timeout_s``."""
        keys = min(30.0, max(2.0, 0.15 * timeout_s))
        return cls(keys=keys, masked=max(keys, timeout_s - 3 * keys), factor=factor, floor_s=floor_s)


def no_answer(exc: BaseException) -> bool:
    """The member did not answer at all (down, cut off, gone), as opposed to answering with an error."""
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return describe_rpc_error(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class _Stage(Generic[T]):
    """One stage of one bucket: how to ask a member, what to do with its answer, who the answer says sent
    it, and how long a member has to answer at most."""

    number: int
    ask: Callable[[str], Awaitable[T]]
    accept: Callable[[T], None]
    sender: Callable[[T], str]
    timeout: float

    @property
    def name(self) -> str:
        return STAGE_NAMES[self.number]


@dataclass
class _Driver:
    """What the four stages of one bucket share. Members that do not answer at all, or not within the
    straggler window (hfl.deadline), are added to ``unreachable`` if it is given: they are reported like
    absent members."""

    agg: BucketAggregator
    timeouts: StageTimeouts
    where: str
    unreachable: set[str] | None = None

    async def run(self, stage: _Stage[T]) -> None:
        """Ask every member still in the protocol at once; keep the answers that arrive in time and are
        usable; then close the stage (the aggregator drops the members that gave none)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = {asyncio.create_task(self._ask(stage, m)): m for m in self.agg.alive}
        window = StragglerWindow(
            started, len(tasks), stage.timeout, factor=self.timeouts.factor, floor_s=self.timeouts.floor_s
        )
        pending = await _wait_in_window(set(tasks), window, loop)
        for task in pending:  # accepted the round but silent past the window: late, reported as absent
            task.cancel()
            self._late(stage, tasks[task], window, loop.time())
        await asyncio.gather(*pending, return_exceptions=True)
        self.agg.close_stage()

    async def _ask(self, stage: _Stage[T], member: str) -> bool:
        """One member's answer to ``stage``: True if it was accepted."""
        try:
            async with asyncio.timeout(stage.timeout):  # in this task (not wait_for's): an answer is
                msg = await stage.ask(member)  # taken in as soon as it arrives (links.InboundBudget)
        except Exception as e:  # no answer, an error status, or a malformed reply: dropped at this stage
            log.warning("%s: %s dropped out at stage '%s' (%s)", self.where, member, stage.name, _reason(e))
            if self.unreachable is not None and no_answer(e):
                self.unreachable.add(member)
            return False
        try:
            if stage.sender(msg) != member:
                raise SecAggError(f"the answer names {clip(stage.sender(msg))} as its sender")
            stage.accept(msg)
        except (SecAggError, HflError, ValueError) as e:
            log.warning(
                "%s: %s sent an unusable answer at stage '%s' and is dropped: %s",
                self.where,
                member,
                stage.name,
                e,
            )
            return False
        return True

    def _late(self, stage: _Stage[T], member: str, window: StragglerWindow, now: float) -> None:
        """``member`` accepted the round but is silent past the stage's window: go on without it."""
        log.warning(
            "%s: %s did not answer stage '%s' within %.1f s (the others took %.2f s at the median); "
            "going on without it",
            self.where,
            member,
            stage.name,
            window.waited(now),
            window.median_s(),
        )
        if self.unreachable is not None:
            self.unreachable.add(member)


async def _wait_in_window(
    pending: set[asyncio.Task[bool]], window: StragglerWindow, loop: asyncio.AbstractEventLoop
) -> set[asyncio.Task[bool]]:
    """Wait for the tasks until all are done or the straggler window closes; returns those still
    pending (every answer, usable or not, counts as heard)."""
    while pending:
        left = window.left(loop.time())
        if left <= 0:
            break
        done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        window.hear(loop.time(), len(done))
    return pending


async def drive_bucket(
    agg: BucketAggregator,
    link: MemberLink,
    timeouts: StageTimeouts,
    where: str,
    unreachable: set[str] | None = None,
    *,
    as_integers: bool = False,
) -> tuple[np.ndarray, int, tuple[str, ...], tuple[str, ...]]:
    """Run the four stages; returns (sum, count, members in the sum, members not in the sum): the sum in
    float64, or with ``as_integers`` as the members' quantised vectors add up (uint32,
    BucketAggregator.integer_result). Members that do not answer the first stage at all, or any stage
    within its straggler window, are added to ``unreachable`` if it is given.

    Raises SecAggError (BucketAbandoned, ReconstructionError) when no sum can be released."""
    driver = _Driver(agg, timeouts, where, unreachable)
    keys = timeouts.keys
    await driver.run(
        _Stage(1, lambda m: link.advertise(m, keys), agg.add_advertisement, lambda a: a.sender, keys)
    )
    ads = agg.advertisements()
    await driver.run(_Stage(2, lambda m: link.share_keys(m, ads, keys), agg.add_shares, _shares_sender, keys))
    masked = timeouts.masked
    await driver.run(
        _Stage(
            3,
            lambda m: link.masked_input(m, agg.shares_for(m), masked),
            agg.add_masked_input,
            lambda x: x.sender,
            masked,
        )
    )
    request = agg.unmask_request()
    await driver.run(
        _Stage(4, lambda m: link.unmask(m, request, keys), agg.add_unmask_response, lambda r: r.sender, keys)
    )
    result = await asyncio.to_thread(agg.integer_result if as_integers else agg.result)
    return result.total, result.count, result.members, result.dropped


def _shares_sender(shares: Sequence[EncryptedShare]) -> str:
    return shares[0].sender if shares else ""


async def run_secure_bucket(
    bucket: Bucket,
    round_: int,
    attempt: int,
    d: int,
    plan: TrainingPlan,
    link: MemberLink,
    timeouts: StageTimeouts | None = None,
    quant: QuantConfig | None = None,
    *,
    as_integers: bool = False,
) -> BucketResult:
    """One bucket over the secure path; protocol failures become an abandoned bucket, never an exception.
    ``quant``: the quantisation of the members' vectors (default: the plan's, for model updates). With
    ``as_integers`` the sum is the members' quantised vectors added up (uint32): what a fog sends its
    leader, half the bytes of the float64 sum (hfl.rpc.serde.run_round_response)."""
    where = f"round {round_} bucket {bucket.bucket_id}"
    log.info(
        "%s: secure aggregation of %d members (%s); %d needed to unmask",
        where,
        len(bucket.members),
        ", ".join(bucket.members),
        bucket.threshold,
    )
    try:
        agg = BucketAggregator(
            serde.secagg_round(round_, attempt),
            bucket.bucket_id,
            tuple(bucket.members),
            bucket.threshold,
            quant or serde.quant_config(plan, len(bucket.members)),
            d,
        )
    except (SecAggError, QuantizationError, HflError) as e:
        log.error("%s: secure aggregation cannot start: %s", where, e)
        return abandoned(bucket, tuple(bucket.members), f"secure aggregation cannot start: {e}")
    timeouts = timeouts or StageTimeouts.for_plan(plan.timeout_s)
    return await _aggregate(bucket, agg, link, timeouts, where, as_integers)


async def _aggregate(
    bucket: Bucket,
    agg: BucketAggregator,
    link: MemberLink,
    timeouts: StageTimeouts,
    where: str,
    as_integers: bool,
) -> BucketResult:
    """Drive ``agg`` through its stages and report the bucket: its exact sum, or abandoned."""
    away: set[str] = set()
    try:
        total, count, in_sum, dropped = await drive_bucket(
            agg, link, timeouts, where, away, as_integers=as_integers
        )
    except SecAggError as e:
        gone = tuple(sorted(agg.dropped_at))
        SECAGG_DROPOUTS.inc(len(gone))
        log.warning("%s: bucket abandoned for this round: %s", where, e)
        return abandoned(bucket, gone, str(e), unreachable=away)
    SECAGG_DROPOUTS.inc(len(agg.dropped_at))
    late = sorted(set(agg.dropped_at) & set(in_sum))
    if dropped or late:
        log.info(
            "%s: exact sum of %d of %d members recovered (dropped: %s%s)",
            where,
            count,
            len(bucket.members),
            ", ".join(dropped) or "none",
            f"; left during unmasking but counted: {', '.join(late)}" if late else "",
        )
    return BucketResult(
        bucket.bucket_id, bucket.fog_id, total, count, in_sum, dropped, unreachable=tuple(sorted(away))
    )


class FacilityMemberLink:
    """Reaches the members of one bucket over their connections to this fog (services/fog/links.py),
    counting the bytes of every call; with ``marks``, it notes when advertisements (the model handed
    out) and masked inputs (local work done) come back.

    The advertise, share-keys and unmask calls are the same for every member of the bucket: each is
    serialised once, on the first call of its stage, and the same bytes go to every member. The advertise
    call carries the model as the round's one serialised copy, shared with the other buckets
    (services/fog/rounds.SharedModel)."""

    def __init__(
        self,
        config: RoundConfig,
        request: BucketRequest,
        bucket_id: str,
        links: Links,
        counter: ByteCount | None,
        d: int,
        marks: PhaseMarks | None = None,
    ) -> None:
        self.config = config
        self.session = serde.session_to_proto(config.round, config.attempt, bucket_id)
        self.request = request
        self.bucket_id = bucket_id
        self.links = links
        self.counter = counter
        self.d = d
        self.marks = marks
        self._advert: Joined | None = None
        # (what the call was built from, its bytes): rebuilt only if the driver passes something else
        self._share_keys_req: tuple[Sequence[KeyAdvertisement], bytes] | None = None
        self._unmask_req: tuple[UnmaskRequest, bytes] | None = None

    async def _call(self, member: str, kind: str, data: Message, timeout: float) -> Any:
        return await self.links.call(member, kind, data, timeout, self.counter)

    async def advertise(self, member: str, timeout: float) -> KeyAdvertisement:
        if self._advert is None:  # the bucket's call: its own view and the round's shared model field
            r = self.request
            model = await r.model.field()
            if self._advert is None:  # (the first member to get here builds it, once)
                head = facility_pb2.SecAggAdvertiseRequest(
                    config=r.config, plan=r.plan, bucket_id=self.bucket_id
                )
                self._advert = encode_call_with("secagg_advertise", head, model)
        resp = await self._call(member, "secagg_advertise", self._advert, timeout)
        ad = serde.advertisement_from_proto(resp.advertisement)
        if self.marks is not None:
            self.marks.mark("distributed")
        return ad

    def _share_keys_request(self, ads: Sequence[KeyAdvertisement]) -> bytes:
        if self._share_keys_req is None or self._share_keys_req[0] is not ads:
            req = facility_pb2.SecAggShareKeysRequest(
                session=self.session, advertisements=[serde.advertisement_to_proto(a) for a in ads]
            )
            self._share_keys_req = (ads, encode_call("secagg_share_keys", req))
        return self._share_keys_req[1]

    async def share_keys(
        self, member: str, ads: Sequence[KeyAdvertisement], timeout: float
    ) -> list[EncryptedShare]:
        resp = await self._call(member, "secagg_share_keys", self._share_keys_request(ads), timeout)
        return serde.shares_from_proto(resp.shares)

    async def masked_input(
        self, member: str, shares: Sequence[EncryptedShare], timeout: float
    ) -> MaskedInput:
        req = facility_pb2.SecAggMaskedInputRequest(
            session=self.session, shares=[serde.share_to_proto(s) for s in shares]
        )
        resp: Lifted = await self._call(
            member, "secagg_masked_input", encode_call("secagg_masked_input", req), timeout
        )  # the masked vector stays in the received bytes: no copy, so nothing to hand to a thread
        msg = serde.masked_input_from_proto(resp.message, expected_length=self.d, data=resp.data)
        if self.marks is not None:
            self.marks.mark("collected")
        return msg

    async def unmask(self, member: str, request: UnmaskRequest, timeout: float) -> UnmaskResponse:
        if self._unmask_req is None or self._unmask_req[0] is not request:
            req = serde.unmask_request_to_proto(self.config.round, self.config.attempt, request)
            self._unmask_req = (request, encode_call("secagg_unmask", req))
        resp = await self._call(member, "secagg_unmask", self._unmask_req[1], timeout)
        return serde.unmask_response_from_proto(resp)
