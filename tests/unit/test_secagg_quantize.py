"""Fixed-point quantisation: scale choice, no wrap-around, exact dequantisation, unbiased rounding."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.secagg.quantize import (
    QuantConfig,
    QuantizationError,
    check_sum,
    dequantize,
    dequantize_sum,
    quantize,
)


@pytest.mark.parametrize(
    ("clip", "n", "bits"), [(1.0, 8, 32), (0.37, 1000, 32), (5.0, 3, 16), (1e-3, 50, 32), (1.0, 3, 8)]
)
def test_scale_is_the_largest_safe_power_of_two(clip: float, n: int, bits: int) -> None:
    cfg = QuantConfig(clip, n, bits)
    assert math.log2(cfg.scale).is_integer()
    assert cfg.offset == math.ceil(clip * cfg.scale)
    assert 2 * cfg.offset * n <= 2**bits - 1
    assert 2 * math.ceil(clip * cfg.scale * 2) * n > 2**bits - 1  # doubling the scale would overflow


@pytest.mark.parametrize("n", [1, 3, 8, 100])
def test_no_wrap_at_max_members_with_all_values_at_the_clip(n: int) -> None:
    cfg = QuantConfig(clip=2.5, max_members=n)
    rng = np.random.default_rng(0)
    for sign in (+1.0, -1.0):
        qs = [quantize(np.full(5, sign * cfg.clip), cfg, rng) for _ in range(n)]
        exact = sum(q.astype(np.int64) for q in qs)
        assert int(np.max(exact)) < 2**32  # the true integer sum fits, so mod 2**32 loses nothing
        modular = np.zeros(5, dtype=np.uint32)
        for q in qs:
            modular += q
        assert np.array_equal(dequantize_sum(modular, n, cfg), np.full(5, sign * n * cfg.clip))
    mixed = [quantize(np.array([cfg.clip, -cfg.clip]), cfg, rng) for _ in range(n)]
    mixed_sum = np.asarray(np.sum(mixed, axis=0, dtype=np.uint32))
    assert np.array_equal(dequantize_sum(mixed_sum, n, cfg), [n * 2.5, -n * 2.5])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 20), seed=st.integers(0, 2**32), clip=st.floats(1e-3, 1e3))
def test_dequantised_modular_sum_equals_sum_of_dequantised_exactly(n: int, seed: int, clip: float) -> None:
    cfg = QuantConfig(clip=clip, max_members=20)
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-clip, clip, 64) for _ in range(n)]
    qs = [quantize(x, cfg, rng) for x in xs]
    modular = np.zeros(64, dtype=np.uint32)
    for q in qs:
        np.add(modular, q, out=modular)
    individual = np.zeros(64)
    for q in qs:
        individual += dequantize(q, cfg)
    assert np.array_equal(dequantize_sum(modular, n, cfg), individual)
    # and every dequantised value is within one step of the input
    for x, q in zip(xs, qs, strict=True):
        assert np.max(np.abs(dequantize(q, cfg) - x)) <= cfg.resolution


def test_stochastic_rounding_is_unbiased() -> None:
    cfg = QuantConfig(clip=1.0, max_members=3, bits=8)  # coarse grid so rounding matters
    assert cfg.scale == 32.0
    x = np.array([0.3, -0.71, 0.013, 0.99, 0.0])
    rng = np.random.default_rng(12345)
    n = 200_000
    q = quantize(np.tile(x, n), cfg, rng)
    assert q.dtype == np.uint32
    mean = dequantize(q, cfg).reshape(n, x.size).mean(axis=0)
    # per-coordinate rounding variance <= 1/(4 scale^2); allow 6 standard errors
    tol = 6 * 0.5 / cfg.scale / math.sqrt(n)
    assert np.all(np.abs(mean - x) <= tol)
    # round-to-nearest would be off by far more than tol on 0.3 (0.3*32 = 9.6 -> 10)
    assert abs(10 / 32 - 0.3) > 10 * tol


def test_clip_tolerance_and_refusals() -> None:
    cfg = QuantConfig(clip=1.0, max_members=4)
    rng = np.random.default_rng(1)
    assert dequantize(quantize(np.array([1.0 + 1e-13]), cfg, rng), cfg)[0] == 1.0
    with pytest.raises(QuantizationError, match="clipping bound"):
        quantize(np.array([1.01]), cfg, rng)
    with pytest.raises(QuantizationError, match="NaN"):
        quantize(np.array([np.nan]), cfg, rng)
    with pytest.raises(QuantizationError, match="NaN"):
        quantize(np.array([np.inf]), cfg, rng)
    with pytest.raises(QuantizationError, match="1-D"):
        quantize(np.zeros((2, 2)), cfg, rng)
    with pytest.raises(QuantizationError, match="out of range"):
        dequantize_sum(np.array([2**32 - 1], dtype=np.uint32), 1, cfg)
    with pytest.raises(QuantizationError, match="count"):
        dequantize_sum(np.zeros(3, dtype=np.uint32), 5, cfg)
    with pytest.raises(QuantizationError, match="uint32"):
        dequantize_sum(np.zeros(3, dtype=np.int64), 1, cfg)
    with pytest.raises(QuantizationError, match="overflow"):
        QuantConfig(clip=1.0, max_members=2, bits=2)
    with pytest.raises(QuantizationError, match="clip"):
        QuantConfig(clip=0.0, max_members=2)
    with pytest.raises(QuantizationError, match="clip"):
        QuantConfig(clip=float("inf"), max_members=2)
    with pytest.raises(QuantizationError, match="bits"):
        QuantConfig(clip=1.0, max_members=2, bits=33)
    with pytest.raises(QuantizationError, match="max_members"):
        QuantConfig(clip=1.0, max_members=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    clip=st.floats(1e-6, 1e6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_sum_is_dequantised_bit_for_bit_as_integer_arithmetic_does(
    n: int, clip: float, seed: int
) -> None:
    """dequantize_sum works in one float64 array (no int64 copies): its values are exactly what integer
    subtraction then one division give, for every value a sum of n members can take, both ends included."""
    cfg = QuantConfig(clip=clip, max_members=60)
    high = 2 * cfg.offset * n
    rng = np.random.default_rng(seed)
    total = np.concatenate(
        [np.array([0, high], dtype=np.uint32), rng.integers(0, high, 200, endpoint=True).astype(np.uint32)]
    )
    reference = (total.astype(np.int64) - n * cfg.offset).astype(np.float64) / cfg.scale
    got = dequantize_sum(total, n, cfg)
    assert got.dtype == np.float64 and np.array_equal(got, reference)
    assert np.array_equal(check_sum(total, n, cfg), total)
    if high < 2**32 - 1:  # one more than n members can add up to: refused
        with pytest.raises(QuantizationError, match="out of range"):
            check_sum(np.array([high + 1], dtype=np.uint32), n, cfg)


quantize_module = importlib.import_module("hfl.secagg.quantize")  # (hfl.secagg.quantize is the function)


def _quantize_at_once(x: np.ndarray, cfg: QuantConfig, rng: np.random.Generator) -> np.ndarray:
    """The quantiser written over the whole vector at once (as before it worked in chunks)."""
    v = np.clip(x * cfg.scale, -cfg.offset, cfg.offset)
    low = np.floor(v)
    low += rng.random(v.shape) < (v - low)
    return (low + cfg.offset).astype(np.uint32)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 60), chunk=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_quantising_in_chunks_gives_the_same_integers_as_all_at_once(
    size: int, chunk: int, seed: int
) -> None:
    """quantize works in chunks (small temporaries); the generator's draws come in the same order, so
    each value is rounded exactly as over the whole vector at once, wherever the chunks fall."""
    cfg = QuantConfig(clip=1.5, max_members=8)
    x = np.random.default_rng(seed).uniform(-1.5, 1.5, size)
    x[: min(size, 2)] = [1.5, -1.5][: min(size, 2)]  # both ends of the range
    expected = _quantize_at_once(x, cfg, np.random.default_rng(seed + 1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantize_module, "QUANTIZE_CHUNK", chunk)
        got = quantize(x, cfg, np.random.default_rng(seed + 1))
    assert got.dtype == np.uint32 and np.array_equal(got, expected)
