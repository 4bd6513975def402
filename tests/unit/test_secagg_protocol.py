"""Secure aggregation end to end in memory: every dropout pattern, exactness, masking looks uniform."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import chisquare

from hfl.crypto.signing import SigningKey
from hfl.secagg import (
    BucketAbandoned,
    BucketAggregator,
    BucketSum,
    QuantConfig,
    SecAggMember,
    Stage,
    default_threshold,
    dequantize,
    dequantize_sum,
    quantize,
    run_bucket_in_memory,
)

D = 16
CFG = QuantConfig(clip=1.0, max_members=8)


def _grid_inputs(g: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs on the quantisation grid (multiples of 2**-10), so quantisation is exact and the
    expected sum is known exactly in float64."""
    rng = np.random.default_rng(seed)
    return {f"fac-{i}": rng.integers(-1024, 1025, D) / 1024.0 for i in range(g)}


def _patterns(g: int, t: int) -> list[dict[str, int]]:
    """Every assignment of a dropout stage (1-4) to at most g - t members."""
    ids = [f"fac-{i}" for i in range(g)]
    out: list[dict[str, int]] = []
    for k in range(g - t + 1):
        for who in itertools.combinations(ids, k):
            for stages in itertools.product([int(s) for s in Stage], repeat=k):
                out.append(dict(zip(who, stages, strict=True)))
    return out


def test_default_threshold() -> None:
    assert [default_threshold(g) for g in (3, 4, 5, 6, 8, 10, 30)] == [3, 3, 4, 5, 6, 7, 21]
    for g in range(3, 40):
        t = default_threshold(g)
        assert 3 * t > 2 * g and 3 * (t - 1) <= 2 * g


@pytest.mark.parametrize("g", [3, 5, 8])
def test_every_dropout_pattern_up_to_g_minus_t_gives_the_exact_survivor_sum(g: int) -> None:
    t = default_threshold(g)
    inputs = _grid_inputs(g, seed=g)
    patterns = _patterns(g, t)
    assert len(patterns) == sum(
        len(list(itertools.combinations(range(g), k))) * 4**k for k in range(g - t + 1)
    )
    for drop_at in patterns:
        result = run_bucket_in_memory(inputs, t, CFG, drop_at)
        # members that sent their masked input are in the sum, even if they miss the unmask stage
        in_sum = sorted(m for m in inputs if drop_at.get(m, 5) >= Stage.UNMASK)
        expected = np.zeros(D)
        for m in in_sum:
            expected += inputs[m]
        assert result.members == tuple(in_sum), drop_at
        assert result.count == len(in_sum)
        assert result.dropped == tuple(sorted(set(inputs) - set(in_sum)))
        assert np.array_equal(result.total, expected), drop_at


@pytest.mark.parametrize("g", [3, 5, 8])
@pytest.mark.parametrize("stage", list(Stage))
def test_one_dropout_too_many_abandons_the_bucket(g: int, stage: Stage) -> None:
    t = default_threshold(g)
    inputs = _grid_inputs(g, seed=1)
    drop_at = {f"fac-{i}": int(stage) for i in range(g - t + 1)}
    with pytest.raises(BucketAbandoned, match="needed"):
        run_bucket_in_memory(inputs, t, CFG, drop_at)


def test_sum_equals_sum_of_survivors_quantised_inputs_for_off_grid_inputs() -> None:
    g, t = 5, 4
    rng = np.random.default_rng(7)
    inputs = {f"fac-{i}": rng.uniform(-1, 1, 200) for i in range(g)}
    seeds = {m: 1000 + i for i, m in enumerate(inputs)}
    result = run_bucket_in_memory(
        inputs, t, CFG, {"fac-2": 3}, rngs={m: np.random.default_rng(s) for m, s in seeds.items()}
    )
    expected = np.zeros(200)
    for m in inputs:
        if m != "fac-2":  # replay each survivor's rounding with an identically seeded generator
            expected += dequantize(quantize(inputs[m], CFG, np.random.default_rng(seeds[m])), CFG)
    assert np.array_equal(result.total, expected)
    naive = sum(inputs[m] for m in inputs if m != "fac-2")
    assert np.max(np.abs(result.total - naive)) <= 4 * CFG.resolution


def test_the_integer_sum_is_the_survivors_quantised_vectors_added_up() -> None:
    """What a fog sends its leader: the unmasked sum as the survivors' quantised vectors add up (uint32,
    half the bytes of float64), which dequantize_sum turns into the float64 sum exactly."""
    g, t = 7, 5
    rng = np.random.default_rng(11)
    inputs = {f"fac-{i}": rng.uniform(-1, 1, 300) for i in range(g)}
    seeds = {m: 2000 + i for i, m in enumerate(inputs)}
    drop = {"fac-1": 3, "fac-4": 4}  # one before its masked input, one during unmasking (still counted)

    def run(as_integers: bool) -> BucketSum:
        rngs = {m: np.random.default_rng(s) for m, s in seeds.items()}
        return run_bucket_in_memory(inputs, t, CFG, drop, rngs=rngs, as_integers=as_integers)

    ints, floats = run(True), run(False)
    expected = np.zeros(300, dtype=np.uint32)
    for m in inputs:
        if m != "fac-1":
            expected += quantize(inputs[m], CFG, np.random.default_rng(seeds[m]))
    assert ints.total.dtype == np.uint32 and np.array_equal(ints.total, expected)
    assert (
        (ints.count, ints.members, ints.dropped)
        == (floats.count, floats.members, floats.dropped)
        == (6, ("fac-0", "fac-2", "fac-3", "fac-4", "fac-5", "fac-6"), ("fac-1",))
    )
    assert np.array_equal(dequantize_sum(ints.total, ints.count, CFG), floats.total)


def test_a_single_masked_update_looks_uniform() -> None:
    g, t, d = 3, 3, 1 << 16
    ids = [f"fac-{i}" for i in range(g)]
    keys = {m: SigningKey.generate() for m in ids}
    identities = {m: keys[m].public_bytes for m in ids}
    members = {m: SecAggMember(m, 4, "b", identities, keys[m], t, CFG, d) for m in ids}
    agg = BucketAggregator(4, "b", ids, t, CFG, d)
    for m in ids:
        agg.add_advertisement(members[m].advertise())
    agg.close_stage()
    for m in ids:
        agg.add_shares(members[m].share_keys(agg.advertisements()))
    agg.close_stage()
    x = np.zeros(d)  # the most structured input possible
    masked = members["fac-0"].masked_input(agg.shares_for("fac-0"), x).y
    plain = quantize(x, CFG, np.random.default_rng(0))
    # p-value threshold 1e-6: a correct mask fails with probability 1e-6; an unmasked input always fails.
    for vec, should_pass in ((masked, True), (plain, False)):
        byte_counts = np.bincount(vec.view(np.uint8), minlength=256)
        top_counts = np.bincount(vec >> 24, minlength=256)
        passed = bool(chisquare(byte_counts).pvalue > 1e-6 and chisquare(top_counts).pvalue > 1e-6)
        assert passed is should_pass
