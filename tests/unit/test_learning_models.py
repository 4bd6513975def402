from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.learning.data import Dataset
from hfl.learning.models import DEFAULT_L2, EvalResult, Model, evaluate, make_model


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.4).astype(np.int64)
    return X, y


def _random_params(model: Model, seed: int, scale: float = 0.7) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, model.n_params)


MODELS = [make_model("logreg", 5), make_model("mlp", 5, hidden=4), Model("mlp", 3, 2, l2=0.05)]


def test_param_counts() -> None:
    assert make_model("logreg", 12).n_params == 13
    assert make_model("logreg", 12).hidden == 0
    m = make_model("mlp", 12, hidden=16)
    assert (m.kind, m.n_features, m.hidden) == ("mlp", 12, 16)
    assert m.n_params == 16 * 12 + 16 + 16 + 1
    assert m.l2 == DEFAULT_L2
    assert make_model("mlp", np.int64(3), hidden=np.int64(2)).n_params == 11  # type: ignore[arg-type]


def test_init_params_deterministic() -> None:
    m = make_model("mlp", 6, hidden=5)
    a, b, c = m.init_params(1), m.init_params(1), m.init_params(2)
    assert a.shape == (m.n_params,) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(make_model("logreg", 4).init_params(3), np.zeros(5))


def test_logreg_known_answer() -> None:
    m = Model("logreg", 2, 0, l2=0.0)
    X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, -3.0]])
    y = np.array([1, 0, 1])
    w = np.zeros(3)
    assert m.loss(w, X, y) == pytest.approx(math.log(2))
    np.testing.assert_allclose(m.predict_proba(w, X), [0.5, 0.5, 0.5])
    # d/dw mean BCE at w = 0: mean((0.5 - y) * [x, 1])
    expected = np.array(
        [(-0.5 * 1 + 0.5 * -1 + -0.5 * 0) / 3, (-0.5 * 2 + 0.5 * 0.5 + -0.5 * -3) / 3, -0.5 / 3]
    )
    np.testing.assert_allclose(m.grad(w, X, y), expected)
    # w = [1, 0, b=0]: logits [1, -1, 0]
    w1 = np.array([1.0, 0.0, 0.0])
    p = 1 / (1 + np.exp(-np.array([1.0, -1.0, 0.0])))
    np.testing.assert_allclose(m.predict_proba(w1, X), p)
    want = -np.mean([math.log(p[0]), math.log(1 - p[1]), math.log(p[2])])
    assert m.loss(w1, X, y) == pytest.approx(want)


def test_l2_penalises_weights_not_biases() -> None:
    m = Model("logreg", 2, 0, l2=0.5)
    X = np.zeros((1, 2))
    y = np.array([1])
    w = np.array([1.0, 2.0, 7.0])
    # features are zero, so only the bias drives the data term
    base = Model("logreg", 2, 0, l2=0.0)
    assert m.loss(w, X, y) == pytest.approx(base.loss(w, X, y) + 0.5 * 0.5 * 5.0)
    np.testing.assert_allclose(m.grad(w, X, y) - base.grad(w, X, y), [0.5, 1.0, 0.0])


