"""Benchmark of the spine: `hfl demo` end to end on the two built-in datasets.

Writes bench/results/spine.json: final accuracy vs the centralised reference, wall time, and the median
round time and bytes per round, for synthetic (8 facilities) and breast_cancer (8 shards).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def run_demo(*args: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "hfl.cli", "demo", "--out", str(out), *args],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - t0
        summary = json.loads((out / "summary.json").read_text())
    rounds = [r for r in summary["rounds"] if r["committed"]]
    return {
        "args": list(args),
        "final_accuracy": summary["final_accuracy"],
        "centralized_accuracy": summary["centralized_accuracy"],
        "gap_points": round(100 * (summary["centralized_accuracy"] - summary["final_accuracy"]), 2),
        "committed_rounds": len(rounds),
        "wall_s": round(wall, 2),
        "median_round_s": round(statistics.median(r["duration_s"] for r in rounds), 3),
        "median_bytes_per_round": int(statistics.median(r["bytes_sent"] for r in rounds)),
    }


def main() -> dict[str, Any]:
    results = {
        "synthetic": run_demo(),
        "synthetic_no_secagg": run_demo("--no-secagg"),
        "breast_cancer": run_demo("--dataset", "breast_cancer"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "spine.json").write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(
            f"{name:22s} final {r['final_accuracy']:.3f}  reference {r['centralized_accuracy']:.3f}  "
            f"wall {r['wall_s']:6.1f}s  median round {r['median_round_s']:.2f}s"
        )
    return results


if __name__ == "__main__":
    main()
