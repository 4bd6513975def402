"""Where a round's time and bytes go, as seen by the leader (reported in each round event's cost, and
used by `hfl bench federation`), the per-fog RunRound request, and what the operator sees of a round."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hfl.domain import BucketEvaluation, RoundConfig, RoundCost
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import fog_pb2
from hfl.rpc import serde
from hfl.rpc.client import ByteCount
from hfl.rpc.metrics import FACILITY_FOG

log = logging.getLogger("hfl.leader")

# Fog-side phases (services/fog/service.py), in the order they happen.
FOG_PHASES = ("distribution", "local_work", "aggregation")


@dataclass
class RoundClock:
    """Seconds per phase of one round attempt at the leader.

    The fog part (from sending RunRound until the last fog answers) is split with the phases the
    slowest fog reports: distribution (model and configuration to the facilities), local work (until
    every update or masked input is in), aggregation at the fog (secure aggregation's unmasking, or the
    plain sum); what remains is transfer between leader and fogs."""

    config_s: float = 0.0
    config_bytes_in: int = 0
    config_bytes_out: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)
    _fogs: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)
    fog_bytes_in: dict[str, int] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = self.phases.get(name, 0.0) + (now - self._last)
        self._last = now

    def fog_answered(
        self, fog_id: str, started: float, phases_s: Mapping[str, float], bytes_in: int = 0
    ) -> None:
        """A fog answered; its own phase timings are kept when they are sane (finite, not negative)."""
        self.fog_bytes_in[fog_id] = bytes_in
        phases = {k: float(phases_s[k]) for k in FOG_PHASES if k in phases_s}
        if not all(math.isfinite(v) and v >= 0 for v in phases.values()):
            log.warning("fog %s sent impossible phase timings; ignored", fog_id)
            phases = {}
        self._fogs[fog_id] = (time.monotonic() - started, phases)

    def fogs_done(self) -> None:
        """Close the fog part of the round and split it by the slowest fog's own phases."""
        now = time.monotonic()
        total = now - self._last
        self._last = now
        timed = [x for x in self._fogs.values() if x[1]]
        if not timed:
            self.phases["fogs"] = total
            return
        _elapsed, slowest = max(timed, key=lambda x: x[0])
        inside = 0.0
        for k in FOG_PHASES:
            if k in slowest:
                self.phases[k] = max(0.0, min(slowest[k], total - inside))
                inside += self.phases[k]
        self.phases["leader_fog_transfer"] = max(0.0, total - inside)

    def cost(self, own: ByteCount, facilities: ByteCount) -> RoundCost:
        return RoundCost(
            phases_s={"config": round(self.config_s, 6), **{k: round(v, 6) for k, v in self.phases.items()}},
            leader_bytes_in=own.received + self.config_bytes_in,
            leader_bytes_out=own.sent + self.config_bytes_out,
            fog_facility_bytes=facilities.sent + facilities.received,
            fog_bytes_in_max=max(self.fog_bytes_in.values(), default=0),
            leader_by_peer=dict(sorted(own.by_peer.items())),
        )


def fog_request(
    base: fog_pb2.RunRoundRequest, bucket_configs: Sequence[pb.RoundConfig], fog_id: str
) -> fog_pb2.RunRoundRequest:
    """``base`` plus the signed per-bucket configuration views of this fog's buckets."""
    mine = fog_views(bucket_configs, fog_id)
    if not mine:
        return base
    return fog_pb2.RunRoundRequest(config=base.config, model=base.model, plan=base.plan, bucket_configs=mine)


def fog_views(
    bucket_configs: Sequence[pb.RoundConfig], fog_id: str, *, evaluation: bool = False
) -> list[pb.RoundConfig]:
    """The signed per-bucket views of this fog's training buckets (or, with ``evaluation``, of its
    evaluation buckets)."""
    return [
        c
        for c in bucket_configs
        if len(c.buckets) + len(c.eval_buckets) == 1
        and (c.eval_buckets if evaluation else c.buckets)
        and (c.eval_buckets if evaluation else c.buckets)[0].fog_id == fog_id
    ]


def checked_evaluations(
    config: RoundConfig, fog_id: str, answers: Sequence[pb.BucketEvaluation]
) -> list[BucketEvaluation]:
    """A fog's evaluation sums, keeping only those for its own evaluation buckets, with the group the
    authority gave the bucket and no more facilities than the bucket has; the rest is logged and dropped."""
    mine = {b.bucket_id: b for b in config.eval_buckets if b.fog_id == fog_id}
    out: list[BucketEvaluation] = []
    for proto in answers:
        try:
            e = serde.bucket_evaluation_from_proto(proto)
        except ValueError as exc:
            log.warning("round %d: fog %s sent a malformed evaluation: %s", config.round, fog_id, exc)
            continue
        bucket = mine.pop(e.bucket_id, None)
        if bucket is None or e.group != bucket.group or e.facilities > len(bucket.members):
            log.warning(
                "round %d: fog %s answered for an evaluation bucket it does not run (or not as scheduled)",
                config.round,
                fog_id,
            )
            continue
        out.append(e)
    return out


def publish_topology(config: RoundConfig) -> None:
    """hfl_facility_fog for this round only: the previous round's pairs are removed first, so a dashboard
    never shows a facility under a fog that no longer serves it (buckets are dealt again every round)."""
    FACILITY_FOG.clear()
    for b in config.buckets:
        for m in b.members:
            FACILITY_FOG.labels(facility=m, fog=b.fog_id).set(1)
