"""Aggregation rules over bucket sums.

Input: ``sums`` of shape (B, d) (float64, one row per bucket: the sum of that bucket's member updates)
and ``counts`` of shape (B,) (members in each bucket). Output: the global update (d,) and the indices of
buckets that were flagged (excluded because they cannot come from honest members, or judged outliers).

Step 1, the norm bound: every honest member clips its update to ‖Δ‖₂ ≤ C, so an honest bucket sum has
‖sum‖ ≤ count·C. A bucket above that (or with a non-finite value) certainly holds a bad member: it is
flagged ``"norm"`` and excluded. This bound is what stops a "scale" attacker; the rules below only have
to deal with buckets that stay inside it.

Step 2, the rule, over the remaining bucket means (sum / count):

* ``mean``: Σ sums / Σ counts (every member weighs the same). No outlier tolerance.
* ``trimmed_mean``: per coordinate, drop the f largest and f smallest means, average the rest.
* ``median``: per coordinate median of the means.
* ``multi_krum``: Krum score = sum of squared distances to the n−f−2 nearest other means; the m
  lowest-scoring buckets (m = n−f unless ``params["m"]``) are averaged weighted by their counts; the
  others are flagged ``"outlier"``.
* ``centered_clipping``: start at the coordinate-wise median v, then ``iters`` times
  v ← v + mean_i clip_τ(xᵢ − v); buckets still clipped in the last pass are flagged ``"outlier"``.

Step 3, the outlier screen (every rule, ``mean`` included): evidence for reputation only; it never
changes the update. Over the n ≥ 3 bucket means that passed the norm bound:

* "too large": ‖meanᵢ‖ > ``screen_norm_ratio`` · (lower median of the norms), i.e. compared with the
  ⌊(n−1)/2⌋-th smallest norm, which honest buckets decide as long as they are at least half. This
  catches a "scale" or "gaussian" attacker long after its update has shrunk below the norm bound
  (after round 1 honest updates are ~0.3 while C = 3).
* "shrunk or reversed", checked only when no bucket was too large and the round is coherent (the
  lower median of the cosines between each mean and the coordinate-wise median c is at least
  ``screen_coherence``, as while the model is still learning): projection meanᵢ·c/‖c‖ below
  ``screen_shrink_ratio`` times the upper median of the projections ("sign_flip", "free_ride", "ipm"
  while the honest updates still agree on a direction). Once the model has converged, honest updates are
  mostly noise, a flipped update looks exactly like an honest one, and nothing is flagged.

Screen flags are reported as kind ``"screen"``; the thresholds were calibrated on honest runs of the demo
federation (bench/robust_sim.py, bench/results/NOTES-robust.md). Pass ``params={"screen": False}`` to
switch the screen off.

f counts bad buckets. A bad facility sits in one bucket per round, so f bad facilities spoil at most f
buckets. The rule then runs on the n buckets left after the norm bound with
f_effective = min(f, the most the rule allows with n buckets). Since norm-flagged buckets are certainly
bad, f_effective ≥ f − norm_flagged, so a configuration accepted by ``check_rule`` stays safe.

Determinism: validators recompute the result bit-exactly. Everything is float64, rows are summed one by
one in index order (no BLAS, no order chosen by numpy's iterator), -0.0 is folded into +0.0 before any
sort, and ties are broken by bucket index. Pin the numpy version across the leader and validators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import numpy as np

# --- the rules -----------------------------------------------------------------------------------------


@dataclass
class _Kept:
    """The buckets a rule runs on (those that passed the norm bound), and the round's settings."""

    sums: np.ndarray  # (n, d) sums of the kept buckets
    counts: np.ndarray  # (n,) their member counts
    means: np.ndarray  # (n, d) sums / counts
    index: np.ndarray  # (n,) each kept bucket's index among all buckets
    f: int  # the f asked for
    f_eff: int  # the f the rule runs with (see the module docstring)
    n_buckets: int  # every bucket, flagged ones included
    params: dict[str, Any]
    clip_update: float | None


