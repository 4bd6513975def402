"""What resting costs an honest federation: final accuracy when the facilities left over after buckets
of 3 never rest, rest only in the 10 rounds after a flag that no quarantine explains (the default:
hfl.schedule.equal_buckets_now), or rest in every round (the first version, not shipped).

Honest federations of 11, 20 and 22 facilities (2, 2 and 1 left over), both benchmark tasks (``synthetic``
+ logreg, ``synthetic_hard`` + the 16-unit mlp) and ``breast_cancer`` + logreg (few patients per site,
where the outlier screen flags an honest bucket now and then, so today's rule does rest), 30 rounds,
seeds 0-4, with the default defences, using bench/hard_task.py's round loop (the library code the
services call, in memory; the rule is its ``Setup.resting``). Writes bench/results/resting_cost.json.

    .venv/bin/python bench/resting_cost.py      # about 2 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hard_task import DEFENDED, Setup, run  # noqa: E402

OUT = ROOT / "bench" / "results" / "resting_cost.json"
SIZES = (11, 20, 22)
TASKS = {"synthetic": "logreg", "synthetic_hard": "mlp", "breast_cancer": "logreg"}
SEEDS = range(5)
ROUNDS = 30
MODES = ("never", "after_a_flag", "always")  # after_a_flag: the default


def main() -> int:
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.monotonic()
    runs: dict[str, Any] = {}
    for mode in MODES:
        for n in SIZES:
            for task, model in TASKS.items():
                for seed in SEEDS:
                    setup = Setup(source=task, model=model, facilities=n, byzantine=0, bucket=3, resting=mode)
                    r = run("none", DEFENDED, seed, rounds=ROUNDS, setup=setup)
                    runs[f"{mode}/{n}/{task}/{seed}"] = {
                        "accuracy": r["final_accuracy_all"],
                        "honest_quarantined": r["honest_quarantined"],
                        "rounds_with_a_flag": sum(1 for row in r["rounds"] if row["flagged"]),
                    }
                    print(mode, n, task, seed, runs[f"{mode}/{n}/{task}/{seed}"], flush=True)
    summary: dict[str, Any] = {}
    for n in SIZES:
        for task in TASKS:
            never = [runs[f"never/{n}/{task}/{s}"]["accuracy"] for s in SEEDS]
            row: dict[str, Any] = {}
            for mode in ("after_a_flag", "always"):
                acc = [runs[f"{mode}/{n}/{task}/{s}"]["accuracy"] for s in SEEDS]
                cost = [round(100 * (a - b), 2) for a, b in zip(never, acc, strict=True)]
                mean = round(statistics.mean(cost), 2)
                flags = [runs[f"{mode}/{n}/{task}/{s}"]["rounds_with_a_flag"] for s in SEEDS]
                row[mode] = {
                    "points_lost_per_seed": cost,
                    "mean_points_lost": mean,
                    "rounds_with_a_flag": flags,
                }
            summary[f"{n}/{task}"] = row
    doc = {
        "what": __doc__.split("\n\n")[0] if __doc__ else "",
        "rounds": ROUNDS,
        "summary": summary,
        "honest_quarantined": sorted(k for k, v in runs.items() if v["honest_quarantined"]),
        "seconds": round(time.monotonic() - t0, 1),  # accuracies; the time is only a guide
        "load_average_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "runs": runs,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
