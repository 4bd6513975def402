"""The outlier screen (hfl.robust.rules.screen) and refused updates in reputation (with_refused)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hfl.robust.reputation import Reputation, ReputationError, with_refused
from hfl.robust.rules import RULES, aggregate, check_rule, screen
from hfl.round.propose import compute_model


def honest_means(rng: np.random.Generator, n: int = 4, d: int = 13, signal: float = 0.0) -> np.ndarray:
    """Bucket means of 3 honest updates each: a shared direction (signal) plus facility noise."""
    g = np.zeros(d)
    g[0] = signal
    return np.stack([g + rng.normal(0.0, 0.1, size=(3, d)).mean(axis=0) for _ in range(n)])


@pytest.mark.parametrize("signal", [0.0, 1.0])
def test_honest_spread_is_not_flagged(signal: float) -> None:
    rng = np.random.default_rng(7)
    flagged = sum(len(screen(honest_means(rng, signal=signal))[0]) for _ in range(300))
    assert flagged <= 3  # < 1 % of rounds, in line with the calibration on real honest runs


def test_scaled_bucket_is_flagged_even_below_the_norm_bound() -> None:
    rng = np.random.default_rng(1)
    means = honest_means(rng)
    means[2] = means[2] * 5.0  # one scale x10 member of three: ~4-6x the honest bucket norm
    flagged, info = screen(means)
    assert flagged == [2] and info["screen_test"] == "too_large"
    res = aggregate("trimmed_mean", means * 3, np.full(4, 3), f=1, clip_update=3.0)
    assert res.details["norm_flagged"] == [] and res.flag_kinds == {2: "screen"}


def test_two_scaled_buckets_of_four_are_both_flagged() -> None:
    rng = np.random.default_rng(2)
    means = honest_means(rng)
    means[[0, 3]] *= 5.0
    assert screen(means)[0] == [0, 3]


@pytest.mark.parametrize("factor", [1 / 3, -1 / 3, 0.0])
def test_shrunk_or_flipped_bucket_is_flagged_in_a_coherent_round(factor: float) -> None:
    rng = np.random.default_rng(3)
    means = honest_means(rng, signal=1.0)  # a learning round: updates agree on a direction
    means[1] = means[1] * factor + rng.normal(0.0, 0.01, size=means.shape[1])
    flagged, info = screen(means)
    assert flagged == [1]
    assert info["screen_test"] == "shrunk"


def test_shrunk_bucket_is_not_judged_when_updates_are_noise() -> None:
    rng = np.random.default_rng(4)
    means = honest_means(rng, signal=0.0)
    means[1] *= 0.2
    assert screen(means)[0] == []  # no consensus direction: a small bucket is not evidence


def test_screen_needs_three_buckets_and_can_be_switched_off() -> None:
    means = np.array([[1.0, 0.0], [10.0, 0.0]])
    assert screen(means)[0] == []
    means3 = np.array([[1.0, 0.0], [1.1, 0.0], [10.0, 0.0]])
    assert screen(means3)[0] == [2]
    assert screen(means3, {"screen": False})[0] == []
    res = aggregate("mean", means3, np.ones(3), params={"screen": False})
    assert res.flagged == ()


def test_screen_flags_never_change_the_update() -> None:
    rng = np.random.default_rng(5)
    sums = honest_means(rng) * 3
    sums[0] *= 6
    for rule in RULES:
        f = 0 if rule in ("mean", "multi_krum") else 1
        on = aggregate(rule, sums, np.full(4, 3), f=f, clip_update=3.0)
        off = aggregate(rule, sums, np.full(4, 3), f=f, clip_update=3.0, params={"screen": False})
        np.testing.assert_array_equal(on.update, off.update)
        assert 0 in on.flagged


def test_screen_is_deterministic_and_row_order_only_permutes_flags() -> None:
    rng = np.random.default_rng(6)
    means = honest_means(rng)
    means[3] *= 6
    a, info_a = screen(means)
    b, info_b = screen(means.copy())
    assert a == b and info_a == info_b
    perm = [3, 0, 2, 1]
    c, _ = screen(means[perm])
    assert sorted(perm[i] for i in c) == a


def test_screen_parameters_are_checked_and_pass_through_the_ledger() -> None:
    for bad in (
        {"screen": 1},
        {"screen_norm_ratio": 1.0},
        {"screen_shrink_ratio": 1.5},
        {"screen_coherence": float("nan")},
        {"screen_norm_ratio": True},
    ):
        with pytest.raises(ValueError):
            check_rule("trimmed_mean", 4, 1, params=bad)
    rng = np.random.default_rng(8)
    sums = honest_means(rng) * 3
    sums[1] *= 3.0
    base = np.zeros(sums.shape[1])
    _, flagged_default = compute_model(base, "trimmed_mean", sums, [3, 3, 3, 3], {"f": 1, "clip_update": 3.0})
    _, flagged_loose = compute_model(
        base, "trimmed_mean", sums, [3, 3, 3, 3], {"f": 1, "clip_update": 3.0, "screen_norm_ratio": 100.0}
    )
    assert flagged_default == (1,) and flagged_loose == ()


def test_with_refused_gives_full_blame_to_the_refused_member() -> None:
    buckets = {"b0": ["a", "nan1", "c"], "b1": ["d", "e", "f"], "b2": ["nan2"]}
    groups, flags = with_refused(buckets, {"b1": "screen", "b2": "outlier"}, ["nan1", "nan2"])
    assert groups == {
        "b0": ["a", "c"],
        "b1": ["d", "e", "f"],
        "refused:nan1": ["nan1"],
        "refused:nan2": ["nan2"],
    }
    assert flags == {"b1": "screen", "refused:nan1": "norm", "refused:nan2": "norm"}
    rep = Reputation()
    rep.observe(1, groups, flags)
    # a group of one flagged norm: only a false flag (0.5 %) could explain it, so the refusal test's full
    # ln(0.95/0.005); the rest of the pool is judged on its own flags (b1 flagged, b0 not)
    assert rep.refusal_evidence("nan1") == pytest.approx(math.log(0.95 / 0.005))
    assert rep.suspicion("a") == 0.0 and rep.evidence("d") > 0
    caught_at = None
    for rnd in range(2, 12):
        g, fl = with_refused({"x": ["a", "nan1", "c"]}, {}, ["nan1"])
        if rep.observe(rnd, g, fl):
            caught_at = rnd
            break
    # the refusal test (hfl.robust.reputation): two refusals in a row cross its bound of 10.08
    assert caught_at == 2 and rep.quarantined == {"nan1"}
    assert rep.suspicion("a") == rep.suspicion("c") == 0.0  # its bucket-mates take none of the blame


def test_with_refused_refuses_strangers() -> None:
    with pytest.raises(ReputationError):
        with_refused({"b0": ["a"]}, {}, ["z"])
    with pytest.raises(ReputationError):
        with_refused({"b0": ["a"]}, {}, "a")  # type: ignore[arg-type]


def test_screen_kind_counts_like_norm_and_outlier_a_quarter() -> None:
    """A screen flag is calibrated to almost never flag an honest bucket, so it counts like a norm flag;
    a bucket multi-Krum or centered clipping left out counts ``outlier_weight`` of it."""
    rep = Reputation(outlier_weight=0.25)
    buckets = {"s": ["a", "a2", "a3"], "o": ["b", "b2", "b3"], "n": ["c", "c2", "c3"], "k": ["d", "e", "f"]}
    rep.observe(1, buckets, {"s": "screen", "o": "outlier", "n": "norm"})
    full = rep.test.steps(12, [3, 3, 3])[0]
    assert full == pytest.approx(math.log(0.95 / (7 / 10 + 0.005)))  # 3 flags, at most 2 offenders
    assert (rep.suspicion("a"), rep.suspicion("b"), rep.suspicion("c")) == pytest.approx(
        (full, 0.25 * full, full)
    )
    with pytest.raises(ReputationError):
        Reputation(outlier_weight=2.0)
