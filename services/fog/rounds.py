"""Scaling helpers of the fog's RunRound: per-bucket requests carrying the authority's signed bucket view
of the round configuration (so what a facility receives does not grow with the federation), and the
phase timings the fog reports back to the leader."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hfl.domain import Bucket, BucketResult, RoundConfig, TrainingPlan
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import fog_pb2
from hfl.rpc import serde
from hfl.rpc.client import ByteCount
from hfl.rpc.server import Channels
from services.fog import secure

log = logging.getLogger("hfl.fog")


@dataclass
class PhaseMarks:
    """When the last bucket of this fog finished handing out the model (``distributed``) and when the
    last bucket had every update or masked input (``collected``)."""

    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = max(self.marks.get(name, self.t0), time.monotonic())

    def to_json(self) -> str:
        end = time.monotonic()
        distributed = self.marks.get("distributed", self.t0)
        collected = max(self.marks.get("collected", distributed), distributed)
        return json.dumps(
            {
                "distribution": round(distributed - self.t0, 6),
                "local_work": round(collected - distributed, 6),
                "aggregation": round(end - collected, 6),
            },
            sort_keys=True,
        )


def bucket_requests(
    config: RoundConfig, request: fog_pb2.RunRoundRequest, buckets: Sequence[Bucket], authority_key: bytes
) -> dict[str, fog_pb2.RunRoundRequest]:
    """For each bucket, the request whose ``config`` is what its facilities should see: the authority's
    signed view of just that bucket when the leader forwarded one that checks out, else the full
    configuration (older leaders and authorities)."""
    views: dict[str, pb.RoundConfig] = {}
    for proto in request.bucket_configs:
        try:
            view: RoundConfig = serde.config_from_proto(proto)
            view.verify(authority_key)
        except Exception as e:  # a bad view only costs size: fall back to the full configuration
            log.warning(
                "round %d: ignoring a per-bucket configuration that does not check out: %s", config.round, e
            )
            continue
        if view.is_bucket_view_of(config):
            views[view.buckets[0].bucket_id] = proto
    out = {}
    for b in buckets:
        view_proto = views.get(b.bucket_id)
        out[b.bucket_id] = (
            request
            if view_proto is None
            else fog_pb2.RunRoundRequest(config=view_proto, model=request.model, plan=request.plan)
        )
    missing = [b.bucket_id for b in buckets if b.bucket_id not in views]
    if missing and request.bucket_configs:
        log.warning(
            "round %d: no valid per-bucket configuration for %s; sending the full one",
            config.round,
            ", ".join(missing),
        )
    return out


class TimedLink:
    """A secure-aggregation member link that notes when advertisements (the model handed out) and
    masked inputs (local work done) come back."""

    def __init__(self, inner: secure.GrpcMemberLink, marks: PhaseMarks) -> None:
        self.inner = inner
        self.marks = marks

    async def advertise(self, member: str, timeout: float) -> Any:
        out = await self.inner.advertise(member, timeout)
        self.marks.mark("distributed")
        return out

    async def share_keys(self, member: str, ads: Any, timeout: float) -> Any:
        return await self.inner.share_keys(member, ads, timeout)

    async def masked_input(self, member: str, shares: Any, timeout: float) -> Any:
        out = await self.inner.masked_input(member, shares, timeout)
        self.marks.mark("collected")
        return out

    async def unmask(self, member: str, request: Any, timeout: float) -> Any:
        return await self.inner.unmask(member, request, timeout)


async def run_secure_bucket_timed(
    config: RoundConfig,
    bucket: Bucket,
    request: fog_pb2.RunRoundRequest,
    plan: TrainingPlan,
    channels: Channels,
    counter: ByteCount | None,
    d: int,
    marks: PhaseMarks,
    swap_keys: bool = False,
) -> BucketResult:
    """The fog's secure path for one bucket of a round (secure.run_secure_bucket over gRPC), with phase
    marks; ``swap_keys`` is the HFL_BYZANTINE=swap_keys experiment fault."""
    inner = secure.GrpcMemberLink(config, request, bucket.bucket_id, channels, counter, d, swap_keys)
    link = TimedLink(inner, marks)
    return await secure.run_secure_bucket(bucket, config.round, config.attempt, d, plan, link)
