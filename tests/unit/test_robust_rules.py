"""Robust aggregation rules: known answers, norm bound, refusals, determinism, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hfl.robust.rules import (
    DEFAULT_RULE,
    RULES,
    AggregateResult,
    aggregate,
    check_inputs,
    check_rule,
    default_f,
    guarantee,
    max_faults,
    policy_violation,
)

NO_SCREEN = {"screen": False}  # these tests check the rules themselves; the screen has its own tests


def col(*values: float) -> np.ndarray:
    """Bucket sums with d = 1."""
    return np.array(values, dtype=np.float64)[:, None]


# --- mean --------------------------------------------------------------------------------------------


def test_mean_is_weighted_by_counts() -> None:
    sums = np.array([[3.0, 6.0], [1.0, -2.0]])
    res = aggregate("mean", sums, np.array([3, 1]))
    np.testing.assert_array_equal(res.update, [1.0, 1.0])
    assert res.flagged == ()


def test_default_rule_is_listed() -> None:
    assert DEFAULT_RULE in RULES
    assert set(RULES) == {"mean", "trimmed_mean", "median", "multi_krum", "centered_clipping"}


# --- trimmed mean ------------------------------------------------------------------------------------


def test_trimmed_mean_known_answer_with_ties() -> None:
    # column 0: 1 2 3 4 100 -> drop 1 and 100 -> (2+3+4)/3 = 3
    # column 1 (ties): 5 5 5 1 5 -> sorted 1 5 5 5 5 -> keep 5 5 5 -> 5
    means = np.array([[1, 5], [2, 5], [3, 5], [4, 1], [100, 5]], dtype=float)
    counts = np.array([1, 2, 3, 1, 4])
    res = aggregate("trimmed_mean", means * counts[:, None], counts, f=1, params=NO_SCREEN)
    np.testing.assert_array_equal(res.update, [3.0, 5.0])
    assert res.flagged == ()
    assert res.details["f_effective"] == 1


def test_trimmed_mean_f_at_bound_is_the_middle_value() -> None:
    res = aggregate("trimmed_mean", col(7.0, -3.0, 2.0), np.ones(3), f=1)
    np.testing.assert_array_equal(res.update, [2.0])


def test_trimmed_mean_f0_is_unweighted_mean_of_bucket_means() -> None:
    sums = col(2.0, 9.0)
    res = aggregate("trimmed_mean", sums, np.array([2, 3]), f=0)
    np.testing.assert_allclose(res.update, [(1.0 + 3.0) / 2])


def test_trimmed_mean_f2_drops_two_each_side() -> None:
    res = aggregate("trimmed_mean", col(-50, -40, 1, 2, 3, 60, 70), np.ones(7), f=2)
    np.testing.assert_array_equal(res.update, [(1 + 2 + 3) / 3])


# --- median ------------------------------------------------------------------------------------------


def test_median_odd_and_even() -> None:
    odd = aggregate("median", np.array([[1.0, 9.0], [3.0, 8.0], [2.0, -7.0]]), np.ones(3), f=1)
    np.testing.assert_array_equal(odd.update, [2.0, 8.0])
    even = aggregate("median", col(1.0, 10.0, 4.0, 6.0), np.ones(4), f=1)
    np.testing.assert_array_equal(even.update, [5.0])


def test_median_uses_bucket_means_and_ties() -> None:
    res = aggregate("median", col(4.0, 2.0, 2.0, 3.0, 3.0), np.array([2, 1, 1, 1, 1]), f=2)
    # means 2 2 2 3 3 -> median 2
    np.testing.assert_array_equal(res.update, [2.0])


def test_median_signed_zero_is_canonical() -> None:
    a = aggregate("median", col(-0.0, 0.0, -0.0, 0.0), np.ones(4), f=1).update
    b = aggregate("median", col(0.0, -0.0, 0.0, -0.0), np.ones(4), f=1).update
    assert a.tobytes() == b.tobytes() == np.zeros(1).tobytes()


# --- multi-Krum --------------------------------------------------------------------------------------


def test_multi_krum_known_scores_and_outlier_flag() -> None:
    # 1-D values 0 1 2 3 50, f = 1 -> n - f - 2 = 2 neighbours
    res = aggregate("multi_krum", col(0, 1, 2, 3, 50), np.ones(5), f=1, params=NO_SCREEN)
    assert res.details["neighbours"] == 2
    assert res.details["scores"] == [5.0, 2.0, 2.0, 5.0, 47.0**2 + 48.0**2]
    assert res.details["selected"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(res.update, [1.5])
    assert res.flagged == (4,)
    assert res.flag_kinds == {4: "outlier"}
    assert res.details["outlier_flagged"] == [4]
    assert res.details["norm_flagged"] == []


def test_multi_krum_ties_broken_by_index() -> None:
    one = aggregate("multi_krum", col(0, 1, 2, 3, 50), np.ones(5), f=1, params={"m": 1})
    assert one.details["selected"] == [1]  # buckets 1 and 2 tie at score 2
    np.testing.assert_array_equal(one.update, [1.0])
    three = aggregate("multi_krum", col(0, 1, 2, 3, 50), np.ones(5), f=1, params={"m": 3})
    assert three.details["selected"] == [0, 1, 2]  # buckets 0 and 3 tie at score 5
    assert three.flagged == (3, 4)


def test_multi_krum_average_weighted_by_counts() -> None:
    counts = np.array([2, 1, 1, 1, 1])
    sums = col(0, 1, 2, 3, 50) * counts[:, None]
    res = aggregate("multi_krum", sums, counts, f=1, params={"m": 3})
    assert res.details["selected"] == [0, 1, 2]
    np.testing.assert_array_equal(res.update, [(0 + 1 + 2) / 4])


def test_multi_krum_f_at_bound() -> None:
    # B = 5, f = 1 is the bound (2f + 3); B = 7, f = 2 too
    res = aggregate("multi_krum", col(0, 1, 2, 100, -100, 3, 1.5), np.ones(7), f=2)
    assert res.details["neighbours"] == 3
    assert set(res.flagged) == {3, 4}
    np.testing.assert_allclose(res.update, [(0 + 1 + 2 + 3 + 1.5) / 5])


# --- centered clipping -------------------------------------------------------------------------------


def test_centered_clipping_known_iterates() -> None:
    # start at median 0; tau 1: v = 0.2, 0.24, 0.248 (fixed point 0.25)
    sums = col(0, 0, 0, 0, 10)
    res = aggregate("centered_clipping", sums, np.ones(5), f=2, params={"tau": 1.0, "iters": 3})
    np.testing.assert_allclose(res.update, [0.248], rtol=1e-12)
    assert res.flagged == (4,)
    assert res.flag_kinds == {4: "outlier"}
    many = aggregate("centered_clipping", sums, np.ones(5), f=2, params={"tau": 1.0, "iters": 60})
    np.testing.assert_allclose(many.update, [0.25], rtol=1e-9)


def test_centered_clipping_large_tau_is_the_mean() -> None:
    sums = np.array([[1.0, 2.0], [3.0, -1.0], [8.0, 0.5]])
    res = aggregate(
        "centered_clipping", sums, np.ones(3), f=1, params={"tau": 1e9, "iters": 1, "screen": False}
    )
    np.testing.assert_allclose(res.update, sums.mean(axis=0))
    assert res.flagged == ()


def test_centered_clipping_default_tau_is_clip_update() -> None:
    res = aggregate("centered_clipping", col(0.1, 0.2, 0.3), np.ones(3), f=1, clip_update=0.5)
    assert res.details["tau"] == 0.5
    assert res.details["iters"] == 3
    np.testing.assert_allclose(res.update, [0.2])


def test_centered_clipping_default_tau_without_clip_is_data_driven() -> None:
    res = aggregate("centered_clipping", col(1.0, 2.0, 4.0), np.ones(3), f=1)
    assert res.details["tau"] == 1.0  # median distance of 1, 0, 2 to the median 2


# --- norm bound --------------------------------------------------------------------------------------


def test_norm_bound_flags_and_excludes() -> None:
    sums = np.array(
        [
            [2.0, 0.0],  # count 2, norm 2 = 2·C: allowed
            [3.0, 4.0],  # count 3, norm 5 > 3: flagged
            [0.6, 0.8],  # count 1, norm 1: allowed
            [1.0, 1.0],  # count 2, norm 1.41: allowed
        ]
    )
    counts = np.array([2, 3, 1, 2])
    res = aggregate("mean", sums, counts, clip_update=1.0)
    assert res.flagged == (1,)
    assert res.flag_kinds == {1: "norm"}
    assert res.details["norm_flagged"] == [1]
    np.testing.assert_allclose(res.update, (sums[0] + sums[2] + sums[3]) / 5)


def test_non_finite_rows_are_flagged_even_without_clip() -> None:
    sums = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, np.inf], [1.0, 1.0], [2.0, 2.0]])
    res = aggregate("median", sums, np.ones(5), f=1)
    assert res.flagged == (1, 2)
    assert res.details["norm_flagged"] == [1, 2]
    np.testing.assert_array_equal(res.update, [1.0, 1.0])
    assert np.all(np.isfinite(res.update))


def test_overflowing_norm_is_flagged() -> None:
    sums = np.array([[1e200, 1e200], [0.1, 0.1], [0.2, 0.1]])
    res = aggregate("median", sums, np.ones(3), f=1, clip_update=1.0)
    assert res.flagged == (0,)


def test_all_flagged_gives_zero_update() -> None:
    res = aggregate("trimmed_mean", col(5.0, -5.0, 9.0), np.ones(3), f=1, clip_update=1.0)
    assert res.flagged == (0, 1, 2)
    np.testing.assert_array_equal(res.update, [0.0])


def test_norm_flags_then_rule_uses_what_is_left() -> None:
    # B = 5, f = 2: one bucket breaks the bound; 4 remain, trimmed mean can trim 1 per side
    sums = col(0.1, 0.2, 0.3, 0.9, 50.0)
    res = aggregate("trimmed_mean", sums, np.ones(5), f=2, clip_update=1.0, params=NO_SCREEN)
    assert res.flagged == (4,)
    assert res.details["f_effective"] == 1
    np.testing.assert_allclose(res.update, [0.25])


def test_norm_and_outlier_flags_are_distinguished() -> None:
    sums = col(0.0, 0.1, 0.2, 0.3, 0.95, 40.0, 0.15)
    res = aggregate("multi_krum", sums, np.ones(7), f=2, clip_update=1.0, params=NO_SCREEN)
    kinds = res.flag_kinds
    assert kinds[5] == "norm"
    assert kinds[4] == "outlier"
    assert set(res.flagged) == set(kinds)


# --- refusals and guarantees -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "n_buckets", "f"),
    [
        ("trimmed_mean", 2, 1),
        ("median", 4, 2),
        ("centered_clipping", 4, 2),
        ("multi_krum", 4, 1),
        ("multi_krum", 2, 0),
        ("median", 0, 0),
        ("median", 3, -1),
        ("median", 3, True),
        ("median", 3, 1.0),
        ("geometric_median", 9, 1),
    ],
)
def test_check_rule_refuses(rule: str, n_buckets: int, f: int) -> None:
    with pytest.raises(ValueError):
        check_rule(rule, n_buckets, f)


@pytest.mark.parametrize(
    ("rule", "n_buckets", "f"),
    [
        ("trimmed_mean", 3, 1),
        ("median", 5, 2),
        ("centered_clipping", 1, 0),
        ("multi_krum", 5, 1),
        ("mean", 3, 3),
    ],
)
def test_check_rule_accepts_bounds(rule: str, n_buckets: int, f: int) -> None:
    check_rule(rule, n_buckets, f)
    assert max_faults(rule, n_buckets) >= f


def test_check_rule_message_is_plain() -> None:
    with pytest.raises(ValueError, match=r"needs B ≥ 2f\+3.*at least 5 buckets.*there are 4"):
        check_rule("multi_krum", 4, 1)


@pytest.mark.parametrize(
    ("rule", "params"),
    [
        ("trimmed_mean", {"m": 2}),
        ("multi_krum", {"m": 0}),
        ("multi_krum", {"m": 5}),  # B - f = 4
        ("multi_krum", {"tau": 1.0}),
        ("centered_clipping", {"tau": 0.0}),
        ("centered_clipping", {"tau": float("nan")}),
        ("centered_clipping", {"iters": 0}),
        ("centered_clipping", {"iters": 2.5}),
    ],
)
def test_bad_params_refused(rule: str, params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        aggregate(rule, col(0, 1, 2, 3, 4), np.ones(5), f=1, params=params)


def test_aggregate_refuses_too_few_buckets_and_unknown_rule() -> None:
    with pytest.raises(ValueError, match="needs B"):
        aggregate("median", col(1, 2), np.ones(2), f=1)
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        aggregate("krum", col(1, 2), np.ones(2))
    with pytest.raises(ValueError, match="clip_update"):
        aggregate("mean", col(1, 2), np.ones(2), clip_update=0.0)


@pytest.mark.parametrize(
    ("sums", "counts"),
    [
        (np.zeros(3), np.ones(3)),
        (np.zeros((3, 2)), np.ones(2)),
        (np.zeros((0, 2)), np.ones(0)),
        (np.zeros((2, 0)), np.ones(2)),
        (np.zeros((2, 2)), np.array([1.0, 0.0])),
        (np.zeros((2, 2)), np.array([1.0, 1.5])),
        (np.zeros((2, 2)), np.array([1.0, np.nan])),
    ],
)
def test_check_inputs_refuses(sums: np.ndarray, counts: np.ndarray) -> None:
    with pytest.raises(ValueError):
        check_inputs(sums, counts)


def test_guarantee_sentences() -> None:
    text = guarantee("trimmed_mean", 4, 1)
    assert text.startswith("tolerates 1 bad bucket of 4")
    assert "2f+1" in text
    assert "2f+3" in guarantee("multi_krum", 7, 2)
    assert "no bad bucket" in guarantee("mean", 4, 0)
    with pytest.raises(ValueError):
        guarantee("median", 2, 1)


# --- determinism -------------------------------------------------------------------------------------


def _params(rule: str) -> dict[str, float] | None:
    return {"iters": 4} if rule == "centered_clipping" else None


@pytest.mark.parametrize("rule", RULES)
def test_same_input_gives_identical_bytes(rule: str) -> None:
    rng = np.random.default_rng(7)
    sums = rng.normal(size=(9, 257))
    counts = rng.integers(1, 4, size=9)
    first = aggregate(rule, sums, counts, f=2, clip_update=30.0, params=_params(rule))
    again = aggregate(rule, sums.copy(), counts.copy(), f=2, clip_update=30.0, params=_params(rule))
    fortran = aggregate(rule, np.asfortranarray(sums), counts, f=2, clip_update=30.0, params=_params(rule))
    assert first.update.dtype == np.float64
    assert first.update.tobytes() == again.update.tobytes() == fortran.update.tobytes()
    assert first.flagged == again.flagged == fortran.flagged
    assert first.details == again.details


def test_result_type() -> None:
    res = aggregate(DEFAULT_RULE, col(1, 2, 3), np.ones(3), f=1)
    assert isinstance(res, AggregateResult)
    assert res.update.shape == (1,)


# --- properties --------------------------------------------------------------------------------------

_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def bucket_inputs(draw: st.DrawFn, min_buckets: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    b = draw(st.integers(min_value=min_buckets, max_value=9))
    d = draw(st.integers(min_value=1, max_value=4))
    sums = draw(hnp.arrays(np.float64, (b, d), elements=_finite))
    counts = draw(hnp.arrays(np.int64, (b,), elements=st.integers(min_value=1, max_value=5)))
    f = draw(st.integers(min_value=0, max_value=(b - 1) // 2))
    return sums, counts, f


@settings(max_examples=60, deadline=None)
@given(bucket_inputs())
def test_median_and_trimmed_mean_stay_within_coordinate_range(
    inp: tuple[np.ndarray, np.ndarray, int],
) -> None:
    sums, counts, f = inp
    means = sums / counts[:, None]
    lo, hi = means.min(axis=0), means.max(axis=0)
    for rule in ("median", "trimmed_mean"):
        upd = aggregate(rule, sums, counts, f=f).update
        assert np.all(upd >= lo - 1e-9 * np.abs(lo)) and np.all(upd <= hi + 1e-9 * np.abs(hi))


@settings(max_examples=60, deadline=None)
@given(bucket_inputs(), st.randoms(use_true_random=False))
def test_permutation_invariance(inp: tuple[np.ndarray, np.ndarray, int], rnd: object) -> None:
    sums, counts, f = inp
    b = sums.shape[0]
    perm = np.array(rnd.sample(range(b), b))  # type: ignore[attr-defined]
    clip = float(np.median(np.linalg.norm(sums, axis=1) / counts)) + 1.0
    for rule in ("median", "trimmed_mean", "mean"):
        a = aggregate(rule, sums, counts, f=f, clip_update=clip)
        p = aggregate(rule, sums[perm], counts[perm], f=f, clip_update=clip)
        assert {int(perm[i]) for i in p.flagged} == set(a.flagged)
        if rule == "mean":
            np.testing.assert_allclose(p.update, a.update, rtol=1e-9, atol=1e-9 * clip)
        else:  # sorting makes these exactly order-free
            assert p.update.tobytes() == a.update.tobytes()


@settings(max_examples=40, deadline=None)
@given(bucket_inputs(min_buckets=3), st.randoms(use_true_random=False))
def test_multi_krum_permutation_invariance_without_ties(
    inp: tuple[np.ndarray, np.ndarray, int], rnd: object
) -> None:
    sums, counts, _ = inp
    b = sums.shape[0]
    f = (b - 3) // 2
    a = aggregate("multi_krum", sums, counts, f=f)
    # no ties and no near-ties (a permutation changes the summation order, so the scores by an ulp)
    scores = np.sort(np.asarray(a.details["scores"]))
    assume(bool(np.all(np.diff(scores) > 1e-9 * max(1.0, float(scores[-1])))))
    perm = np.array(rnd.sample(range(b), b))  # type: ignore[attr-defined]
    p = aggregate("multi_krum", sums[perm], counts[perm], f=f)
    assert {int(perm[i]) for i in p.flagged} == set(a.flagged)
    np.testing.assert_allclose(p.update, a.update, rtol=1e-9, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(bucket_inputs(), st.floats(min_value=0.01, max_value=100))
def test_norm_bound_flags_exactly_the_oversized(inp: tuple[np.ndarray, np.ndarray, int], clip: float) -> None:
    sums, counts, f = inp
    res = aggregate("median", sums, counts, f=f, clip_update=clip, params=NO_SCREEN)
    norms = np.linalg.norm(sums, axis=1)
    for i in range(sums.shape[0]):
        ratio = norms[i] / (counts[i] * clip)
        if ratio > 1 + 1e-5:
            assert i in res.details["norm_flagged"]
        elif ratio < 1:
            assert i not in res.flagged


def test_default_f_is_the_most_each_rule_tolerates_and_zero_for_mean() -> None:
    assert [default_f(b) for b in (1, 2, 3, 4, 5, 7)] == [0, 0, 1, 1, 2, 3]
    assert default_f(7, "multi_krum") == 2 and default_f(4, "multi_krum") == 0
    assert default_f(12, "mean") == 0


OK_PARAMS = {"f": 1, "clip_update": 3.0}


@pytest.mark.parametrize(
    ("rule", "params", "kwargs", "expected"),
    [
        ("trimmed_mean", OK_PARAMS, {}, None),
        ("trimmed_mean", OK_PARAMS | {"screen": True}, {}, None),
        ("median", OK_PARAMS, {}, "uses 'trimmed_mean' (HFL_RULE)"),
        (
            "trimmed_mean",
            {"f": 0, "clip_update": 3.0},
            {},
            "f = 0 bad buckets but this federation uses f = 1",
        ),
        ("trimmed_mean", {"f": 0, "clip_update": 3.0}, {"expected_f": 0}, None),
        ("trimmed_mean", {"f": 1}, {}, "norm bound off"),
        ("trimmed_mean", {"f": 1, "clip_update": None}, {}, "norm bound off"),
        ("trimmed_mean", OK_PARAMS | {"screen": False}, {}, "outlier screen off"),
        ("trimmed_mean", {"f": 1, "clip_update": None, "screen": False}, {"defences": False}, None),
    ],
)
def test_policy_violation(rule: str, params: dict, kwargs: dict, expected: str | None) -> None:
    got = policy_violation(rule, params, 4, expected_rule="trimmed_mean", **kwargs)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got
