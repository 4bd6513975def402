"""Naming offenders from the norm flags (hfl.robust.reputation.implied_offenders), measured in memory.

Two questions, each over seeded runs of group testing as the authority sees it (facilities re-drawn into
buckets of 3 every round, the remainder resting in the 10 rounds after a flag that no quarantine explains,
as the authority draws them; 30 rounds; HFL_MAX_BYZANTINE unset so m = one facility in six):

* ``speed``: offenders whose buckets are norm-flagged whenever they attack (as `scale`, `gaussian` and
  `nan` are), every other bucket falsely flagged by the screen in 0.5 % of rounds: how soon all of them
  are quarantined, and how often an honest facility is, with the default (the sequential test and
  naming) and with the sequential test alone (``name_offenders=False``).
* ``more_than_declared``: more offenders than m (m + 1 and m + 2), attacking every round or at random in
  half of them, naming alone: how often it names an honest facility. Within the declared m it never can
  (the property test in tests/unit/test_robust_reputation.py); beyond it nothing is promised, and this
  shows how the margin (MIN_IMPLIED_GROUPS) holds up.

    nice -n 19 .venv/bin/python bench/named_offenders.py --runs 500    # under a minute on 2 cores

Writes bench/results/named_offenders.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.robust.reputation import (  # noqa: E402
    MIN_IMPLIED_GROUPS,
    default_max_byzantine,
    implied_offenders,
    last_unexplained,
    simulate,
)
from hfl.schedule import cut_buckets, equal_buckets_now  # noqa: E402

OUT = ROOT / "bench" / "results" / "named_offenders.json"
SIZES = (12, 24, 48)
ROUNDS = 30


def ids(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [f"f{i:0{width}d}" for i in range(n)]


def speed(n: int, runs: int, name: bool) -> dict[str, Any]:
    m = default_max_byzantine(n)
    bad = set(ids(n)[:m])
    last, honest = [], 0
    for seed in range(runs):
        caught = simulate(
            n_facilities=n,
            n_byzantine=m,
            rounds=ROUNDS,
            seed=seed,
            honest_flag_prob=0.005,
            name_offenders=name,
        )
        honest += bool(set(caught) - bad)
        if bad <= set(caught):
            last.append(max(caught[b] + 1 for b in bad))  # rounds counted from 1
    return {
        "runs": runs,
        "runs_with_an_honest_facility_quarantined": honest,
        "runs_with_every_offender_quarantined": len(last),
        "every_offender_by_round_10": sum(1 for r in last if r <= 10),
        "median_round_of_the_last_offender": statistics.median(last) if last else None,
    }


def excess(n: int, offenders: int, attack_prob: float, runs: int) -> dict[str, Any]:
    """Naming alone (no sequential test) with more offenders than declared: runs in which an honest
    facility was named within ROUNDS rounds (named facilities sit out later rounds)."""
    m = default_max_byzantine(n)
    everyone = ids(n)
    bad = set(everyone[:offenders])
    wrong = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        groups: list[list[str]] = []
        named: set[str] = set()
        flags: list[tuple[int, list[str]]] = []  # (round, members) of flagged buckets
        for rnd in range(ROUNDS):
            active = [x for x in everyone if x not in named]
            order = [active[i] for i in rng.permutation(len(active))]
            attacking = {x for x in sorted(bad) if rng.random() < attack_prob}
            # as the authority draws them: after a flag whose bucket holds nobody named (quarantined)
            equal = equal_buckets_now(True, rnd, last_unexplained(flags, named))
            for members in cut_buckets(order, 3, equal=equal):
                if attacking.intersection(members):
                    groups.append(members)
                    flags.append((rnd, members))
            named.update(implied_offenders(groups, m))
        wrong += bool(named - bad)
    return {
        "declared": m,
        "offenders": offenders,
        "attack_prob": attack_prob,
        "runs": runs,
        "runs_naming_an_honest_facility": wrong,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.monotonic()
    out: dict[str, Any] = {
        "what": __doc__.split("\n\n")[0],
        "min_implied_groups": MIN_IMPLIED_GROUPS,
        "buckets": "of 3; the remainder rests in the 10 rounds after an unexplained flag (as the authority)",
        "rounds": ROUNDS,
        "speed": {},
        "more_than_declared": [],
    }
    for n in SIZES:
        for name in (True, False):
            row = speed(n, args.runs, name)
            out["speed"][f"{n}/{'default' if name else 'sequential_test_alone'}"] = row
            print(n, "default" if name else "sequential test alone", row, flush=True)
    for n in SIZES:
        m = default_max_byzantine(n)
        for offenders in (m + 1, m + 2):
            for p in (1.0, 0.5):
                row = excess(n, offenders, p, args.runs // 2)
                out["more_than_declared"].append({"facilities": n, **row})
                print(n, row, flush=True)
    out["seconds"] = round(time.monotonic() - t0, 1)  # outcome counts; the time is only a guide
    out["load_average_before_after"] = [load_before, round(os.getloadavg()[0], 2)]
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
