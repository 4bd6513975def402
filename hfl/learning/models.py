"""Small numpy models for binary classification.

Every model keeps all of its parameters in ONE flat float64 vector, so updates can be clipped,
masked, summed and hashed as plain vectors. Kinds:

* ``logreg``: logistic regression, params = [w (d), b].
* ``mlp``: one tanh hidden layer, params = [W1 (h*d, row-major h x d), b1 (h), w2 (h), b2].

The training loss is the mean binary cross-entropy plus a small L2 penalty ``l2/2 * ||weights||^2`` on
the weights only (biases are not penalised). The penalty is part of ``loss``, ``grad`` and of every row of
``per_example_grads`` so that the mean of the per-example gradients equals ``grad`` exactly.
``evaluate`` reports the plain cross-entropy, without the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from hfl.learning.data import Dataset

ModelKind = Literal["logreg", "mlp"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
DEFAULT_L2 = 1e-4


def _check_x(X: np.ndarray, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected features of shape (n, {n_features}), got {X.shape}")
    return X


def _check_xy(X: np.ndarray, y: np.ndarray, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    X = _check_x(X, n_features)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (X.shape[0],):
        raise ValueError(f"expected {X.shape[0]} labels, got shape {y.shape}")
    return X, y


def _bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy from logits, stable for large |z|."""
    return np.logaddexp(0.0, z) - y * z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclass(frozen=True)
