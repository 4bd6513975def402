"""Privacy accounting for DP-SGD, delegated entirely to Google's ``dp_accounting``.

One DP-SGD step is ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` or
``PoissonSampledDpEvent(q, LaplaceDpEvent(b))`` (the bare event when q = 1), composed ``steps`` times,
under add/remove-one neighbouring datasets (one patient record).

Supported combinations: Gaussian with RDP or PLD; Laplace with PLD; Laplace with RDP only when q = 1
(dp_accounting's RDP accountant has no subsampled-Laplace analysis). The Laplace event accounts for a
one-dimensional query of L1 sensitivity 1; we apply it to per-coordinate Laplace noise on a vector whose
L1 sensitivity is C. Pure ε per step is exactly the same; for (ε, δ) the one-dimensional case is the
worst case among vectors of equal L1 norm (checked numerically), so the bound is conservative.
"""

from __future__ import annotations

import logging
import math

import dp_accounting
from dp_accounting import pld, rdp

from hfl.privacy.budget import BudgetExceeded
from hfl.privacy.dpsgd import DPConfig, check_supported

logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's numerical chatter, for every user

DEFAULT_PLD_DISCRETIZATION = 1e-4

__all__ = ["DEFAULT_PLD_DISCRETIZATION", "PrivacyAccountant", "compute_epsilon", "dp_event"]


def dp_event(
    mechanism: str, noise_multiplier: float, sampling_rate: float, steps: int
) -> dp_accounting.DpEvent:
    """Build the dp_accounting event for ``steps`` DP-SGD steps."""
    base: dp_accounting.DpEvent
    if mechanism == "gaussian":
        base = dp_accounting.GaussianDpEvent(noise_multiplier)
    elif mechanism == "laplace":
        base = dp_accounting.LaplaceDpEvent(noise_multiplier)
    else:
        raise ValueError(f"Unknown noise mechanism {mechanism!r}; choose 'gaussian' or 'laplace'.")
    step = base if sampling_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sampling_rate, base)
    return dp_accounting.SelfComposedDpEvent(step, steps)


def _check_steps(name: str, k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}.")
    if k < 0:
        raise ValueError(f"{name} cannot be negative, got {k}.")
    return k


def compute_epsilon(
    mechanism: str,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: str,
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Return ε at ``delta`` after ``steps`` DP-SGD steps, computed by dp_accounting."""
    check_supported(mechanism, accountant, sampling_rate)
    _check_steps("Number of steps", steps)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"Delta must be strictly between 0 and 1, got {delta!r}.")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0.0):
        raise ValueError(f"Noise multiplier must be positive and finite, got {noise_multiplier!r}.")
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"Sampling rate must be in (0, 1], got {sampling_rate!r}.")
    if steps == 0:
        return 0.0
    acct: dp_accounting.PrivacyAccountant
    if accountant == "rdp":
        acct = rdp.RdpAccountant()
    else:
        if not (math.isfinite(pld_discretization) and pld_discretization > 0.0):
            raise ValueError(f"PLD discretization must be positive, got {pld_discretization!r}.")
        acct = pld.PLDAccountant(value_discretization_interval=pld_discretization)
    acct.compose(dp_event(mechanism, noise_multiplier, sampling_rate, steps))
    return float(acct.get_epsilon(delta))


class PrivacyAccountant:
    """Tracks DP-SGD steps taken under one DPConfig and reports ε at cfg.delta.

    All steps share the same parameters, so the state is just the step count; ε is recomputed by
    dp_accounting (and cached per step count).
    """

    def __init__(self, cfg: DPConfig, *, pld_discretization: float = DEFAULT_PLD_DISCRETIZATION) -> None:
        if not isinstance(cfg, DPConfig):
            raise TypeError(f"PrivacyAccountant needs a DPConfig, got {type(cfg).__name__}.")
        check_supported(cfg.mechanism, cfg.accountant, cfg.sampling_rate)
        if not (math.isfinite(pld_discretization) and pld_discretization > 0.0):
            raise ValueError(f"PLD discretization must be positive, got {pld_discretization!r}.")
        self.cfg = cfg
        self.pld_discretization = float(pld_discretization)
        self._steps = 0
        self._cache: dict[int, float] = {}

    @property
    def steps(self) -> int:
        """Number of DP-SGD steps recorded so far."""
        return self._steps

    def record_steps(self, k: int) -> None:
        """Record that k more DP-SGD steps were taken."""
        self._steps += _check_steps("Number of steps to record", k)

    def _epsilon_at(self, total_steps: int) -> float:
        if total_steps not in self._cache:
            c = self.cfg
            self._cache[total_steps] = compute_epsilon(
                c.mechanism,
                c.noise_multiplier,
                c.sampling_rate,
                total_steps,
                c.delta,
                c.accountant,
                pld_discretization=self.pld_discretization,
            )
        return self._cache[total_steps]

    def epsilon(self) -> float:
        """ε spent so far at cfg.delta (0.0 before any step)."""
        return self._epsilon_at(self._steps)

    def epsilon_after(self, extra_steps: int) -> float:
        """ε that would be spent after ``extra_steps`` more steps, without recording them."""
        return self._epsilon_at(self._steps + _check_steps("Number of extra steps", extra_steps))

    def _budget(self) -> float:
        if self.cfg.epsilon_budget is None:
            raise ValueError("No epsilon budget is configured (DPConfig.epsilon_budget is None).")
        return self.cfg.epsilon_budget

    def would_exceed(self, extra_steps: int) -> bool:
        """True if ``extra_steps`` more steps would push ε above cfg.epsilon_budget."""
        return self.epsilon_after(extra_steps) > self._budget()

    def ensure_within_budget(self, extra_steps: int) -> float:
        """Return the projected ε after ``extra_steps`` or raise BudgetExceeded if over the budget."""
        budget = self._budget()
        projected = self.epsilon_after(extra_steps)
        if projected > budget:
            raise BudgetExceeded(
                f"Declining: {extra_steps} more training steps would bring the privacy loss to "
                f"ε={projected:.3f}, above the budget ε={budget:.3f} (δ={self.cfg.delta:g}).",
                projected=projected,
                budget=budget,
            )
        return projected
