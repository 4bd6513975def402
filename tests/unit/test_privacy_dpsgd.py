"""DPConfig validation and the DPSGD step (Poisson sampling, clipping, noise, scaling)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from scipy import stats

from hfl.privacy.dpsgd import DPSGD, DPConfig

BASE: dict[str, Any] = {
    "mechanism": "gaussian",
    "clip": 1.0,
    "noise_multiplier": 1.1,
    "sampling_rate": 0.1,
    "accountant": "rdp",
    "delta": 1e-5,
    "epsilon_budget": 2.0,
}


def cfg(**kw: Any) -> DPConfig:
    return DPConfig(**{**BASE, **kw})


def test_valid_config_is_frozen_and_normalised() -> None:
    c = cfg(clip=2, epsilon_budget=None)
    assert c.clip == 2.0 and isinstance(c.clip, float)
    assert c.epsilon_budget is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.clip = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"epsilon_budget": 0.0}, "budget"),
        ({"epsilon_budget": -1.0}, "budget"),
        ({"delta": 0.0}, "Delta"),
        ({"delta": 1.0}, "Delta"),
        ({"delta": -1e-5}, "Delta"),
        ({"sampling_rate": 0.0}, "Sampling rate"),
        ({"sampling_rate": 1.5}, "Sampling rate"),
        ({"clip": 0.0}, "Clipping"),
        ({"clip": -1.0}, "Clipping"),
        ({"clip": float("nan")}, "Clipping"),
        ({"noise_multiplier": 0.0}, "Noise multiplier"),
        ({"noise_multiplier": float("inf")}, "Noise multiplier"),
        ({"mechanism": "exponential"}, "mechanism"),
        ({"accountant": "moments"}, "accountant"),
        ({"mechanism": "laplace", "accountant": "rdp", "sampling_rate": 0.1}, "pld"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


def test_config_rejects_non_numbers() -> None:
    with pytest.raises(TypeError):
        cfg(clip="1.0")
    with pytest.raises(TypeError):
        cfg(delta=True)


def test_laplace_with_rdp_is_allowed_without_subsampling() -> None:
    assert cfg(mechanism="laplace", accountant="rdp", sampling_rate=1.0).mechanism == "laplace"


def test_batch_indices_are_poisson_sampled() -> None:
    n, q = 100_000, 0.1
    dp = DPSGD(cfg(sampling_rate=q))
    idx = dp.batch_indices(n, np.random.default_rng(3))
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n
    sd = np.sqrt(n * q * (1 - q))
    assert abs(idx.size - n * q) < 5 * sd
    # Batch sizes vary between steps (they are not fixed at q·n).
    sizes = {dp.batch_indices(1000, np.random.default_rng(s)).size for s in range(20)}
    assert len(sizes) > 3


def test_each_record_is_included_independently_with_probability_q() -> None:
    n, q, reps = 50, 0.3, 4000
    dp = DPSGD(cfg(sampling_rate=q))
    rng = np.random.default_rng(11)
    counts = np.zeros(n)
    for _ in range(reps):
        counts[dp.batch_indices(n, rng)] += 1
    sd = np.sqrt(reps * q * (1 - q))
    assert np.all(np.abs(counts - reps * q) < 5 * sd)


def test_full_sampling_returns_every_index() -> None:
    idx = DPSGD(cfg(sampling_rate=1.0)).batch_indices(7, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, np.arange(7))


@pytest.mark.parametrize(
    ("mechanism", "accountant", "order"), [("gaussian", "rdp", 2), ("laplace", "pld", 1)]
)
def test_noisy_mean_gradient_exact_computation(mechanism: str, accountant: str, order: int) -> None:
    c = cfg(mechanism=mechanism, accountant=accountant, clip=1.5, noise_multiplier=0.8, sampling_rate=0.25)
    grads = np.array([[3.0, 4.0, 0.0], [0.1, -0.2, 0.3], [-6.0, 0.0, 8.0]])
    n = 40
    out = DPSGD(c).noisy_mean_gradient(grads, n, np.random.default_rng(5))

    norms = np.linalg.norm(grads, ord=order, axis=1)
    clipped = grads * np.minimum(1.0, 1.5 / norms)[:, None]
    ref = np.random.default_rng(5)
    if mechanism == "gaussian":
        noise = ref.normal(0.0, 0.8 * 1.5, size=3)
    else:
        noise = ref.laplace(0.0, 0.8 * 1.5, size=3)
    np.testing.assert_allclose(out, (clipped.sum(axis=0) + noise) / (0.25 * n), rtol=1e-12)


def test_laplace_path_uses_l1_clipping() -> None:
    # With identical noise draws, the difference between two gradients isolates the clipping.
    c = cfg(mechanism="laplace", accountant="pld", clip=1.0, sampling_rate=1.0)
    dp = DPSGD(c)
    a = dp.noisy_mean_gradient(np.array([[3.0, 4.0]]), 1, np.random.default_rng(1))
    b = dp.noisy_mean_gradient(np.zeros((1, 2)), 1, np.random.default_rng(1))
    np.testing.assert_allclose(a - b, [3 / 7, 4 / 7], rtol=1e-12)


@pytest.mark.parametrize(("mechanism", "accountant"), [("gaussian", "rdp"), ("laplace", "pld")])
def test_empty_batch_gives_noise_only_with_claimed_scale(mechanism: str, accountant: str) -> None:
    q, n, clip, mult, p = 0.05, 200, 0.5, 1.3, 100_000
    dp = DPSGD(
        cfg(mechanism=mechanism, accountant=accountant, clip=clip, noise_multiplier=mult, sampling_rate=q)
    )
    out = dp.noisy_mean_gradient(np.zeros((0, p)), n, np.random.default_rng(2024))
    assert out.shape == (p,)
    noise = out * (q * n)
    dist = stats.norm(scale=mult * clip) if mechanism == "gaussian" else stats.laplace(scale=mult * clip)
    assert stats.kstest(noise, dist.cdf).pvalue > 1e-4


def test_noisy_mean_gradient_rejects_bad_input() -> None:
    dp = DPSGD(cfg())
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2-D"):
        dp.noisy_mean_gradient(np.ones(3), 10, rng)
    with pytest.raises(ValueError, match="only has"):
        dp.noisy_mean_gradient(np.ones((5, 3)), 4, rng)
    with pytest.raises(ValueError, match="at least 1"):
        dp.noisy_mean_gradient(np.ones((0, 3)), 0, rng)
    with pytest.raises(ValueError, match="NaN"):
        dp.noisy_mean_gradient(np.array([[np.nan, 1.0]]), 4, rng)
    with pytest.raises(TypeError, match="Generator"):
        dp.noisy_mean_gradient(np.ones((1, 3)), 4, np.random)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        dp.batch_indices(4, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dp.batch_indices(4.0, rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DPConfig"):
        DPSGD(BASE)  # type: ignore[arg-type]