def test_loss_is_stable_for_extreme_logits() -> None:
    m = Model("logreg", 1, 0, l2=0.0)
    X = np.array([[1000.0], [-1000.0], [1000.0]])
    y = np.array([0, 0, 1])
    w = np.array([1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = m.loss(w, X, y)
        proba = m.predict_proba(w, X)
        g = m.grad(w, X, y)
    assert loss == pytest.approx(1000.0 / 3)
    np.testing.assert_allclose(proba, [1.0, 0.0, 1.0])
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.kind}-{m.hidden}-{m.l2}")
def test_grad_matches_finite_differences(model: Model) -> None:
    X, y = _data(9, model.n_features, 1)
    w = _random_params(model, 2)
    g = model.grad(w, X, y)
    eps = 1e-6
    num = np.empty_like(w)
    for i in range(len(w)):
        e = np.zeros_like(w)
        e[i] = eps
        num[i] = (model.loss(w + e, X, y) - model.loss(w - e, X, y)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{m.kind}-{m.hidden}-{m.l2}")
def test_per_example_grads_equal_stacked_single_grads(model: Model) -> None:
    X, y = _data(7, model.n_features, 3)
    w = _random_params(model, 4)
    G = model.per_example_grads(w, X, y)
    assert G.shape == (7, model.n_params)
    stacked = np.stack([model.grad(w, X[i : i + 1], y[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(G, stacked, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(G.mean(axis=0), model.grad(w, X, y), rtol=1e-10, atol=1e-14)


def test_per_example_grads_of_empty_batch() -> None:
    m = make_model("mlp", 3, hidden=2)
    G = m.per_example_grads(m.init_params(0), np.empty((0, 3)), np.empty(0, dtype=np.int64))
    assert G.shape == (0, m.n_params)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["logreg", "mlp"]),
    n=st.integers(1, 6),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_per_example_mean_is_grad_property(kind: str, n: int, d: int, seed: int) -> None:
    m = make_model(kind, d, hidden=3)
    X, y = _data(n, d, seed)
    w = _random_params(m, seed, scale=2.0)
    np.testing.assert_allclose(m.per_example_grads(w, X, y).mean(axis=0), m.grad(w, X, y), atol=1e-12)


def test_model_input_validation() -> None:
    with pytest.raises(ValueError, match="unknown model kind"):
        make_model("svm", 3)
    with pytest.raises(ValueError, match="hidden unit"):
        make_model("mlp", 3, hidden=0)
    with pytest.raises(ValueError, match="positive integer"):
        make_model("logreg", 0)
    with pytest.raises(ValueError, match="no hidden layer"):
        Model("logreg", 3, 4)
    with pytest.raises(ValueError, match="L2"):
        Model("logreg", 3, 0, l2=-1.0)
    m = make_model("logreg", 3)
    X, y = _data(4, 3, 0)
    with pytest.raises(ValueError, match="length 4"):
        m.loss(np.zeros(5), X, y)
    with pytest.raises(ValueError, match="NaN"):
        m.grad(np.array([0.0, np.nan, 0.0, 0.0]), X, y)
    with pytest.raises(ValueError, match="shape"):
        m.predict_proba(np.zeros(4), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels"):
        m.grad(np.zeros(4), X, y[:3])
    with pytest.raises(ValueError, match="zero examples"):
        m.loss(np.zeros(4), X[:0], y[:0])


def test_evaluate_known_counts() -> None:
    m = Model("logreg", 1, 0, l2=0.0)
    X = np.array([[2.0], [-1.0], [3.0], [-2.0]])
    y = np.array([1, 1, 0, 0], dtype=np.int64)
    w = np.array([1.0, 0.0])  # predicts 1, 0, 1, 0
    res = evaluate(m, w, Dataset(X, y, ("x",)))
    assert (res.correct, res.total) == (2, 4)
    assert res.accuracy == 0.5
    assert res.loss_sum == pytest.approx(4 * m.loss(w, X, y))
    assert res.loss == pytest.approx(m.loss(w, X, y))


def test_eval_result_pooling() -> None:
    a = EvalResult(3, 4, 1.0)
    b = EvalResult(5, 6, 2.5)
    assert a + b == EvalResult(8, 10, 3.5)
    assert sum([a, b]) == EvalResult(8, 10, 3.5)
    assert (a + b).accuracy == 0.8
    empty = EvalResult(0, 0, 0.0)
    assert empty + a == a
    with pytest.raises(ValueError, match="no examples"):
        _ = empty.accuracy
    with pytest.raises(ValueError, match="inconsistent"):
        EvalResult(5, 4, 0.0)
    with pytest.raises(ValueError, match="finite"):
        EvalResult(1, 4, float("nan"))


def test_evaluate_rejects_feature_mismatch() -> None:
    m = make_model("logreg", 2)
    X, y = _data(3, 3, 0)
    with pytest.raises(ValueError, match="features"):
        evaluate(m, m.init_params(0), Dataset(X, y, ("a", "b", "c")))