class Rule:
    """An aggregation rule: its name (HFL_RULE), how it is named in sentences, how many buckets it needs
    to tolerate f bad ones, which parameters it takes, and how it combines the kept bucket means.

    The default is a rule that needs B ≥ 2f + ``extra_buckets`` buckets; ``Mean`` tolerates none."""

    name: ClassVar[str]
    label: ClassVar[str]  # in sentences: "trimmed mean"
    phrase: ClassVar[str]  # with its article, in the sizing sentences: "the trimmed mean"
    params: ClassVar[frozenset[str]] = frozenset()  # besides the outlier screen's
    extra_buckets: ClassVar[int] = 1  # needs B ≥ 2f + extra_buckets
    tolerates_bad_buckets: ClassVar[bool] = True

    def max_faults(self, n_buckets: int) -> int:
        """Largest f accepted with ``n_buckets`` buckets (negative if none)."""
        return (n_buckets - self.extra_buckets) // 2

    def requirement(self) -> str:
        return f"B ≥ 2f+{self.extra_buckets}"

    def buckets_for(self, f: int) -> int:
        """Buckets needed to tolerate ``f`` bad ones (as ``check_rule`` states it)."""
        return 2 * f + self.extra_buckets

    def buckets_needed(self, max_byzantine: int) -> int | None:
        """Fewest buckets with which the rule tolerates ``max_byzantine`` bad buckets (None: no number)."""
        return self.buckets_for(max_byzantine)

    def default_f(self, n_buckets: int) -> int:
        """The f used when HFL_F is not set: the most the rule tolerates with ``n_buckets`` (0 if none)."""
        return max(0, self.max_faults(n_buckets))

    def f_effective(self, f: int, n_kept: int) -> int:
        """The f the rule runs with on the buckets left after the norm bound."""
        return min(f, self.default_f(n_kept))

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        """The update from the kept buckets, and the buckets (indices among all) it leaves out as
        outliers. May add rule-specific entries to ``details``."""
        raise NotImplementedError


class Mean(Rule):
    name = "mean"
    label = "mean"
    phrase = "the plain mean"
    tolerates_bad_buckets = False

    def max_faults(self, n_buckets: int) -> int:
        return n_buckets

    def requirement(self) -> str:
        return "no minimum"

    def buckets_needed(self, max_byzantine: int) -> int | None:
        return 1 if max_byzantine == 0 else None

    def default_f(self, n_buckets: int) -> int:
        return 0

    def f_effective(self, f: int, n_kept: int) -> int:
        return f

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        return _row_sum(k.sums) / float(k.counts.sum()), []


class TrimmedMean(Rule):
    name = "trimmed_mean"
    label = "trimmed mean"
    phrase = "the trimmed mean"

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        return _trimmed_mean(k.means, k.f_eff), []


class Median(Rule):
    name = "median"
    label = "coordinate-wise median"
    phrase = "the coordinate-wise median"

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        return _coord_median(k.means), []


class MultiKrum(Rule):
    name = "multi_krum"
    label = "multi-Krum"
    phrase = "multi-Krum"
    params = frozenset({"m"})
    extra_buckets = 3  # it needs three buckets even to tolerate none

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        scores, k_nb = _krum_scores(k.means, k.f_eff)
        m_req = int(k.params.get("m", k.n_buckets - int(k.f)))
        m_eff = max(1, min(m_req, k.index.size - k.f_eff))
        order = np.argsort(scores, kind="stable")  # ties → lower index first
        chosen = np.sort(order[:m_eff])
        update = _row_sum(k.sums[chosen]) / float(k.counts[chosen].sum())
        outliers = sorted(int(k.index[i]) for i in order[m_eff:])
        details.update(
            scores=[float(s) for s in scores],
            neighbours=k_nb,
            m=m_eff,
            selected=[int(k.index[i]) for i in chosen],
        )
        return update, outliers


