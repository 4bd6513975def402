"""Accuracy against the privacy budget ε for the default federation, in memory.

Uses exactly the code a facility runs (hfl.privacy.federation.dp_local_update, the leader's calibration
plan_dp, and the "mean" aggregation rule the leader uses) on the same data the demo loads (8 facilities,
specialties hospital/clinic/research/emergency in turn, shard i/8, seed 0), without processes or gRPC.

    .venv/bin/python bench/dp_sweep.py                     # full table -> bench/results/dp_sweep.json
    .venv/bin/python bench/dp_sweep.py --datasets synthetic --mechanisms gaussian --epsilons 1 --repeats 1

Each DP cell is the mean over --repeats independent noise draws (the data and initial model are fixed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.domain import SPECIALTIES  # noqa: E402
from hfl.learning.data import Dataset, load_facility_data  # noqa: E402
from hfl.learning.models import evaluate, make_model  # noqa: E402
from hfl.learning.train import DEFAULT_CLIP_UPDATE, DEFAULT_TRAIN, clip_update, train_local  # noqa: E402
from hfl.privacy.federation import (  # noqa: E402
    DEFAULT_CLIP,
    DEFAULT_DP_LR,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_SAMPLING_RATE,
    DPPlan,
    dp_local_update,
    plan_dp,
)
from hfl.robust.rules import aggregate  # noqa: E402


def load(dataset: str, facilities: int, seed: int) -> tuple[list[Dataset], Dataset]:
    trains, tests = [], []
    for i in range(facilities):
        fd = load_facility_data(dataset, specialty=SPECIALTIES[i % 4], shard=(i, facilities), seed=seed)
        trains.append(fd.train)
        tests.append(fd.test)
    return trains, Dataset.concat(tests)


def run_federation(
    trains: list[Dataset],
    test: Dataset,
    *,
    rounds: int,
    model_kind: str,
    seed: int,
    plan: DPPlan | None,
    lr: float,
    max_update: float,
    rng: np.random.Generator,
) -> float:
    """FedAvg with the leader's mean rule; returns the final accuracy on the pooled test sets."""
    model = make_model(model_kind, trains[0].d, 16)
    w = model.init_params(seed)
    for _ in range(rounds):
        rows = []
        for data in trains:
            if plan is None:
                new = train_local(model, w, data, DEFAULT_TRAIN, rng)
                rows.append(clip_update(new - w, max_update))
            else:
                rows.append(dp_local_update(model, w, data, plan, lr=lr, max_update_norm=max_update, rng=rng))
        sums = np.stack(rows)
        w = w + aggregate("mean", sums, np.ones(len(rows)), clip_update=max_update).update
    return float(evaluate(model, w, test).accuracy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["synthetic", "breast_cancer"])
    p.add_argument("--mechanisms", nargs="+", default=["gaussian", "laplace"])
    p.add_argument("--epsilons", nargs="+", type=float, default=[0.5, 1, 2, 4, 8])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--facilities", type=int, default=8)
    p.add_argument("--model", default="logreg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clip", type=float, default=DEFAULT_CLIP)
    p.add_argument("--sampling-rate", type=float, default=DEFAULT_SAMPLING_RATE)
    p.add_argument("--local-epochs", type=float, default=DEFAULT_LOCAL_EPOCHS)
    p.add_argument("--lr", type=float, default=DEFAULT_DP_LR)
    p.add_argument("--clip-update", type=float, default=DEFAULT_CLIP_UPDATE)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "dp_sweep.json"))
    args = p.parse_args(argv)

    started = time.monotonic()
    table: list[dict[str, Any]] = []
    # The calibration depends on the mechanism and ε, not on the data: once for every dataset.
    plans, calib_s = {}, {}
    for mechanism in args.mechanisms:
        for eps in args.epsilons:
            t0 = time.monotonic()
            plans[mechanism, eps] = plan_dp(
                epsilon=eps,
                delta=args.delta,
                rounds=args.rounds,
                mechanism=mechanism,
                accountant="rdp" if mechanism == "gaussian" else "pld",
                clip=args.clip,
                sampling_rate=args.sampling_rate,
                local_epochs=args.local_epochs,
            )
            calib_s[mechanism, eps] = time.monotonic() - t0
    for dataset in args.datasets:
        trains, test = load(dataset, args.facilities, args.seed)
        base = run_federation(
            trains,
            test,
            rounds=args.rounds,
            model_kind=args.model,
            seed=args.seed,
            plan=None,
            lr=DEFAULT_TRAIN.lr,
            max_update=args.clip_update,
            rng=np.random.default_rng(args.seed),
        )
        print(f"{dataset}: non-private accuracy {base:.4f}", flush=True)
        table.append(
            {
                "dataset": dataset,
                "mechanism": "none",
                "epsilon": None,
                "accuracy": round(base, 4),
                "drop_points": 0.0,
            }
        )
        for mechanism in args.mechanisms:
            for eps in args.epsilons:
                t0 = time.monotonic() - calib_s[mechanism, eps]  # the row's time includes its calibration
                plan = plans[mechanism, eps]
                accs = [
                    run_federation(
                        trains,
                        test,
                        rounds=args.rounds,
                        model_kind=args.model,
                        seed=args.seed,
                        plan=plan,
                        lr=args.lr,
                        max_update=args.clip_update,
                        rng=np.random.default_rng([args.seed, r, 7]),
                    )
                    for r in range(args.repeats)
                ]
                acc = float(np.mean(accs))
                row = {
                    "dataset": dataset,
                    "mechanism": mechanism,
                    "accountant": plan.accountant,
                    "epsilon": eps,
                    "accuracy": round(acc, 4),
                    "accuracy_runs": [round(a, 4) for a in accs],
                    "drop_points": round(100 * (base - acc), 2),
                    "noise_multiplier": round(plan.noise_multiplier, 4),
                    "steps_per_round": plan.steps_per_round,
                    "training_epsilon": round(plan.epsilon_after_rounds(args.rounds), 4),
                    "release_epsilon": plan.release_epsilon,
                }
                table.append(row)
                print(
                    f"{dataset:13s} {mechanism:8s} ε={eps:<4g} σ={plan.noise_multiplier:7.3f} "
                    f"accuracy {acc:.4f} (drop {row['drop_points']:+.2f} points)  "
                    f"[{time.monotonic() - t0:.1f}s]",
                    flush=True,
                )
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "note": "in-memory FedAvg with the facility's DP code; machine shared with other jobs (2 cores)",
        "machine": platform.platform(),
        "wall_time_s": round(time.monotonic() - started, 1),
        "rows": table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_time_s']}s)")
    if not all(math.isfinite(r["accuracy"]) for r in table):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
