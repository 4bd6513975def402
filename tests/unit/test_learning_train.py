from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hfl.learning.data import Dataset
from hfl.learning.models import make_model
from hfl.learning.train import (
    DEFAULT_CLIP_UPDATE,
    DEFAULT_TRAIN,
    TrainConfig,
    TrainingError,
    clip_update,
    steps_for,
    train_local,
)


def _dataset(n: int = 60, d: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X @ np.arange(1, d + 1) + rng.normal(0, 0.5, n) > 0).astype(np.int64)
    return Dataset(X, y, tuple(f"f{i}" for i in range(d)))


class RecordingPrivatizer:
    """Full-batch, noise-free 'privatizer' that records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, np.ndarray]] = []

    def batch_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(n)

    def noisy_mean_gradient(
        self, per_example_grads: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        self.calls.append((n, per_example_grads.copy()))
        return per_example_grads.mean(axis=0)


def test_train_config_validation() -> None:
    assert TrainConfig(0.1, 1, 1).lr == 0.1
    bad: list[tuple[Any, Any, Any]] = [
        (0.0, 1, 8),
        (float("nan"), 1, 8),
        (0.1, 0, 8),
        (0.1, 1, 0),
        (0.1, 1.5, 8),
    ]
    for lr, epochs, batch in bad:
        with pytest.raises(ValueError):
            TrainConfig(lr, epochs, batch)
    assert DEFAULT_TRAIN.lr > 0 and DEFAULT_CLIP_UPDATE > 0


def test_steps_for() -> None:
    assert steps_for(100, TrainConfig(0.1, 2, 32)) == 8
    assert steps_for(96, TrainConfig(0.1, 2, 32)) == 6
    assert steps_for(1, TrainConfig(0.1, 3, 32)) == 3
    with pytest.raises(ValueError, match="positive"):
        steps_for(0, DEFAULT_TRAIN)


def test_train_local_reduces_loss_and_keeps_input() -> None:
    data = _dataset()
    for kind in ("logreg", "mlp"):
        m = make_model(kind, data.d, hidden=4)
        w0 = m.init_params(0)
        before = w0.copy()
        w1 = train_local(m, w0, data, TrainConfig(0.3, 5, 16), np.random.default_rng(1))
        np.testing.assert_array_equal(w0, before)
        assert m.loss(w1, data.X, data.y) < 0.8 * m.loss(w0, data.X, data.y)


def test_train_local_deterministic_given_rng() -> None:
    data = _dataset()
    m = make_model("mlp", data.d, hidden=3)
    a = train_local(m, m.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(5))
    b = train_local(m, m.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(5))
    c = train_local(m, m.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_single_full_batch_step_is_gradient_descent() -> None:
    data = _dataset(n=20)
    m = make_model("logreg", data.d)
    w0 = np.array([0.1, -0.2, 0.3, 0.05])
    cfg = TrainConfig(0.5, 1, 20)
    w1 = train_local(m, w0, data, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(w1, w0 - 0.5 * m.grad(w0, data.X, data.y), rtol=1e-12)


def test_privatizer_is_called_once_per_step_with_per_example_grads() -> None:
    data = _dataset(n=50)
    m = make_model("logreg", data.d)
    cfg = TrainConfig(0.2, 3, 16)
    priv = RecordingPrivatizer()
    w0 = m.init_params(0)
    w = train_local(m, w0, data, cfg, np.random.default_rng(0), privatizer=priv)
    assert len(priv.calls) == steps_for(50, cfg) == 12
    assert all(n == 50 and g.shape == (50, m.n_params) for n, g in priv.calls)
    np.testing.assert_allclose(priv.calls[0][1], m.per_example_grads(w0, data.X, data.y))
    # noise-free full batch: the same as 12 steps of gradient descent
    ref = w0.copy()
    for _ in range(12):
        ref -= 0.2 * m.grad(ref, data.X, data.y)
    np.testing.assert_allclose(w, ref, rtol=1e-10)


def test_privatizer_empty_batch_and_bad_outputs() -> None:
    data = _dataset(n=10)
    m = make_model("logreg", data.d)

    class Empty(RecordingPrivatizer):
        def batch_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
            return np.array([], dtype=np.int64)

        def noisy_mean_gradient(
            self, per_example_grads: np.ndarray, n: int, rng: np.random.Generator
        ) -> np.ndarray:
            self.calls.append((n, per_example_grads))
            return np.zeros(per_example_grads.shape[1])

    e = Empty()
    w = train_local(m, m.init_params(0), data, TrainConfig(0.1, 1, 5), np.random.default_rng(0), e)
    assert [g.shape for _, g in e.calls] == [(0, 4), (0, 4)]
    np.testing.assert_array_equal(w, np.zeros(4))

    class BadShape(RecordingPrivatizer):
        def noisy_mean_gradient(
            self, per_example_grads: np.ndarray, n: int, rng: np.random.Generator
        ) -> np.ndarray:
            return np.zeros(3)

    with pytest.raises(TrainingError, match="shape"):
        train_local(m, m.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(0), BadShape())

    class BadIndex(RecordingPrivatizer):
        def batch_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
            return np.array([n])

    with pytest.raises(TrainingError, match="outside"):
        train_local(m, m.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(0), BadIndex())


def test_train_local_rejects_bad_inputs() -> None:
    data = _dataset(d=3)
    with pytest.raises(ValueError, match="features"):
        m2 = make_model("logreg", 2)
        train_local(m2, m2.init_params(0), data, DEFAULT_TRAIN, np.random.default_rng(0))
    m = make_model("logreg", 3)
    with pytest.raises(ValueError, match="length"):
        train_local(m, np.zeros(3), data, DEFAULT_TRAIN, np.random.default_rng(0))
    with pytest.raises(TrainingError, match="diverged"):
        big = Dataset(data.X * 1e200, data.y, data.feature_names)
        train_local(m, m.init_params(0), big, TrainConfig(1e200, 1, 8), np.random.default_rng(0))


def test_clip_update_known_values() -> None:
    d = np.array([3.0, 4.0])
    np.testing.assert_allclose(clip_update(d, 1.0), [0.6, 0.8])
    small = clip_update(d, 10.0)
    np.testing.assert_array_equal(small, d)
    small[0] = 99.0
    assert d[0] == 3.0  # a copy
    np.testing.assert_array_equal(clip_update(np.zeros(3), 1.0), np.zeros(3))
    with pytest.raises(ValueError):
        clip_update(d, 0.0)
    with pytest.raises(ValueError):
        clip_update(np.array([np.inf, 0.0]), 1.0)
    with pytest.raises(ValueError):
        clip_update(np.zeros((2, 2)), 1.0)


@settings(max_examples=100, deadline=None)
@given(
    delta=arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e6, 1e6)),
    max_norm=st.floats(1e-3, 1e3),
)
def test_clip_update_property(delta: np.ndarray, max_norm: float) -> None:
    out = clip_update(delta, max_norm)
    norm = float(np.linalg.norm(delta))
    if norm <= max_norm:
        np.testing.assert_array_equal(out, delta)
    else:
        assert float(np.linalg.norm(out)) <= max_norm
        np.testing.assert_allclose(out, delta * (max_norm / norm), rtol=1e-12, atol=1e-300)
