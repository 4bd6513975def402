"""How far the bucket draw alone moves a federation's final accuracy (issue 13's "within 2 points of the
honest run with the same seed").

The grid (bench/robust_grid.py) compares each attacked run with one honest run of the same seed. An
attacked run draws other buckets than the honest one (facilities rest, are quarantined, rounds are
retried), so part of any difference is which buckets were drawn, not the attack. Here every run is
repeated with 6 different bucket draws and nothing else changed (the same patients, initial model and
training randomness: ``hard_task.Setup.draws``): honest runs, to see the spread the draw alone gives, and
`scale` runs (both attackers quarantined within a few rounds), to see their harm against the mean of the
honest draws rather than against one of them.

In memory with bench/hard_task.py's round loop, default options, buckets of 3, 30 rounds, seeds 0-4.
Outcome counts, not timings.

    .venv/bin/python bench/draw_spread.py       # writes bench/results/draw_spread.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hard_task as ht  # noqa: E402

DRAWS = ["", "/a", "/b", "/c", "/d", "/e"]  # "" is the draw the grid's runs used
SEEDS, ROUNDS = range(5), 30
CASES = [  # (dataset, model, facilities, attack)
    ("synthetic_hard", "mlp", 12, "none"),
    ("synthetic_hard", "mlp", 12, "scale"),
    ("synthetic_hard", "mlp", 24, "none"),
    ("synthetic_hard", "mlp", 24, "scale"),
    ("synthetic", "logreg", 12, "none"),
    ("synthetic", "logreg", 24, "none"),
]


def points(x: float) -> float:
    return round(100 * x, 2)


def main() -> int:
    started, load = time.time(), [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, Any] = {}
    for source, model, n, attack in CASES:
        for seed in SEEDS:
            accs, last_q = [], []
            for draws in DRAWS:
                setup = ht.Setup(source=source, model=model, facilities=n, byzantine=n // 6, draws=draws)
                r = ht.run(attack, ht.DEFENDED, seed, rounds=ROUNDS, setup=setup)
                accs.append(r["final_accuracy_all"])
                last_q.append(max(r["quarantined_round"].values(), default=None))
            key = f"{source}/{n}/{attack}/{seed}"
            runs[key] = {"final_accuracy_all": accs, "last_quarantine_round": last_q}
            print(key, accs, flush=True)
    summary: dict[str, Any] = {}
    for source, _, n, attack in CASES:
        rows = []
        for seed in SEEDS:
            accs = runs[f"{source}/{n}/{attack}/{seed}"]["final_accuracy_all"]
            honest = runs[f"{source}/{n}/none/{seed}"]["final_accuracy_all"]
            mean_h = sum(honest) / len(honest)
            row: dict[str, Any] = {"seed": seed, "spread_points": points(max(accs) - min(accs))}
            if attack == "none":
                row["recorded_draw_minus_mean_points"] = points(accs[0] - mean_h)
            else:
                row["harm_against_the_recorded_honest_draw_points"] = points(honest[0] - accs[0])
                row["mean_harm_over_draws_points"] = points(mean_h - sum(accs) / len(accs))
                row["worst_harm_against_the_honest_mean_points"] = points(mean_h - min(accs))
            rows.append(row)
        summary[f"{source}/{n}/{attack}"] = rows
    doc = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "draws": DRAWS,
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - started),
        "summary": summary,
        "runs": runs,
    }
    (ROOT / "bench" / "results" / "draw_spread.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