class CenteredClipping(Rule):
    name = "centered_clipping"
    label = "centered clipping"
    phrase = "centered clipping"
    params = frozenset({"tau", "iters"})

    def combine(self, k: _Kept, details: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        means, n = k.means, k.index.size
        iters = int(k.params.get("iters", DEFAULT_CC_ITERS))
        v = _coord_median(means)
        if "tau" in k.params:
            tau = float(k.params["tau"])
        elif k.clip_update is not None:
            # A bucket mean that passed the bound has norm ≤ C, so two means differ by ≤ 2C; τ = C
            # halves the most one bucket can pull the centre per pass.
            tau = float(k.clip_update)
        else:
            tau = float(np.median(np.sqrt(_sq_norms(means - v))))
        clipped = np.zeros(n, dtype=bool)
        for _ in range(iters):
            dev = means - v
            dn = np.sqrt(_sq_norms(dev))
            clipped = dn > tau
            factor = np.ones(n)
            np.divide(tau, dn, out=factor, where=clipped)
            v = v + _row_sum(dev * factor[:, None]) / float(n)
        outliers: list[int] = []
        if tau > 0:
            outliers = sorted(int(k.index[i]) for i in np.flatnonzero(clipped))
        details.update(tau=tau, iters=iters)
        return v, outliers


REGISTRY: dict[str, Rule] = {
    r.name: r for r in (Mean(), TrimmedMean(), Median(), MultiKrum(), CenteredClipping())
}
"""Every aggregation rule by name, in the order they are listed to people."""

RuleName = Literal["mean", "trimmed_mean", "median", "multi_krum", "centered_clipping"]
"""The name of an aggregation rule: what HFL_RULE may say (hfl/rpc/settings.py)."""
RULES: tuple[str, ...] = get_args(RuleName)
DEFAULT_RULE = "trimmed_mean"
"""Trimmed mean with f = max_faults(rule, B) = ⌊(B−1)/2⌋ (f = 1 for the demo's 12 facilities in 4 buckets
of 3). Needs only B ≥ 2f+1 where multi-Krum needs 2f+3 (it cannot run with f = 1 on 4 buckets); keeps
more honest information than the median; cheap and simple to audit. In the demo scenario (2 Byzantine of
12) it stays within 1 point of the honest run for every attack (bench/results/NOTES-robust.md); the
outlier screen and reputation then remove the blunt attackers altogether."""


def resolve_f(setting: int | None, n_buckets: int, rule: str) -> int:
    """The f a federation uses: its setting (HFL_F), or ``default_f`` when it is not set (None, or the
    older -1)."""
    return setting if setting is not None and setting >= 0 else default_f(n_buckets, rule)


def default_f(n_buckets: int, rule: str = DEFAULT_RULE) -> int:
    """The f used when HFL_F is not set: the most the rule tolerates with ``n_buckets`` buckets (0 if none;
    always 0 for ``mean``, which tolerates no bad bucket)."""
    return get_rule(rule).default_f(n_buckets)


DEFAULT_CC_ITERS = 3
NORM_TOLERANCE = 1e-6
"""Relative slack on the norm bound so float rounding in an honest sum never trips it."""

DEFAULT_SCREEN_NORM_RATIO = 2.5
"""A bucket mean this many times longer than the lower median norm is flagged. In the calibration runs
(bench/results/NOTES-robust.md; not kept in a file) the largest honest ratio per round had median 1.26,
99th percentile 2.2; scale ×10 buckets: median 3.7."""
DEFAULT_SCREEN_SHRINK_RATIO = 0.5
"""In a coherent round, a projection below this share of the upper median projection is flagged
(a bucket with one sign flipper of three projects ≈ 1/3, a free rider ≈ 2/3)."""
DEFAULT_SCREEN_COHERENCE = 0.9
"""The shrink test runs only if the lower median cosine to the centre is at least this (calibration runs:
≈ 0.99 in round 1 of the demo, ≈ 0.4 once converged)."""
MIN_SCREEN_BUCKETS = 3
SCREEN_PARAMS = frozenset({"screen", "screen_norm_ratio", "screen_shrink_ratio", "screen_coherence"})


@dataclass(frozen=True)
class AggregateResult:
    """Global update, flagged bucket indices (sorted), and details (JSON-friendly values)."""

    update: np.ndarray
    flagged: tuple[int, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def flag_kinds(self) -> dict[int, str]:
        """Bucket index → ``"norm"`` (certainly bad), ``"screen"`` (failed the outlier screen: strong
        evidence) or ``"outlier"`` (left out by multi-Krum or centered clipping: weak evidence, as
        multi-Krum always leaves out B − m buckets)."""
        kinds = {int(i): "outlier" for i in self.details.get("outlier_flagged", [])}
        kinds.update({int(i): "screen" for i in self.details.get("screen_flagged", [])})
        kinds.update({int(i): "norm" for i in self.details.get("norm_flagged", [])})
        for i in self.flagged:
            kinds.setdefault(int(i), "norm")
        return kinds


def check_inputs(sums: np.ndarray, counts: np.ndarray) -> None:
    """Reject badly shaped inputs (shape (B, d) and (B,), B ≥ 1, every count ≥ 1)."""
    if sums.ndim != 2 or counts.ndim != 1 or sums.shape[0] != counts.shape[0]:
        raise ValueError(f"need sums (B, d) and counts (B,), got {sums.shape} and {counts.shape}")
    if sums.shape[0] == 0:
        raise ValueError("no bucket sums to aggregate")
    if sums.shape[1] == 0:
        raise ValueError("bucket sums have zero length (d = 0)")
    if not np.all(np.isfinite(counts)) or np.any(counts <= 0):
        raise ValueError("every bucket must have at least one member")
    if np.any(counts != np.floor(counts)):
        raise ValueError("bucket member counts must be whole numbers")


def get_rule(rule: str) -> Rule:
    """The rule called ``rule`` (ValueError naming the choices if there is none)."""
    try:
        return REGISTRY[rule]
    except (KeyError, TypeError):
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(RULES)}") from None


def max_faults(rule: str, n_buckets: int) -> int:
    """Largest f the rule accepts with ``n_buckets`` buckets (-1 if none)."""
    return get_rule(rule).max_faults(n_buckets)


def check_rule(rule: str, n_buckets: int, f: int, *, params: Mapping[str, Any] | None = None) -> None:
    """Refuse a configuration the rule cannot honour (raises ValueError with the reason)."""
    r = get_rule(rule)
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int | np.integer) or n_buckets < 1:
        raise ValueError(f"the number of buckets must be a whole number ≥ 1, got {n_buckets!r}")
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"the number of tolerated bad buckets f must be a whole number ≥ 0, got {f!r}")
    top = r.max_faults(int(n_buckets))
    if f > top:
        need = r.buckets_for(f)
        if top < 0:
            hint = f"{r.label} cannot run with {n_buckets} buckets"
        else:
            hint = f"with {n_buckets} buckets it tolerates at most f = {top}"
        raise ValueError(
            f"{r.label} needs {r.requirement()}: to tolerate f = {f} bad buckets it needs at "
            f"least {need} buckets, but there are {n_buckets} ({hint}); use smaller buckets (more of "
            "them) or a smaller f"
        )
    _check_params(r, int(n_buckets), int(f), params)


