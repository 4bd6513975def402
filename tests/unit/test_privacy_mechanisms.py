"""Noise mechanisms and per-example clipping."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from hfl.privacy.mechanisms import (
    clip_rows,
    gaussian_noise,
    laplace_noise,
    laplace_release,
    secure_generator,
)

N = 200_000
P_MIN = 1e-4  # KS p-value threshold; the seed is fixed so the outcome is deterministic.


def _variance_band(sample: np.ndarray, true_var: float, kurtosis_excess: float) -> tuple[float, float]:
    """5-sigma band for the sample variance of n iid draws (Var(s²) ≈ σ⁴(2/(n-1) + κ/n))."""
    n = sample.size
    sd = true_var * np.sqrt(2.0 / (n - 1) + kurtosis_excess / n)
    return true_var - 5 * sd, true_var + 5 * sd


def test_secure_generator_is_a_fresh_generator_each_time() -> None:
    a, b = secure_generator(), secure_generator()
    assert isinstance(a, np.random.Generator)
    assert not np.array_equal(a.integers(0, 2**63, size=4), b.integers(0, 2**63, size=4))


def test_gaussian_noise_has_claimed_distribution() -> None:
    std = 2.5
    x = gaussian_noise(N, std, np.random.default_rng(20240501))
    assert x.shape == (N,)
    assert stats.kstest(x, stats.norm(scale=std).cdf).pvalue > P_MIN
    lo, hi = _variance_band(x, std**2, kurtosis_excess=0.0)
    assert lo < x.var(ddof=1) < hi
    # The test is sharp enough to notice a 3% scale error.
    assert stats.kstest(x, stats.norm(scale=std * 1.03).cdf).pvalue < P_MIN


def test_laplace_noise_has_claimed_distribution() -> None:
    scale = 0.7
    x = laplace_noise((400, 500), scale, np.random.default_rng(7))
    assert x.shape == (400, 500)
    flat = x.ravel()
    assert stats.kstest(flat, stats.laplace(scale=scale).cdf).pvalue > P_MIN
    lo, hi = _variance_band(flat, 2 * scale**2, kurtosis_excess=3.0)
    assert lo < flat.var(ddof=1) < hi
    assert stats.kstest(flat, stats.laplace(scale=scale * 1.03).cdf).pvalue < P_MIN


def test_laplace_release_noise_scale_is_sensitivity_over_epsilon() -> None:
    rng = np.random.default_rng(99)
    value, sens, eps = 1234.0, 2.0, 0.5
    noise = np.array([laplace_release(value, sens, eps, rng) - value for _ in range(20_000)])
    assert stats.kstest(noise, stats.laplace(scale=sens / eps).cdf).pvalue > P_MIN
    assert stats.kstest(noise, stats.laplace(scale=sens / eps * 1.1).cdf).pvalue < P_MIN


def test_laplace_release_returns_float() -> None:
    out = laplace_release(10, 1.0, 1.0, np.random.default_rng(0))
    assert isinstance(out, float)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda r: gaussian_noise(3, 0.0, r), ValueError),
        (lambda r: gaussian_noise(3, -1.0, r), ValueError),
        (lambda r: gaussian_noise(3, float("nan"), r), ValueError),
        (lambda r: gaussian_noise((2, -1), 1.0, r), ValueError),
        (lambda r: laplace_noise(3, 0.0, r), ValueError),
        (lambda r: laplace_noise(3, float("inf"), r), ValueError),
        (lambda r: laplace_release(1.0, 0.0, 1.0, r), ValueError),
        (lambda r: laplace_release(1.0, 1.0, 0.0, r), ValueError),
        (lambda r: laplace_release(float("nan"), 1.0, 1.0, r), ValueError),
        (lambda r: laplace_release("5", 1.0, 1.0, r), TypeError),  # type: ignore[arg-type]
    ],
)
def test_mechanisms_reject_bad_parameters(call: Callable[[np.random.Generator], object], exc: type) -> None:
    with pytest.raises(exc):
        call(np.random.default_rng(0))


@pytest.mark.parametrize("bad_rng", [None, np.random, 42])
def test_noise_refuses_anything_but_an_explicit_generator(bad_rng: object) -> None:
    with pytest.raises(TypeError, match="Generator"):
        gaussian_noise(3, 1.0, bad_rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        laplace_noise(3, 1.0, bad_rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        laplace_release(1.0, 1.0, 1.0, bad_rng)  # type: ignore[arg-type]


def test_clip_rows_known_answers() -> None:
    g = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(clip_rows(g, 1.0, "l2"), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(clip_rows(g, 1.0, "l1"), [[3 / 7, 4 / 7], [0.3, 0.4], [0.0, 0.0]])
    assert clip_rows(np.zeros((0, 5)), 1.0).shape == (0, 5)
    # Input is not modified.
    assert g[0, 0] == 3.0


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    grads=arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 12)), elements=finite),
    clip=st.floats(min_value=1e-3, max_value=1e3),
    norm=st.sampled_from(["l2", "l1"]),
)
def test_clip_rows_bound_holds_per_example(grads: np.ndarray, clip: float, norm: str) -> None:
    out = clip_rows(grads, clip, norm)  # type: ignore[arg-type]
    order = 2 if norm == "l2" else 1
    in_norms = np.linalg.norm(grads, ord=order, axis=1)
    out_norms = np.linalg.norm(out, ord=order, axis=1)
    assert out.shape == grads.shape
    assert np.all(out_norms <= clip * (1 + 1e-12))
    # Rows already inside the bound are untouched; larger rows are scaled (same direction) onto the bound.
    inside = in_norms <= clip
    np.testing.assert_array_equal(out[inside], grads[inside])
    big = ~inside
    np.testing.assert_allclose(out_norms[big], clip, rtol=1e-9)
    np.testing.assert_allclose(out[big] * in_norms[big, None] / clip, grads[big], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("grads", "clip", "norm", "exc"),
    [
        (np.ones(3), 1.0, "l2", ValueError),
        (np.ones((2, 2, 2)), 1.0, "l2", ValueError),
        (np.array([[1.0, np.nan]]), 1.0, "l2", ValueError),
        (np.array([[1.0, np.inf]]), 1.0, "l1", ValueError),
        (np.ones((2, 2)), 0.0, "l2", ValueError),
        (np.ones((2, 2)), 1.0, "linf", ValueError),
    ],
)
def test_clip_rows_rejects_bad_input(grads: np.ndarray, clip: float, norm: str, exc: type) -> None:
    with pytest.raises(exc):
        clip_rows(grads, clip, norm)  # type: ignore[arg-type]