class Model:
    """A binary classifier over ``n_features`` inputs; stateless apart from its shape.

    ``hidden`` is 0 for ``logreg``. All methods take the flat parameter vector explicitly.
    """

    kind: str
    n_features: int
    hidden: int = 0
    l2: float = DEFAULT_L2

    def __post_init__(self) -> None:
        for name in ("n_features", "hidden"):  # accept numpy integers, store plain ints
            v = getattr(self, name)
            if isinstance(v, np.integer):
                object.__setattr__(self, name, int(v))
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or self.n_features < 1:
            raise ValueError(f"the number of features must be a positive integer, got {self.n_features!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int):
            raise ValueError(f"the hidden layer size must be an integer, got {self.hidden!r}")
        if self.kind == "logreg" and self.hidden != 0:
            raise ValueError("a logistic regression model has no hidden layer (hidden must be 0)")
        if self.kind == "mlp" and self.hidden < 1:
            raise ValueError(f"an mlp needs at least one hidden unit, got {self.hidden}")
        if not np.isfinite(self.l2) or self.l2 < 0:
            raise ValueError(f"the L2 penalty must be a finite number >= 0, got {self.l2!r}")

    @property
    def n_params(self) -> int:
        d, h = self.n_features, self.hidden
        if self.kind == "logreg":
            return d + 1
        return h * d + 2 * h + 1

    # -- parameters -------------------------------------------------------------------------------

    def init_params(self, seed: int) -> np.ndarray:
        """Deterministic starting point: zeros for logreg, Glorot-uniform weights for mlp."""
        if self.kind == "logreg":
            return np.zeros(self.n_params)
        rng = np.random.default_rng(seed)
        d, h = self.n_features, self.hidden
        lim1 = np.sqrt(6.0 / (d + h))
        lim2 = np.sqrt(6.0 / (h + 1))
        W1 = rng.uniform(-lim1, lim1, size=(h, d))
        w2 = rng.uniform(-lim2, lim2, size=h)
        return np.concatenate([W1.ravel(), np.zeros(h), w2, np.zeros(1)])

    def check_params(self, params: np.ndarray) -> np.ndarray:
        p = np.asarray(params, dtype=np.float64)
        if p.shape != (self.n_params,):
            raise ValueError(
                f"this {self.kind} model needs a parameter vector of length {self.n_params}, "
                f"got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)):
            raise ValueError("the model parameters contain NaN or infinite values")
        return p

    def _weight_mask(self) -> np.ndarray:
        """1.0 where the parameter is a weight (penalised), 0.0 for biases."""
        m = np.ones(self.n_params)
        d, h = self.n_features, self.hidden
        if self.kind == "logreg":
            m[d] = 0.0
        else:
            m[h * d : h * d + h] = 0.0
            m[-1] = 0.0
        return m

    def _unpack(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        d, h = self.n_features, self.hidden
        W1 = p[: h * d].reshape(h, d)
        b1 = p[h * d : h * d + h]
        w2 = p[h * d + h : h * d + 2 * h]
        return W1, b1, w2, float(p[-1])

    # -- forward / backward -----------------------------------------------------------------------

    def _logits(self, p: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and hidden activations (an empty (n, 0) array for logreg)."""
        if self.kind == "logreg":
            return X @ p[:-1] + p[-1], np.empty((X.shape[0], 0))
        W1, b1, w2, b2 = self._unpack(p)
        H = np.tanh(X @ W1.T + b1)
        return H @ w2 + b2, H

    def predict_proba(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Probability of class 1 for each row of ``X``."""
        p = self.check_params(params)
        z, _ = self._logits(p, _check_x(X, self.n_features))
        return _sigmoid(z)

    def loss(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy plus the L2 penalty."""
        p = self.check_params(params)
        X, yf = _check_xy(X, y, self.n_features)
        if X.shape[0] == 0:
            raise ValueError("cannot compute a loss on zero examples")
        z, _ = self._logits(p, X)
        w = p * self._weight_mask()
        return float(np.mean(_bce(z, yf)) + 0.5 * self.l2 * float(w @ w))

    def per_example_grads(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradient of each example's loss (cross-entropy + L2 penalty), shape (B, n_params)."""
        p = self.check_params(params)
        X, yf = _check_xy(X, y, self.n_features)
        B = X.shape[0]
        z, H = self._logits(p, X)
        r = _sigmoid(z) - yf  # dloss/dz, shape (B,)
        if self.kind == "logreg":
            G = np.empty((B, self.n_params))
            G[:, :-1] = r[:, None] * X
            G[:, -1] = r
        else:
            d, h = self.n_features, self.hidden
            _, _, w2, _ = self._unpack(p)
            dpre = (r[:, None] * w2[None, :]) * (1.0 - H * H)  # (B, h)
            G = np.empty((B, self.n_params))
            G[:, : h * d] = (dpre[:, :, None] * X[:, None, :]).reshape(B, h * d)
            G[:, h * d : h * d + h] = dpre
            G[:, h * d + h : h * d + 2 * h] = r[:, None] * H
            G[:, -1] = r
        if self.l2 > 0:
            G += (self.l2 * p * self._weight_mask())[None, :]
        return G

    def grad(self, params: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mean gradient of ``loss`` over the examples, shape (n_params,)."""
        p = self.check_params(params)
        X, yf = _check_xy(X, y, self.n_features)
        B = X.shape[0]
        if B == 0:
            raise ValueError("cannot compute a gradient on zero examples")
        z, H = self._logits(p, X)
        r = (_sigmoid(z) - yf) / B
        if self.kind == "logreg":
            g = np.concatenate([X.T @ r, [r.sum()]])
        else:
            _, _, w2, _ = self._unpack(p)
            dpre = (r[:, None] * w2[None, :]) * (1.0 - H * H)
            g = np.concatenate([(dpre.T @ X).ravel(), dpre.sum(axis=0), H.T @ r, [r.sum()]])
        return g + self.l2 * p * self._weight_mask()


def make_model(kind: str, n_features: int, hidden: int = 16) -> Model:
    """Build a model. ``hidden`` is the mlp's hidden width and is ignored for ``logreg``."""
    if kind == "logreg":
        return Model("logreg", n_features, 0)
    return Model(kind, n_features, hidden)


@dataclass(frozen=True)
class EvalResult:
    """Counts from evaluating a model on one data set; add results together to pool them."""

    correct: int
    total: int
    loss_sum: float

    def __post_init__(self) -> None:
        if self.total < 0 or not 0 <= self.correct <= self.total:
            raise ValueError(f"inconsistent evaluation counts: {self.correct} correct of {self.total}")
        if not np.isfinite(self.loss_sum) or self.loss_sum < 0:
            raise ValueError(f"the summed loss must be a finite number >= 0, got {self.loss_sum!r}")

    @property
    def accuracy(self) -> float:
        if self.total == 0:
            raise ValueError("no examples were evaluated, so there is no accuracy")
        return self.correct / self.total

    @property
    def loss(self) -> float:
        if self.total == 0:
            raise ValueError("no examples were evaluated, so there is no mean loss")
        return self.loss_sum / self.total

    def __add__(self, other: EvalResult) -> EvalResult:
        if not isinstance(other, EvalResult):
            return NotImplemented
        return EvalResult(
            self.correct + other.correct, self.total + other.total, self.loss_sum + other.loss_sum
        )

    def __radd__(self, other: object) -> EvalResult:
        # lets the builtin sum() start from 0
        if other == 0:
            return self
        return NotImplemented


def evaluate(model: Model, params: np.ndarray, data: Dataset) -> EvalResult:
    """Accuracy (threshold 0.5) and summed cross-entropy (no L2 penalty) of ``params`` on ``data``."""
    p = model.check_params(params)
    if data.d != model.n_features:
        raise ValueError(f"the data has {data.d} features but the model expects {model.n_features}")
    if data.n == 0:
        return EvalResult(0, 0, 0.0)
    z, _ = model._logits(p, data.X)
    pred = (z >= 0).astype(np.int64)
    correct = int(np.sum(pred == data.y))
    loss_sum = float(np.sum(_bce(z, data.y.astype(np.float64))))
    return EvalResult(correct, data.n, loss_sum)
