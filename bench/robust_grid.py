"""Issue 13's done-when grid, in memory: every attack, 5 seeds, 12/24/48 facilities, both tasks.

For each task (``synthetic`` + logreg, the default; ``synthetic_hard`` + the 16-unit mlp, which keeps
learning for 20+ rounds) and each federation (12 facilities / 2 misbehaving, 24 / 4, 48 / 8; buckets of
3, the default; 30 rounds), it runs the honest federation and every attack of ``HFL_BYZANTINE`` with the
default defences, and again as plain federated averaging (``--rule mean --no-defences``), using the round
loop of bench/hard_task.py (the library code the services call; no gRPC, processes or masking: see there
for what it leaves out). Then it checks each clause of the done-when:

* ``within_2_points``: final accuracy (every facility's test set) within 2 points of the honest run with
  the same seed, per attack and seed;
* ``honest_quarantined``: honest facilities quarantined in any run (must be none);
* ``caught``: for each attack that costs plain averaging more than 2 points (median over seeds), the seeds
  in which every misbehaving facility was quarantined by round 10 (at least 4 of 5 asked).

Results go to bench/results/robust_grid.json after every run, and a run already there is not repeated
(so an interrupted grid resumes).

    .venv/bin/python bench/robust_grid.py                       # everything (about an hour on 2 cores)
    .venv/bin/python bench/robust_grid.py --sizes 12 --tasks synthetic --seeds 0 1
    .venv/bin/python bench/robust_grid.py --sizes 12 --bucket-size 4 --out bench/results/robust_grid_b4.json
    .venv/bin/python bench/robust_grid.py --out bench/results/robust_grid_equal.json   # today's defaults
    .venv/bin/python bench/robust_grid.py --tasks synthetic --sizes 12 --seeds $(seq 0 19) \
        --no-resting --out bench/results/robust_grid_no_resting_12x20.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hard_task import ATTACKS as ALL_ATTACKS  # noqa: E402
from hard_task import DEFENDED, PLAIN, Setup, run  # noqa: E402

# the model attacks (``stall`` is a dropout, measured in bench/stall.py)
ATTACKS = tuple(a for a in ALL_ATTACKS if a != "none")

TASKS = {"synthetic": "logreg", "synthetic_hard": "mlp"}
SIZES = {12: 2, 24: 4, 48: 8}
ROUNDS, BY_ROUND, POINTS = 30, 10, 0.02
OUT = ROOT / "bench" / "results" / "robust_grid.json"


BUCKET = 3  # the default bucket size; --bucket-size changes it (write those runs to another --out)


def key(task: str, n: int, attack: str, mode: str, seed: int) -> str:
    return f"{task}/{n}/{attack}/{mode}/{seed}"


def one(
    task: str, n: int, attack: str, mode: str, seed: int, bucket: int = BUCKET, resting: str = "after_a_flag"
) -> dict[str, Any]:
    setup = Setup(
        source=task, model=TASKS[task], facilities=n, byzantine=SIZES[n], bucket=bucket, resting=resting
    )
    t0 = time.monotonic()
    r = run(attack, mode, seed, rounds=ROUNDS, setup=setup)
    return {
        "accuracy": r["final_accuracy_all"],
        "quarantined_round": r["quarantined_round"],
        "attackers_quarantined": r["attackers_quarantined"],
        "honest_quarantined": r["honest_quarantined"],
        "attacker_flag_rounds": r["rounds_with_an_attacker_bucket_flagged"],
        "honest_buckets_flagged": r["honest_buckets_flagged"],
        "refused_rounds": r["refused_rounds"],
        "seconds": round(time.monotonic() - t0, 1),
    }


def verdict(runs: dict[str, Any], task: str, n: int, seeds: list[int]) -> dict[str, Any]:
    """The done-when clauses for one task and size, from the runs recorded so far."""

    def get(attack: str, mode: str, seed: int) -> dict[str, Any] | None:
        return runs.get(key(task, n, attack, mode, seed))

    out: dict[str, Any] = {"honest_quarantined": [], "attacks": {}}
    for k, r in runs.items():
        if k.startswith(f"{task}/{n}/") and r["honest_quarantined"]:
            out["honest_quarantined"].append({k: r["honest_quarantined"]})
    for attack in ATTACKS:
        harm, plain_harm, caught, seen = [], [], 0, 0
        for s in seeds:
            honest, d, p = get("none", DEFENDED, s), get(attack, DEFENDED, s), get(attack, PLAIN, s)
            if honest is None or d is None or p is None:
                continue
            seen += 1
            harm.append(round(honest["accuracy"] - d["accuracy"], 4))
            plain_harm.append(round(honest["accuracy"] - p["accuracy"], 4))
            rounds = d["quarantined_round"]
            if len(d["attackers_quarantined"]) == SIZES[n] and all(
                rounds[a] <= BY_ROUND for a in d["attackers_quarantined"]
            ):
                caught += 1
        if not seen:
            continue
        costly = statistics.median(plain_harm) > POINTS
        out["attacks"][attack] = {
            "seeds": seen,
            "harm_defended": harm,
            "harm_plain": plain_harm,
            "within_2_points": sum(1 for h in harm if h <= POINTS),
            "costs_plain_more_than_2_points": costly,
            "all_attackers_quarantined_by_round_10": caught,
            "meets": all(h <= POINTS for h in harm) and (not costly or caught >= min(4, seen)),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--bucket-size", type=int, default=BUCKET, help="facilities per bucket (default 3)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--no-resting",
        action="store_true",
        help="buckets always take the remainder (as before stop 34), for comparison; write to another --out",
    )
    args = ap.parse_args()
    resting = "never" if args.no_resting else "after_a_flag"
    out = Path(args.out)
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    runs: dict[str, Any] = doc.get("runs", {})
    jobs = [
        (task, n, attack, mode, seed)
        for task in args.tasks
        for n in args.sizes
        for seed in args.seeds
        for attack in ("none", *ATTACKS)
        for mode in (DEFENDED, PLAIN)
    ]
    todo = [j for j in jobs if key(*j) not in runs]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already recorded; {len(todo)} to go", flush=True)
    for i, job in enumerate(todo, 1):
        runs[key(*job)] = one(*job, bucket=args.bucket_size, resting=resting)
        doc = {
            "what": __doc__.split("\n\n")[0] if __doc__ else "",
            "setup": {
                "rounds": ROUNDS,
                "bucket_size": args.bucket_size,
                "sizes": {n: SIZES[n] for n in args.sizes},
                "tasks": {t: TASKS[t] for t in args.tasks},
                "seeds": args.seeds,
                "resting": not args.no_resting,
                "by": BY_ROUND,
            },
            "verdict": {f"{t}/{n}": verdict(runs, t, n, args.seeds) for t in args.tasks for n in args.sizes},
            "runs": runs,
        }
        out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"[{i}/{len(todo)}] {key(*job)}: {runs[key(*job)]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
