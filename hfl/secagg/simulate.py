"""In-memory wiring of one bucket (members + aggregator) for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hfl.crypto.signing import SigningKey
from hfl.secagg.aggregator import BucketAggregator
from hfl.secagg.member import SecAggMember
from hfl.secagg.messages import BucketSum
from hfl.secagg.protocol import Stage, check_member_ids, default_threshold
from hfl.secagg.quantize import QuantConfig

__all__ = ["run_bucket_in_memory"]


def run_bucket_in_memory(
    inputs: Mapping[str, np.ndarray],
    t: int | None,
    cfg: QuantConfig,
    drop_at: Mapping[str, int] | None = None,
    *,
    round: int = 1,
    bucket: str = "bucket-0",
    rngs: Mapping[str, np.random.Generator] | None = None,
    as_integers: bool = False,
) -> BucketSum:
    """Run the whole protocol for one bucket in memory and return its sum.

    ``drop_at[m] = k`` makes member m stop answering from stage k on (1 advertise, 2 share keys,
    3 masked input, 4 unmask). ``t=None`` uses ``default_threshold``. ``rngs`` optionally fixes each
    member's quantisation rounding generator. ``as_integers``: the sum as the survivors' quantised
    vectors add up (BucketAggregator.integer_result). Raises BucketAbandoned when too few members remain.
    """
    ids = check_member_ids(inputs)
    drop_at = dict(drop_at or {})
    for m, k in drop_at.items():
        if m not in inputs:
            raise ValueError(f"drop_at names {m!r}, who has no input")
        if k not in {int(s) for s in Stage}:
            raise ValueError(f"drop_at stage for {m!r} must be 1 to 4, got {k!r}")
    lengths = {np.asarray(x).shape for x in inputs.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError("all inputs must be 1-D vectors of the same length")
    d = next(iter(lengths))[0]
    t = default_threshold(len(ids)) if t is None else t
    keys = {m: SigningKey.generate() for m in ids}
    identities = {m: keys[m].public_bytes for m in ids}
    rngs = rngs or {}
    members = {
        m: SecAggMember(m, round, bucket, identities, keys[m], t, cfg, d, rng=rngs.get(m)) for m in ids
    }
    agg = BucketAggregator(round, bucket, ids, t, cfg, d)

    def answering(stage: Stage) -> list[str]:
        return [m for m in agg.alive if drop_at.get(m, len(Stage) + 1) > stage]

    for m in answering(Stage.ADVERTISE):
        agg.add_advertisement(members[m].advertise())
    agg.close_stage()
    ads = agg.advertisements()
    for m in answering(Stage.SHARE_KEYS):
        agg.add_shares(members[m].share_keys(ads))
    agg.close_stage()
    for m in answering(Stage.MASKED_INPUT):
        agg.add_masked_input(members[m].masked_input(agg.shares_for(m), np.asarray(inputs[m])))
    agg.close_stage()
    request = agg.unmask_request()
    for m in answering(Stage.UNMASK):
        agg.add_unmask_response(members[m].unmask(request.survivors, request.dropped))
    agg.close_stage()
    return agg.integer_result() if as_integers else agg.result()
