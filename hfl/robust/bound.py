"""The adaptive norm bound: round r's C follows what honest updates looked like in committed rounds.

Every honest facility clips its update to length C, and the leader leaves out a bucket whose sum is
longer than members·C (hfl/robust/rules.py). A fixed C has to be large enough for the first round,
when updates are longest; after that honest updates are several times shorter and a fixed C lets a bad
facility send far more than any honest one. Here, in the spirit of adaptive clipping (Andrew et al.,
"Differentially private learning with adaptive clipping", 2021), C follows the honest updates:

    C_r = clamp(BOUND_MULTIPLIER · median(the last WINDOW_ROUNDS per-round medians), floor, ceiling)

* Per bucket that the round accepted (not flagged), the estimate of a member's update length is
  ‖bucket sum‖ / √count. Not the bucket mean's length (‖sum‖ / count): the mean of n updates that point
  in unrelated directions (as honest updates do once the model has converged, or under differential
  privacy, where noise dominates) is only 1/√n as long as each of them, so "2 × median of bucket means"
  would shrink the bound round after round down to the floor for buckets of 5 or more. ‖sum‖ / √count
  equals the members' typical length when their directions are unrelated and overestimates it (a looser
  bound, never a tighter one) when they agree.
* Per round, the median of those estimates; a round where every bucket was flagged adds nothing.
* The ceiling is the configured C (HFL_CLIP_UPDATE); rounds with no history (the first, or the first
  after the adaptive bound was switched on) use it. The floor (FLOOR_FRACTION of the ceiling) stops a
  majority of free riders from squeezing honest updates to nothing.

Honest facilities clip to C_r before sending, so an honest bucket never breaks the bound and a ``norm``
flag stays certain evidence. If honest updates grow again, clipped updates of length C_r give estimates
of about C_r (unrelated directions) or more, so the next bound is about 2·C_r: it recovers within a round
or two, up to the ceiling.

Everything is derived from committed blocks only: each block records (``extra["norm_bound"]``) the ceiling
it was bounded by and the per-round medians of the last WINDOW_ROUNDS rounds, its own last. Round r's
bound is therefore a function of block r−1 alone, which validators hold (the previous block comes with
every proposal) and auditors recheck with ``hfl ledger verify``. Arithmetic is float64 in a fixed order,
so the leader, validators and auditors get the same number to the bit.

Sans-I/O: no ledger, gRPC or settings here; callers pass the previous block's ``extra`` and the round's
bucket sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BOUND_MULTIPLIER",
    "FLOOR_FRACTION",
    "RECORD_KEY",
    "WINDOW_ROUNDS",
    "bound_for",
    "bound_problem",
    "history_problem",
    "median",
    "member_norm_estimates",
    "next_norm_bound",
    "norm_floor",
    "recorded_history",
    "round_record",
]

BOUND_MULTIPLIER = 2.0
"""C_r is this many times the typical honest update length of recent rounds: room for the honest spread
(the largest honest bucket in a round is rarely more than 1.3× the median, bench/results/NOTES-robust.md)
and for updates that grow again, while a bad facility can send at most twice what an honest one does."""
WINDOW_ROUNDS = 5
"""How many recent rounds (that had accepted buckets) the median looks at."""
FLOOR_FRACTION = 0.05
"""The bound never goes below this share of the ceiling (0.15 with the default C = 3)."""
RECORD_KEY = "norm_bound"
"""Where a block's ``extra`` records the bound's history: {"ceiling": C, "medians": [...]}."""


def median(values: Sequence[float]) -> float:
    """The median (the mean of the two middle values for an even count), in a fixed order of operations."""
    s = sorted(float(v) for v in values)
    if not s:
        raise ValueError("the median of no values is undefined")
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def norm_floor(ceiling: float) -> float:
    return float(ceiling) * FLOOR_FRACTION


def _ceiling(ceiling: float) -> float:
    c = float(ceiling)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"the norm-bound ceiling must be a positive number, got {ceiling!r}")
    return c


def next_norm_bound(
    history: Sequence[float],
    *,
    ceiling: float,
    floor: float | None = None,
    multiplier: float = BOUND_MULTIPLIER,
    rounds: int = WINDOW_ROUNDS,
) -> float:
    """The norm bound C for the next round from ``history``: the per-round medians of committed rounds,
    oldest first. Only the last ``rounds`` entries count; no history gives ``ceiling``. The result is
    ``multiplier`` × their median, clamped to [``floor`` (default FLOOR_FRACTION · ceiling), ``ceiling``]."""
    top = _ceiling(ceiling)
    low = norm_floor(top) if floor is None else float(floor)
    if not 0 < low <= top:
        raise ValueError(f"the norm-bound floor must be in (0, ceiling = {top:g}], got {floor!r}")
    if rounds < 1:
        raise ValueError(f"the window must hold at least one round, got {rounds!r}")
    recent = [float(v) for v in history][-rounds:]
    if not recent:
        return top
    if not all(math.isfinite(v) and v >= 0 for v in recent):
        raise ValueError("recorded norms must be finite and not negative")
    return min(top, max(low, multiplier * median(recent)))


def member_norm_estimates(
    sums: np.ndarray, counts: Sequence[int] | np.ndarray, flagged: Iterable[int] = ()
) -> list[float]:
    """‖sum‖ / √count for every bucket not in ``flagged`` (and with finite values), in bucket order."""
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    counts = [int(c) for c in np.asarray(counts).reshape(-1)]
    if sums.ndim != 2 or sums.shape[0] != len(counts):
        raise ValueError(f"need sums (B, d) and B counts, got {sums.shape} and {len(counts)}")
    skip = {int(i) for i in flagged}
    out = []
    for i, n in enumerate(counts):
        if i in skip or n < 1:
            continue
        row = sums[i]
        with np.errstate(over="ignore", invalid="ignore"):
            sq = float(np.add.reduce(row * row))
        if math.isfinite(sq):
            out.append(math.sqrt(sq) / math.sqrt(n))
    return out


# ---------------------------------------------------------------- what a block records


def recorded_history(extra: Mapping[str, Any]) -> list[float]:
    """The per-round medians a block recorded (oldest first); [] if it recorded none (genesis, or a
    federation with a fixed bound). ValueError if the record is malformed."""
    record = extra.get(RECORD_KEY)
    if record is None:
        return []
    if not isinstance(record, Mapping) or not isinstance(record.get("medians"), list):
        raise ValueError("the recorded norm-bound history is malformed")
    values = record["medians"]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise ValueError("the recorded norm-bound history holds something other than numbers")
    if len(values) > WINDOW_ROUNDS or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            f"the recorded norm-bound history must hold at most {WINDOW_ROUNDS} finite, non-negative numbers"
        )
    return [float(v) for v in values]


def bound_for(prev_extra: Mapping[str, Any], ceiling: float) -> float:
    """Round r's bound from block r−1's ``extra`` (its recorded history) and the configured ceiling."""
    return next_norm_bound(recorded_history(prev_extra), ceiling=ceiling)


def round_record(
    prev_extra: Mapping[str, Any],
    sums: np.ndarray,
    counts: Sequence[int] | np.ndarray,
    flagged: Iterable[int],
    *,
    ceiling: float,
) -> dict[str, Any]:
    """What block r records: its ceiling and the history with this round's median appended (the last
    WINDOW_ROUNDS kept). A round whose buckets were all flagged leaves the history as it was."""
    history = recorded_history(prev_extra)
    estimates = member_norm_estimates(sums, counts, flagged)
    if estimates:
        history.append(median(estimates))
    return {"ceiling": _ceiling(ceiling), "medians": history[-WINDOW_ROUNDS:]}


def bound_problem(
    prev_extra: Mapping[str, Any],
    rule_params: Mapping[str, Any],
    extra: Mapping[str, Any],
    *,
    adaptive: bool,
    ceiling: float,
) -> str | None:
    """Why a proposal's norm bound is not the one the federation's policy and the committed history give,
    in plain words, or None. ``prev_extra`` is the previous (certified) block's, ``extra`` the proposal's.
    Only for federations with the defences on (a proposal without any bound is refused elsewhere)."""
    clip = rule_params.get("clip_update")
    if clip is None:
        return "the proposal switches the norm bound off"
    record = extra.get(RECORD_KEY)
    top = _ceiling(ceiling)
    if not adaptive:
        if record is not None:
            return "the proposal records an adaptive norm bound but this federation uses a fixed one"
        if clip != top:
            return f"the proposal's norm bound C = {clip:g} is not this federation's C = {top:g}"
        return None
    if not isinstance(record, Mapping):
        return "the proposal does not record its adaptive norm bound"
    if record.get("ceiling") != top:
        return (
            f"the proposal's norm bound ceiling {record.get('ceiling')!r} is not this federation's "
            f"C = {top:g}"
        )
    try:
        want = bound_for(prev_extra, top)
    except ValueError as e:
        return f"the previous block's norm-bound history cannot be read: {e}"
    if clip != want:
        return (
            f"the proposal's norm bound C = {clip:.6g} differs from C = {want:.6g}, which the committed "
            "history gives"
        )
    return None


def history_problem(
    prev_extra: Mapping[str, Any],
    extra: Mapping[str, Any],
    sums: np.ndarray,
    counts: Sequence[int] | np.ndarray,
    flagged: Iterable[int],
) -> str | None:
    """Why the norm-bound history a proposal records is not the previous one plus this round's median
    (from the bucket sums and the recomputed flags), or None. Call after ``bound_problem`` passed."""
    record = extra.get(RECORD_KEY)
    if not isinstance(record, Mapping):
        return "the proposal does not record its adaptive norm bound"
    try:
        want = round_record(prev_extra, sums, counts, flagged, ceiling=record.get("ceiling", 0.0))
    except ValueError as e:
        return f"the norm-bound history cannot be recomputed: {e}"
    if dict(record) != want:
        return "the proposal's norm-bound history differs from the one its bucket sums give"
    return None
