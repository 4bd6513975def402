"""Scaling helpers of the fog's RunRound: per-bucket requests carrying the authority's signed bucket view
of the round configuration (so what a facility receives does not grow with the federation), and the
phase timings the fog reports back to the leader."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hfl.domain import Bucket, RoundConfig
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import facility_pb2
from hfl.rpc import link, serde

log = logging.getLogger("hfl.fog")


@dataclass
class PhaseMarks:
    """When the last bucket of this fog finished handing out the model (``distributed``) and when the
    last bucket had every update or masked input (``collected``)."""

    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def seconds(self) -> dict[str, float]:
        end = time.monotonic()
        distributed = self.marks.get("distributed", self.t0)
        collected = max(self.marks.get("collected", distributed), distributed)
        return {
            "distribution": round(distributed - self.t0, 6),
            "local_work": round(collected - distributed, 6),
            "aggregation": round(end - collected, 6),
        }


class RoundRequest(Protocol):
    """What a fog is asked to hand out: RunRoundRequest, EvaluateRequest."""

    @property
    def config(self) -> pb.RoundConfig: ...
    @property
    def model(self) -> pb.Model: ...
    @property
    def plan(self) -> pb.TrainingPlan: ...
    @property
    def bucket_configs(self) -> Sequence[pb.RoundConfig]: ...


# The calls that hand out the model carry it as the same field (SecAggAdvertiseRequest, StartRoundRequest).
MODEL_FIELD = facility_pb2.SecAggAdvertiseRequest.DESCRIPTOR.fields_by_name["model"].number
assert facility_pb2.StartRoundRequest.DESCRIPTOR.fields_by_name["model"].number == MODEL_FIELD


class SharedModel:
    """The round's model, and that model serialised once as the ``model`` field of the calls that hand it
    out, for every bucket of the round (hfl.rpc.link.encode_call_with): the fog holds one serialised copy
    of the model, not one per bucket (8 MB each at d=10^6; 17 buckets at N=50 in buckets of 3)."""

    def __init__(self, message: pb.Model) -> None:
        self.message = message  # the leader's message itself
        self._field: asyncio.Future[bytes] | None = None

    async def field(self) -> bytes:
        """The serialised field: the first caller serialises it (off the event loop), the others wait."""
        if self._field is None:
            self._field = asyncio.ensure_future(
                asyncio.to_thread(link.encode_field, MODEL_FIELD, self.message)
            )
        return await asyncio.shield(self._field)


@dataclass(frozen=True)
class BucketRequest:
    """What one bucket's facilities are sent: their view of the configuration, with the round's model and
    plan, shared by every bucket (neither is copied per bucket)."""

    config: pb.RoundConfig
    model: SharedModel
    plan: pb.TrainingPlan


def bucket_requests(
    config: RoundConfig, request: RoundRequest, buckets: Sequence[Bucket], authority_key: bytes
) -> dict[str, BucketRequest]:
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
        only = view.view_bucket()
        if only is not None and view.is_bucket_view_of(config):
            views[only.bucket_id] = proto
    model, plan = SharedModel(request.model), request.plan
    out = {b.bucket_id: BucketRequest(views.get(b.bucket_id, request.config), model, plan) for b in buckets}
    missing = [b.bucket_id for b in buckets if b.bucket_id not in views]
    if missing and request.bucket_configs:
        log.warning(
            "round %d: no valid per-bucket configuration for %s; sending the full one",
            config.round,
            ", ".join(missing),
        )
    return out
