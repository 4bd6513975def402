"""DP-SGD for record-level privacy inside one facility.

Each step Poisson-samples a batch (every record joins independently with probability q), clips each
per-example gradient (L2 for Gaussian noise, L1 for Laplace noise), sums, adds noise and divides by the
expected batch size q·n. The privacy unit is one patient record (add/remove-one neighbouring datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from hfl.privacy.mechanisms import clip_rows, gaussian_noise, laplace_noise, require_generator

Mechanism = Literal["gaussian", "laplace"]
AccountantKind = Literal["rdp", "pld"]

MECHANISMS: tuple[str, ...] = get_args(Mechanism)
ACCOUNTANTS: tuple[str, ...] = get_args(AccountantKind)

__all__ = ["ACCOUNTANTS", "DPSGD", "MECHANISMS", "AccountantKind", "DPConfig", "Mechanism", "check_supported"]


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return v


def check_supported(mechanism: str, accountant: str, sampling_rate: float) -> None:
    """Raise ValueError for a mechanism/accountant pair dp_accounting cannot account for.

    dp_accounting's RDP accountant handles Poisson-subsampled *Gaussian* noise only; subsampled Laplace
    noise must use the PLD accountant. Laplace with RDP is accepted only when q = 1 (no subsampling).
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"Unknown noise mechanism {mechanism!r}; choose 'gaussian' or 'laplace'.")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"Unknown privacy accountant {accountant!r}; choose 'rdp' or 'pld'.")
    if mechanism == "laplace" and accountant == "rdp" and sampling_rate < 1.0:
        raise ValueError(
            "The RDP accountant cannot account for Laplace noise with Poisson sampling (sampling rate "
            f"{sampling_rate} < 1); use accountant='pld' for the Laplace mechanism."
        )


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy settings for one facility's DP-SGD.

    noise_multiplier is σ (Gaussian std σ·C) or b (Laplace per-coordinate scale b·C); clip is C.
    epsilon_budget None means no budget is enforced by the accountant.
    """

    mechanism: Mechanism
    clip: float
    noise_multiplier: float
    sampling_rate: float
    accountant: AccountantKind
    delta: float
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        clip = _number("Clipping bound (clip)", self.clip)
        if clip <= 0.0:
            raise ValueError(f"Clipping bound (clip) must be positive, got {self.clip!r}.")
        sigma = _number("Noise multiplier", self.noise_multiplier)
        if sigma <= 0.0:
            raise ValueError(
                "Noise multiplier must be positive (zero noise gives no privacy), "
                f"got {self.noise_multiplier!r}."
            )
        q = _number("Sampling rate", self.sampling_rate)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"Sampling rate must be in (0, 1], got {self.sampling_rate!r}.")
        delta = _number("Delta", self.delta)
        if not 0.0 < delta < 1.0:
            raise ValueError(f"Delta must be strictly between 0 and 1, got {self.delta!r}.")
        if self.epsilon_budget is not None:
            eps = _number("Epsilon budget", self.epsilon_budget)
            if eps <= 0.0:
                raise ValueError(f"Epsilon budget must be positive, got {self.epsilon_budget!r}.")
        check_supported(self.mechanism, self.accountant, q)
        # Normalise numeric fields to plain floats (frozen dataclass: use object.__setattr__).
        object.__setattr__(self, "clip", clip)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "delta", delta)
        if self.epsilon_budget is not None:
            object.__setattr__(self, "epsilon_budget", float(self.epsilon_budget))


def _dataset_size(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"Dataset size must be an integer, got {type(n).__name__}.")
    if n < 1:
        raise ValueError(f"Dataset size must be at least 1 record, got {n}.")
    return int(n)


class DPSGD:
    """Poisson sampling plus noisy clipped mean gradient (matches the learning team's protocol)."""

    def __init__(self, cfg: DPConfig) -> None:
        if not isinstance(cfg, DPConfig):
            raise TypeError(f"DPSGD needs a DPConfig, got {type(cfg).__name__}.")
        self.cfg = cfg

    def batch_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Poisson-sample a batch: each of the n records is included independently with probability q."""
        size = _dataset_size(n)
        gen = require_generator(rng)
        if self.cfg.sampling_rate >= 1.0:
            return np.arange(size, dtype=np.int64)
        return np.flatnonzero(gen.random(size) < self.cfg.sampling_rate).astype(np.int64)

    def noisy_mean_gradient(
        self, per_example_grads: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Clip rows, sum, add noise, divide by the expected batch size q·n. Returns shape (P,).

        An empty batch (shape (0, P)) yields pure noise divided by q·n.
        """
        size = _dataset_size(n)
        gen = require_generator(rng)
        g = np.asarray(per_example_grads)
        if g.ndim != 2:
            raise ValueError(
                f"Per-example gradients must be a 2-D array (examples × parameters), got shape {g.shape}."
            )
        if g.shape[0] > size:
            raise ValueError(f"The batch has {g.shape[0]} examples but the dataset only has {size} records.")
        cfg = self.cfg
        if cfg.mechanism == "gaussian":
            total = clip_rows(g, cfg.clip, "l2").sum(axis=0)
            noise = gaussian_noise(g.shape[1], cfg.noise_multiplier * cfg.clip, gen)
        else:
            total = clip_rows(g, cfg.clip, "l1").sum(axis=0)
            noise = laplace_noise(g.shape[1], cfg.noise_multiplier * cfg.clip, gen)
        result: np.ndarray = (total + noise) / (cfg.sampling_rate * size)
        return result
