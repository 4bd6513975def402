"""Noise mechanisms and per-example clipping for record-level differential privacy.

All randomness comes from an explicitly passed ``np.random.Generator``; use
:func:`secure_generator` (seeded from ``os.urandom``) for real noise. Global numpy state is never used.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np

NormKind = Literal["l2", "l1"]

__all__ = [
    "NormKind",
    "clip_rows",
    "gaussian_noise",
    "laplace_noise",
    "laplace_release",
    "require_generator",
    "secure_generator",
]


def secure_generator() -> np.random.Generator:
    """Return a fresh numpy Generator seeded with 256 bits from ``os.urandom``."""
    seed = int.from_bytes(os.urandom(32), "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))


def require_generator(rng: object) -> np.random.Generator:
    """Check that ``rng`` is a numpy Generator (not the global ``np.random`` module or None)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "Privacy noise needs an explicit numpy Generator (for example from secure_generator()); "
            f"got {type(rng).__name__}."
        )
    return rng


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return v


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0:
            raise ValueError(f"Noise shape must contain non-negative integers, got {shape!r}.")
    return tuple(int(d) for d in dims)


def gaussian_noise(shape: int | tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """Draw zero-mean Gaussian noise with standard deviation ``std`` (float64)."""
    s = _positive_finite("Gaussian noise standard deviation", std)
    return require_generator(rng).normal(0.0, s, size=_shape(shape))


def laplace_noise(shape: int | tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Draw zero-mean Laplace noise with scale ``scale`` (variance 2·scale²), float64."""
    b = _positive_finite("Laplace noise scale", scale)
    return require_generator(rng).laplace(0.0, b, size=_shape(shape))


def clip_rows(grads: np.ndarray, clip: float, norm: NormKind = "l2") -> np.ndarray:
    """Scale each row of a (B, P) array so its L2 (or L1) norm is at most ``clip``.

    Rows already inside the bound are unchanged. Returns a new float64 array.
    """
    c = _positive_finite("Clipping bound", clip)
    if norm not in ("l2", "l1"):
        raise ValueError(f"Clipping norm must be 'l2' or 'l1', got {norm!r}.")
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(
            f"Per-example gradients must be a 2-D array (examples × parameters), got shape {g.shape}."
        )
    if not np.all(np.isfinite(g)):
        raise ValueError("Per-example gradients contain NaN or infinite values; training has diverged.")
    if g.shape[0] == 0:
        return g.copy()
    norms = np.linalg.norm(g, ord=2 if norm == "l2" else 1, axis=1)
    # Rows with norm <= clip keep factor 1 (so zero rows never divide by zero).
    over = norms > c
    factors = np.ones_like(norms)
    factors[over] = c / norms[over]
    return g * factors[:, None]


def laplace_release(value: float, sensitivity: float, epsilon: float, rng: np.random.Generator) -> float:
    """Release ``value`` with pure ε-DP by adding Laplace noise of scale sensitivity/ε.

    ``sensitivity`` is how much one patient record can change ``value`` (for a count it is 1).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"The value to release must be a number, got {type(value).__name__}.")
    if not math.isfinite(float(value)):
        raise ValueError(f"The value to release must be finite, got {value!r}.")
    s = _positive_finite("Release sensitivity", sensitivity)
    e = _positive_finite("Release epsilon", epsilon)
    return float(value) + float(require_generator(rng).laplace(0.0, s / e))