def _check_params(rule: Rule, n_buckets: int, f: int, params: Mapping[str, Any] | None) -> None:
    if not params:
        return
    allowed_params = rule.params | SCREEN_PARAMS
    unknown = sorted(set(params) - allowed_params)
    if unknown:
        allowed = ", ".join(sorted(allowed_params)) or "none"
        raise ValueError(f"{rule.label} does not take parameter(s) {unknown}; allowed: {allowed}")
    if "screen" in params and not isinstance(params["screen"], bool):
        raise ValueError(f"screen must be true or false, got {params['screen']!r}")
    for key, in_range, span in (
        ("screen_norm_ratio", lambda v: v > 1.0, "above 1"),
        ("screen_shrink_ratio", lambda v: 0.0 < v < 1.0, "in (0, 1)"),
        ("screen_coherence", lambda v: -1.0 < v <= 1.0, "in (-1, 1]"),
    ):
        if key in params:
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or not in_range(v):
                raise ValueError(f"{key} must be a number {span}, got {v!r}")
    if "m" in params:
        m = params["m"]
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= n_buckets - f:
            raise ValueError(
                f"multi-Krum m (how many buckets to average) must be a whole number from 1 to B − f = "
                f"{n_buckets - f}, got {m!r}"
            )
    if "tau" in params:
        tau = params["tau"]
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not np.isfinite(tau) or tau <= 0:
            raise ValueError(f"centered clipping radius tau must be a positive number, got {tau!r}")
    if "iters" in params:
        it = params["iters"]
        if isinstance(it, bool) or not isinstance(it, int | np.integer) or not 1 <= it <= 1000:
            raise ValueError(f"centered clipping iters must be a whole number from 1 to 1000, got {it!r}")


