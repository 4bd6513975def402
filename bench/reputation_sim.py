"""False positives and time to quarantine of the reputation rule alone (hfl.robust.reputation.simulate).

Group testing in the demo scenario: 12 facilities re-drawn into buckets of 3 every round, 2 offenders,
10 rounds, quarantined facilities left out. An offender's bucket is flagged in every round it attacks
(probability 1.0, or 0.85 as the outlier screen manages for a `scale` attacker). Writes
bench/results/reputation_sim.json; about a second per 1000 runs.

    .venv/bin/python bench/reputation_sim.py --runs 1500
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.robust.reputation import simulate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reputation_sim.json"))
    args = ap.parse_args()
    rows = []
    for threshold, decay in ((6.0, 0.8), (8.0, 0.5)):
        for p in (1.0, 0.85):
            caught_by, missed, false_runs = [], 0, 0
            for seed in range(args.runs):
                q = simulate(rounds=args.rounds, seed=seed, attack_prob=p, threshold=threshold, decay=decay)
                bad = [r for f, r in q.items() if f in ("f00", "f01")]
                if len(bad) == 2:
                    caught_by.append(max(bad) + 1)  # rounds are counted from 1 in the federation
                else:
                    missed += 1
                false_runs += any(f not in ("f00", "f01") for f in q)
            row = {
                "threshold": threshold,
                "decay": decay,
                "flag_probability": p,
                "runs": args.runs,
                "both_caught_median_round": float(np.median(caught_by)) if caught_by else None,
                "both_caught_p95_round": float(np.percentile(caught_by, 95)) if caught_by else None,
                "runs_missing_an_offender_pct": round(100 * missed / args.runs, 2),
                "runs_quarantining_an_honest_facility_pct": round(100 * false_runs / args.runs, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(
        json.dumps({"scenario": __doc__.splitlines()[2:5], "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
