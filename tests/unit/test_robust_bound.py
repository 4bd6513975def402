"""The adaptive norm bound (hfl/robust/bound.py): known answers, clamping, monotonicity, that it only reads
committed history, and that it follows honest updates down and back up without squeezing them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.learning.train import clip_update
from hfl.robust.bound import (
    BOUND_MULTIPLIER,
    FLOOR_FRACTION,
    RECORD_KEY,
    WINDOW_ROUNDS,
    bound_for,
    bound_problem,
    median,
    member_norm_estimates,
    next_norm_bound,
    recorded_history,
    round_record,
)

C = 3.0
norms = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
histories = st.lists(norms, max_size=12)


def test_constants_are_the_documented_ones() -> None:
    assert (BOUND_MULTIPLIER, WINDOW_ROUNDS, FLOOR_FRACTION) == (2.0, 5, 0.05)


def test_no_history_gives_the_configured_bound() -> None:
    assert next_norm_bound([], ceiling=C) == C
    assert bound_for({}, C) == C  # genesis, or a block of a federation with a fixed bound
    assert bound_for({"buckets": ["b0"]}, C) == C


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([0.2], 0.4),
        ([0.1, 0.2, 0.3], 0.4),
        ([0.1, 0.2, 0.3, 0.5], 0.5),  # even count: the mean of the two middle values, 0.25
        ([0.3, 0.1, 0.2], 0.4),  # order within the window does not matter
        ([9.0, 9.0, 9.0, 0.2, 0.2, 0.3, 0.2, 0.2], 0.4),  # only the last 5 rounds count
        ([5.0, 5.0, 5.0], C),  # clamped to the ceiling
        ([0.01, 0.02], 0.05 * C),  # clamped to the floor
        ([0.0], 0.05 * C),
    ],
)
def test_known_answers(history: list[float], expected: float) -> None:
    assert next_norm_bound(history, ceiling=C) == pytest.approx(expected, rel=1e-12)


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        median([])


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [-0.1]])
def test_impossible_history_is_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        next_norm_bound(bad, ceiling=C)


@pytest.mark.parametrize("ceiling", [0.0, -1.0, float("nan"), float("inf")])
def test_impossible_ceiling_is_refused(ceiling: float) -> None:
    with pytest.raises(ValueError, match="ceiling"):
        next_norm_bound([0.2], ceiling=ceiling)


@settings(max_examples=200, deadline=None)
@given(histories, st.floats(min_value=0.01, max_value=50.0))
def test_bound_is_always_between_floor_and_ceiling(history: list[float], ceiling: float) -> None:
    c = next_norm_bound(history, ceiling=ceiling)
    assert FLOOR_FRACTION * ceiling <= c <= ceiling


@settings(max_examples=200, deadline=None)
@given(histories, st.integers(min_value=0, max_value=11), norms)
def test_bound_is_monotone_in_the_history(history: list[float], i: int, more: float) -> None:
    """Longer honest updates in any recent round never make the bound tighter, shorter never looser."""
    if not history:
        return
    i %= len(history)
    raised = list(history)
    raised[i] += more
    assert next_norm_bound(raised, ceiling=C) >= next_norm_bound(history, ceiling=C)


@settings(max_examples=100, deadline=None)
@given(histories, st.lists(norms, max_size=6))
def test_only_the_last_rounds_count(history: list[float], older: list[float]) -> None:
    if len(history) < WINDOW_ROUNDS:
        return
    assert next_norm_bound(older + history, ceiling=C) == next_norm_bound(history, ceiling=C)


def test_member_norm_estimates() -> None:
    sums = np.array([[3.0, 4.0], [6.0, 8.0], [30.0, 40.0], [np.nan, 0.0]])
    est = member_norm_estimates(sums, [1, 4, 3, 3], flagged=[2])
    # ‖sum‖ / √count; bucket 2 is flagged, bucket 3 is not finite
    assert est == pytest.approx([5.0, 5.0])


def test_estimate_is_the_member_length_for_unrelated_updates_and_more_when_they_agree() -> None:
    rng = np.random.default_rng(0)
    d, n = 2000, 5
    unrelated = rng.standard_normal((n, d))
    unrelated /= np.linalg.norm(unrelated, axis=1, keepdims=True)  # n unit-length updates
    aligned = np.tile(unrelated[0], (n, 1))
    est = member_norm_estimates(np.stack([unrelated.sum(0), aligned.sum(0)]), [n, n])
    assert est[0] == pytest.approx(1.0, abs=0.1)
    assert est[1] == pytest.approx(math.sqrt(n))


def _honest_round(
    rng: np.random.Generator, length: float, bound: float, buckets: int, size: int
) -> np.ndarray:
    """Bucket sums of honest facilities whose updates point in unrelated directions (as once converged,
    or under differential privacy), each ``length`` long before it is clipped to ``bound``."""
    out = []
    for _ in range(buckets):
        u = rng.standard_normal((size, 500))
        u *= length / np.linalg.norm(u, axis=1, keepdims=True)
        out.append(sum(clip_update(row, bound) for row in u))
    return np.stack(out)


def _run(lengths: list[float], buckets: int = 4, size: int = 3) -> list[float]:
    """Bounds of successive rounds, each derived from the previous round's record only (as the leader
    and validators do), with honest updates of the given lengths."""
    rng = np.random.default_rng(1)
    extra: dict[str, object] = {}
    bounds = []
    for length in lengths:
        c = bound_for(extra, C)
        bounds.append(c)
        sums = _honest_round(rng, length, c, buckets, size)
        extra = {RECORD_KEY: round_record(extra, sums, [size] * buckets, (), ceiling=C)}
    return bounds


@pytest.mark.parametrize("size", [3, 5, 10])
def test_bound_settles_above_steady_honest_updates_whatever_the_bucket_size(size: int) -> None:
    """With the bucket mean's length as the statistic, 2 × median would fall below the honest length for
    buckets of 5 or more and then shrink round after round; ‖sum‖/√count does not."""
    bounds = _run([0.5] * 20, size=size)
    assert bounds[0] == C
    assert all(c >= 0.5 for c in bounds)
    assert bounds[-1] == pytest.approx(2 * 0.5, rel=0.1)  # follows the honest updates down


def test_bound_follows_updates_down_and_back_up() -> None:
    bounds = _run([1.0] * 3 + [0.1] * 10 + [1.0] * 15)
    assert bounds[12] < 0.3  # after the updates shrank, a bad member can add far less than C = 3
    assert bounds[-1] >= 1.0  # they grew again: the bound let them through again
    recovered = next(i for i in range(13, len(bounds)) if bounds[i] >= 1.0) - 13
    assert recovered <= 10, bounds


def test_round_record_keeps_the_last_rounds_and_skips_rounds_without_accepted_buckets() -> None:
    sums = np.array([[0.3, 0.4], [0.6, 0.8], [30.0, 40.0]])
    extra = {RECORD_KEY: {"ceiling": C, "medians": [1.0, 2.0, 3.0, 4.0, 5.0]}}
    record = round_record(extra, sums, [1, 1, 1], flagged=[2], ceiling=C)
    assert record == {"ceiling": C, "medians": [2.0, 3.0, 4.0, 5.0, pytest.approx(0.75)]}
    assert round_record(extra, sums, [1, 1, 1], flagged=[0, 1, 2], ceiling=C)["medians"] == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]


def test_bound_uses_only_committed_history() -> None:
    """Round r's bound is a function of block r−1's record, which equals the per-round medians of rounds
    before r: this round's sums, and anything not in a committed block, cannot change it."""
    rng = np.random.default_rng(3)
    per_round: list[float] = []
    extra: dict[str, object] = {}
    for _ in range(9):
        c = bound_for(extra, C)
        assert c == next_norm_bound(per_round, ceiling=C)
        sums = rng.normal(0, 0.1, size=(4, 50))
        record = round_record(extra, sums, [3] * 4, (), ceiling=C)
        assert bound_for(extra, C) == c  # computing this round's record does not move its bound
        per_round.append(median(member_norm_estimates(sums, [3] * 4)))
        extra = {RECORD_KEY: record}


@pytest.mark.parametrize(
    "record",
    [
        {"ceiling": C, "medians": "0.2"},
        {"ceiling": C, "medians": [0.2, float("nan")]},
        {"ceiling": C, "medians": [0.2, -1.0]},
        {"ceiling": C, "medians": [0.1] * (WINDOW_ROUNDS + 1)},
        {"ceiling": C, "medians": [True]},
        "0.2",
    ],
)
def test_malformed_record_is_refused(record: object) -> None:
    with pytest.raises(ValueError):
        recorded_history({RECORD_KEY: record})
    reason = bound_problem(
        {RECORD_KEY: record},
        {"clip_update": 0.4},
        {RECORD_KEY: {"ceiling": C, "medians": []}},
        adaptive=True,
        ceiling=C,
    )
    assert reason is not None and "cannot be read" in reason