def guarantee(rule: str, n_buckets: int, f: int) -> str:
    """One plain sentence on what this configuration tolerates (raises ValueError if it is refused)."""
    check_rule(rule, n_buckets, f)
    r = get_rule(rule)
    name = r.label
    bad = f"{f} bad bucket{'s' if f != 1 else ''}"
    if not r.tolerates_bad_buckets:
        return (
            f"mean over {n_buckets} buckets tolerates no bad bucket beyond the norm bound: a bad bucket "
            "that stays inside the bound (‖sum‖ ≤ count·C) still shifts the result"
        )
    top = r.max_faults(n_buckets)
    return (
        f"tolerates {bad} of {n_buckets} ({name} needs {r.requirement()}; at most f = {top} with "
        f"{n_buckets} buckets), i.e. up to {f} misbehaving facilit{'ies' if f != 1 else 'y'} per round"
        "; buckets that break the norm bound are removed before the rule runs, and an outlier screen "
        "flags buckets whose update is far longer than the others (or, while the model is still learning, "
        "far shorter or reversed) so that reputation can quarantine the facilities behind them"
    )


def policy_violation(
    rule: str,
    rule_params: Mapping[str, Any],
    n_buckets: int,
    *,
    expected_rule: str,
    expected_f: int | None = None,
    defences: bool = True,
) -> str | None:
    """Why a proposed aggregation breaks the federation's policy, in plain words, or None if it does not.

    Validators call this before recomputing a proposal, so a leader cannot quietly weaken the
    aggregation: it must use the configured rule (HFL_RULE) and f (HFL_F; None means ``default_f``), and,
    unless the federation runs without defences (HFL_DEFENCES=false, comparison runs only), keep the
    norm bound and the outlier screen on. The value of C itself is not checked here.
    """
    if rule != expected_rule:
        return f"the proposal aggregates with {rule!r} but this federation uses {expected_rule!r} (HFL_RULE)"
    f = rule_params.get("f", 0)
    want_f = resolve_f(expected_f, n_buckets, rule)
    if f != want_f:
        return f"the proposal tolerates f = {f!r} bad buckets but this federation uses f = {want_f} (HFL_F)"
    if defences:
        if rule_params.get("clip_update") is None:
            return "the proposal switches the norm bound off"
        if rule_params.get("screen", True) is False:
            return "the proposal switches the outlier screen off"
    return None


# --- deterministic building blocks -------------------------------------------------------------------


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """Sum of rows, added one by one in index order (fixed order on every machine)."""
    acc = np.array(rows[0], dtype=np.float64, copy=True)
    for r in range(1, rows.shape[0]):
        acc += rows[r]
    return acc


