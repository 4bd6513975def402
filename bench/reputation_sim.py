"""False positives and time to quarantine of the quarantine test alone (hfl.robust.reputation.simulate).

Group testing as the authority sees it: N facilities re-drawn into buckets of 3 every round, m offenders
(12/2, 24/4, 48/8), 30 rounds, quarantined facilities left out. An offender's bucket is flagged in every
round it attacks (probability 1.0 with a norm flag, as for scale, gaussian and nan under the adaptive norm
bound; 0.85 with a screen flag, as the outlier screen manages for a `scale` attacker on the converged
logistic regression; or 0.4, an offender the adaptive norm bound lets through most of the time), and any
other bucket is flagged `screen` with probability 0.005 (the screen's
calibration: 0 of 400 honest buckets flagged; 0.5 % is the rate the test assumes). The test is the one the
authority builds (hfl.robust.reputation.federation_test: HFL_MAX_BYZANTINE unset, so one offender per
two buckets; 1 % over 100 rounds), plus a laxer one (5 % over 30 rounds) to show the trade-off. Writes
bench/results/reputation_sim.json (the former fixed-threshold rows are kept under "fixed_threshold", those
of the first SPRT, which counted rounds without a flag, under "unconditional_sprt").

    nice -n 19 .venv/bin/python bench/reputation_sim.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.robust.reputation import QuarantineTest, federation_test, simulate  # noqa: E402

SIZES = ((12, 2), (24, 4), (48, 8))
FLAGS = ((1.0, "norm"), (0.85, "screen"), (0.4, "screen"))
HONEST_FLAG = 0.005
BUCKET = 3


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def row(test: QuarantineTest, n: int, m: int, p: float, flag: str, runs: int, rounds: int) -> dict[str, Any]:
    width = max(2, len(str(n - 1)))
    bad = {f"f{i:0{width}d}" for i in range(m)}
    all_by: list[int] = []  # round (from 1) by which every offender was quarantined
    missed = false_runs = false_facilities = by10 = 0
    first5 = {"all_offenders_by_round_10": 0, "runs_with_an_honest_facility_quarantined": 0}
    for seed in range(runs):
        caught = simulate(
            n_facilities=n,
            bucket_size=BUCKET,
            n_byzantine=m,
            rounds=rounds,
            seed=seed,
            attack_prob=p,
            flag=flag,
            honest_flag_prob=HONEST_FLAG,
            test=test,
            equal=False,  # buckets growing to take the remainder, as when the results file was made
        )
        honest = [f for f in caught if f not in bad]
        false_runs += bool(honest)
        false_facilities += len(honest)
        done = bad <= set(caught)
        if done:
            last = max(caught[f] for f in bad) + 1
            all_by.append(last)
            by10 += last <= 10
        else:
            missed += 1
        if seed < 5:
            first5["all_offenders_by_round_10"] += done and max(caught[f] for f in bad) + 1 <= 10
            first5["runs_with_an_honest_facility_quarantined"] += bool(honest)
    return {
        "facilities": n,
        "offenders": m,
        "flag_probability": p,
        "flag": flag,
        "honest_bucket_flag_probability": HONEST_FLAG,
        "runs": runs,
        "rounds": rounds,
        "all_offenders_by_round_10_pct": round(100 * by10 / runs, 2),
        "all_offenders_caught_median_round": float(np.median(all_by)) if all_by else None,
        "all_offenders_caught_p95_round": float(np.percentile(all_by, 95)) if all_by else None,
        "runs_missing_an_offender_pct": round(100 * missed / runs, 2),
        "runs_quarantining_an_honest_facility": false_runs,
        "runs_quarantining_an_honest_facility_pct": round(100 * false_runs / runs, 3),
        "honest_facilities_quarantined": false_facilities,
        "seeds_0_to_4": first5,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reputation_sim.json"))
    args = ap.parse_args()
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    started, load_before = time.time(), _loadavg()
    tests, rows = [], []
    for label, alpha, horizon in (("default", 0.01, 100), ("lax", 0.05, 30)):
        for n, m in SIZES:
            test = federation_test(n, BUCKET, alpha=alpha, horizon=horizon)
            assert test.max_byzantine == m
            lower, upper = test.bounds
            r_lower, r_upper = test.refusal_bounds
            info = {
                "setting": label,
                **test.to_dict(),
                "p0": round(test.p0, 6),
                "per_facility_alpha": test.per_facility_alpha,
                "lower_bound_B": round(lower, 4),
                "upper_bound_A": round(upper, 4),
                "refusal_bounds_B_A": [round(r_lower, 4), round(r_upper, 4)],
                "steps_flagged_clean_one_flagged_bucket": [round(x, 4) for x in test.steps(n, [BUCKET])],
                "steps_flagged_clean_two_flagged_buckets": [round(x, 4) for x in test.steps(n, [BUCKET] * 2)],
                "rounds_to_quarantine_alone_in_the_only_flagged_bucket": test.rounds_to_quarantine(),
                f"stated_false_positive_bound_{args.rounds}_rounds": test.false_positive_bound(args.rounds),
                f"stated_false_positive_bound_{horizon}_rounds": test.false_positive_bound(),
            }
            tests.append(info)
            print(json.dumps(info), flush=True)
            for p, flag in FLAGS:
                r = {"setting": label, **row(test, n, m, p, flag, args.runs, args.rounds)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    result = {
        "scenario": [line for line in (__doc__ or "").splitlines()[2:11]],
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "seconds": round(time.time() - started, 1),
        "tests": tests,
        "rows": rows,
        "fixed_threshold": previous.get("fixed_threshold")
        or {k: previous[k] for k in ("scenario", "rows") if k in previous},
        "unconditional_sprt": previous.get("unconditional_sprt")
        or {k: previous[k] for k in ("load_average_before", "tests", "rows") if k in previous},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
