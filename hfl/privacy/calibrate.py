"""Choose the noise multiplier for a target ε, and describe a DP configuration in plain words."""

from __future__ import annotations

import math
from collections.abc import Callable

from hfl.privacy.accountant import DEFAULT_PLD_DISCRETIZATION, PrivacyAccountant, compute_epsilon
from hfl.privacy.dpsgd import DPConfig, check_supported

# Search range for the noise multiplier. Below the minimum the PLD computation becomes very slow and the
# resulting ε is far beyond any sensible target; above the maximum the model would learn nothing.
MIN_NOISE_MULTIPLIER = {"gaussian": 0.2, "laplace": 0.02}
MAX_NOISE_MULTIPLIER = 1e4

__all__ = ["MAX_NOISE_MULTIPLIER", "MIN_NOISE_MULTIPLIER", "calibrate_noise_multiplier", "describe"]


class _Search:
    """Cached, monotone-decreasing ε(σ) used by the bracket search."""

    def __init__(self, fn: Callable[[float], float]) -> None:
        self._fn = fn
        self._cache: dict[float, float] = {}

    def __call__(self, sigma: float) -> float:
        if sigma not in self._cache:
            self._cache[sigma] = self._fn(sigma)
        return self._cache[sigma]


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    mechanism: str,
    accountant: str,
    tol: float = 0.005,
    *,
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION,
) -> float:
    """Smallest-noise multiplier (to within ``tol``) whose ε after ``steps`` steps is at most the target.

    The returned σ satisfies ``target·(1 − tol) ≤ ε(σ) ≤ target`` with ε computed exactly as
    PrivacyAccountant does (same accountant and PLD discretization). Raises ValueError if the target
    cannot be reached inside [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER].
    """
    if not (isinstance(target_epsilon, int | float) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"Target epsilon must be a positive finite number, got {target_epsilon!r}.")
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise ValueError(f"Delta must be strictly between 0 and 1, got {delta!r}.")
    if not (isinstance(sampling_rate, int | float) and 0.0 < sampling_rate <= 1.0):
        raise ValueError(f"Sampling rate must be in (0, 1], got {sampling_rate!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Number of steps must be a positive integer, got {steps!r}.")
    if not (isinstance(tol, int | float) and 0.0 < tol <= 0.01):
        raise ValueError(f"Tolerance must be in (0, 0.01] (at most 1% below the target), got {tol!r}.")
    check_supported(mechanism, accountant, sampling_rate)

    target = float(target_epsilon)
    eps = _Search(
        lambda s: compute_epsilon(
            mechanism, s, sampling_rate, steps, delta, accountant, pld_discretization=pld_discretization
        )
    )
    lo_limit = MIN_NOISE_MULTIPLIER[mechanism]

    # Starting guess. For Gaussian + PLD the cheap RDP answer is an upper bracket (RDP is looser).
    hi = 1.0
    if mechanism == "gaussian" and accountant == "pld":
        try:
            hi = calibrate_noise_multiplier(target, delta, sampling_rate, steps, "gaussian", "rdp", 0.01)
        except ValueError:
            hi = 1.0
    hi = max(hi, lo_limit)

    # Upper bracket: ε(hi) <= target.
    while eps(hi) > target:
        if hi >= MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"Target ε={target:g} at δ={delta:g} cannot be reached with {mechanism} noise and the "
                f"{accountant.upper()} accountant even at noise multiplier {MAX_NOISE_MULTIPLIER:g} "
                f"(ε would be {eps(hi):.4g}). Raise the target ε, train for fewer steps or use a smaller "
                "sampling rate."
            )
        hi = min(hi * 2.0, MAX_NOISE_MULTIPLIER)
    if eps(hi) >= target * (1.0 - tol):
        return hi

    # Lower bracket: ε(lo) > target.
    lo = hi
    while eps(lo) <= target:
        if lo <= lo_limit:
            raise ValueError(
                f"Target ε={target:g} is so loose that even noise multiplier {lo_limit:g} stays below it "
                f"(ε={eps(lo):.4g}); such settings give little protection. Lower the target ε."
            )
        hi = lo
        lo = max(lo * 0.8, lo_limit)
        if eps(hi) >= target * (1.0 - tol):
            return hi

    # Safeguarded interpolation in log-log space between the brackets.
    goal = math.log(target * (1.0 - tol / 2.0))
    for _ in range(100):
        e_lo, e_hi = eps(lo), eps(hi)
        frac = 0.5
        if math.isfinite(e_lo) and e_hi > 0.0:
            span = math.log(e_lo) - math.log(e_hi)
            if span > 0.0:
                frac = min(0.9, max(0.1, (math.log(e_lo) - goal) / span))
        mid = math.exp(math.log(lo) + frac * (math.log(hi) - math.log(lo)))
        if not lo < mid < hi:
            break
        if eps(mid) <= target:
            hi = mid
            if eps(hi) >= target * (1.0 - tol):
                return hi
        else:
            lo = mid
    raise ValueError(
        f"Could not place ε within {tol:.1%} below the target {target:g} (closest safe ε={eps(hi):.4g}); "
        "the accounting is too coarse — use a finer PLD discretization."
    )


def describe(cfg: DPConfig, steps_per_round: int, rounds: int) -> str:
    """One plain-language line summarising the DP setting and its total ε (for start-up logs)."""
    for name, v in (("steps_per_round", steps_per_round), ("rounds", rounds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    total = PrivacyAccountant(cfg).epsilon_after(steps_per_round * rounds)
    if cfg.mechanism == "gaussian":
        noise = f"Gaussian noise {cfg.noise_multiplier:.2f}×C per step (C={cfg.clip:g}, L2 clipping)"
    else:
        noise = (
            f"Laplace noise of scale {cfg.noise_multiplier:.2f}×C per coordinate per step "
            f"(C={cfg.clip:g}, L1 clipping)"
        )
    line = (
        f"Each facility adds {noise}, sampling each record with probability {cfg.sampling_rate:g}; "
        f"{rounds} rounds of {steps_per_round} steps spend at most ε={total:.2f} at δ={cfg.delta:g} "
        f"({cfg.accountant.upper()} accounting)"
    )
    if cfg.epsilon_budget is not None:
        verdict = "within" if total <= cfg.epsilon_budget else "OVER"
        line += f", {verdict} the budget ε={cfg.epsilon_budget:.2f}"
    return line + "."