def _sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norm of each row (numpy's add-reduce, no BLAS)."""
    return np.add.reduce(x * x, axis=1)


def _sorted_columns(means: np.ndarray) -> np.ndarray:
    # -0.0 + 0.0 == +0.0: equal values become identical bits, so the sort output cannot depend on the
    # sorting kernel numpy picks for this CPU.
    return np.sort(means + 0.0, axis=0)


def _coord_median(means: np.ndarray) -> np.ndarray:
    s = _sorted_columns(means)
    n = s.shape[0]
    if n % 2 == 1:
        return np.array(s[n // 2], copy=True)
    return (s[n // 2 - 1] + s[n // 2]) / 2.0


def _trimmed_mean(means: np.ndarray, f: int) -> np.ndarray:
    s = _sorted_columns(means)
    n = s.shape[0]
    return _row_sum(s[f : n - f]) / float(n - 2 * f)


def _krum_scores(means: np.ndarray, f: int) -> tuple[np.ndarray, int]:
    n = means.shape[0]
    if n == 1:
        return np.zeros(1), 0
    k = max(1, min(n - 1, n - f - 2))
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = means[i] - means[j]
            dist[i, j] = dist[j, i] = np.add.reduce(diff * diff)
    scores = np.empty(n)
    for i in range(n):
        others = np.sort(np.delete(dist[i], i))[:k]
        total = 0.0
        for v in others:
            total += float(v)
        scores[i] = total
    return scores, k


def _lower_median(values: np.ndarray) -> float:
    s = np.sort(values + 0.0)
    return float(s[(s.size - 1) // 2])


def _upper_median(values: np.ndarray) -> float:
    s = np.sort(values + 0.0)
    return float(s[s.size // 2])


def screen(means: np.ndarray, params: Mapping[str, Any] | None = None) -> tuple[list[int], dict[str, Any]]:
    """The outlier screen over bucket means (rows). Returns (flagged row indices, JSON-friendly details).

    Deterministic (fixed-order float64 arithmetic, ties cannot matter: every test is a strict
    comparison against an order statistic). Needs at least ``MIN_SCREEN_BUCKETS`` rows, else flags none.
    See the module docstring for the tests.
    """
    p = dict(params or {})
    means = np.ascontiguousarray(means, dtype=np.float64)
    n = means.shape[0]
    info: dict[str, Any] = {"screen_test": "none"}
    if not p.get("screen", True) or n < MIN_SCREEN_BUCKETS or not np.all(np.isfinite(means)):
        return [], info
    norm_ratio = float(p.get("screen_norm_ratio", DEFAULT_SCREEN_NORM_RATIO))
    shrink_ratio = float(p.get("screen_shrink_ratio", DEFAULT_SCREEN_SHRINK_RATIO))
    coherence = float(p.get("screen_coherence", DEFAULT_SCREEN_COHERENCE))

    norms = np.sqrt(_sq_norms(means))
    ref = _lower_median(norms)
    info["screen_norm_ref"] = ref
    if ref > 0.0:
        ratios = norms / ref
        info["screen_norm_ratios"] = [float(r) for r in ratios]
        large = [int(i) for i in np.flatnonzero(ratios > norm_ratio)]
        if large:
            info["screen_test"] = "too_large"
            return large, info

    centre = _coord_median(means)
    c_norm = float(np.sqrt(np.add.reduce(centre * centre)))
    if c_norm == 0.0:
        return [], info
    direction = centre / c_norm
    proj = np.add.reduce(means * direction[None, :], axis=1)
    cos = np.zeros(n)
    np.divide(proj, norms, out=cos, where=norms > 0)
    coh = _lower_median(cos)
    info["screen_coherence"] = coh
    if coh < coherence:
        return [], info
    top = _upper_median(proj)
    info["screen_projections"] = [float(x) for x in proj]
    if top <= 0.0:
        return [], info
    info["screen_test"] = "shrunk"
    return [int(i) for i in np.flatnonzero(proj < shrink_ratio * top)], info


# --- the entry point ---------------------------------------------------------------------------------


def aggregate(
    rule: str,
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    f: int = 0,
    clip_update: float | None = None,
    params: dict[str, Any] | None = None,
) -> AggregateResult:
    """Apply ``rule`` to bucket sums. ``clip_update`` (C) enables the norm bound ‖sum‖ ≤ count·C.

    Raises ValueError for bad shapes, an unknown rule, or too few buckets for f (see ``check_rule``).
    If every bucket is excluded by the norm bound the update is all zeros.
    """
    # C order so numpy's reductions see the same memory layout on every node.
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    counts = np.ascontiguousarray(counts, dtype=np.float64)
    check_inputs(sums, counts)
    n_buckets = sums.shape[0]
    check_rule(rule, n_buckets, f, params=params)
    if clip_update is not None and (not np.isfinite(clip_update) or clip_update <= 0):
        raise ValueError(f"clip_update (C) must be a positive number, got {clip_update!r}")
    params = dict(params or {})

    bad = ~np.all(np.isfinite(sums), axis=1)
    if clip_update is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(_sq_norms(np.where(bad[:, None], 0.0, sums)))
        bad |= ~np.isfinite(norms) | (norms > counts * float(clip_update) * (1 + NORM_TOLERANCE))
    norm_flagged = [int(i) for i in np.flatnonzero(bad)]
    kept = np.flatnonzero(~bad)
    r = get_rule(rule)
    f_eff = r.f_effective(int(f), int(kept.size))
    details: dict[str, Any] = {
        "rule": rule,
        "f": int(f),
        "f_effective": f_eff,
        "norm_flagged": norm_flagged,
        "outlier_flagged": [],
        "screen_flagged": [],
        "kept": [int(i) for i in kept],
    }
    if kept.size == 0:
        return AggregateResult(np.zeros(sums.shape[1]), tuple(norm_flagged), details)

    k_sums = sums[kept]
    k_counts = counts[kept]
    means = k_sums / k_counts[:, None]
    update, outliers = r.combine(
        _Kept(k_sums, k_counts, means, kept, int(f), f_eff, n_buckets, params, clip_update), details
    )

    screened, screen_info = screen(means, params)
    screen_flagged = sorted(int(kept[i]) for i in screened)
    details.update(screen_info)
    details["screen_flagged"] = screen_flagged
    details["outlier_flagged"] = outliers
    flagged = tuple(sorted(set(norm_flagged) | set(outliers) | set(screen_flagged)))
    return AggregateResult(np.asarray(update, dtype=np.float64), flagged, details)
