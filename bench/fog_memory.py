"""Issue 17: the fog's and the facilities' memory in a secure round, before and after a change (stop 29:
the inbound budget; stop 30: the answer written once, the fixed receive window, the allocator settings;
stop 31: one serialised model per round, secure sums sent to the leader as integers).

Runs `hfl bench secagg --json` (buckets of 8 unless the label says otherwise, mutual TLS, 3 measured
rounds) for each configuration below, alternating the tree before the change (a git worktree at
--before) with this tree, and writes every run's summary with the load average before and after it. Run
it on a quiet machine: nothing else running, the load below 1.

    .venv/bin/python bench/fog_memory.py --before-tree /work/wt/before --out bench/results/fog_memory.json

The figures a run reports come from the driver of the tree it runs (hfl/bench/secagg.py): to compare
like with like, copy this tree's driver into the worktree of the commit before (stop 30 did; at stop 31
the drivers differ only in reading the integer sums, so each tree ran its own).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent

# (label, arguments, trees): trees "both" alternates before/after; "after" runs this tree only
PLAN: list[tuple[str, list[str], str]] = [
    (
        "N50 secure only, buckets of 3",
        ["--facilities", "50", "--dim", "1e6", "--secure-only", "--bucket", "3"],
        "both",
    ),
    (
        "N32 secure only, buckets of 3",
        ["--facilities", "32", "--dim", "1e6", "--secure-only", "--bucket", "3"],
        "after",
    ),
    ("N50 secure only", ["--facilities", "50", "--dim", "1e6", "--secure-only"], "both"),
    ("N32 secure only", ["--facilities", "32", "--dim", "1e6", "--secure-only"], "both"),
    ("N50 both paths", ["--facilities", "50", "--dim", "1e6"], "both"),
    ("N32 both paths", ["--facilities", "32", "--dim", "1e6"], "after"),
    ("N16 secure only", ["--facilities", "16", "--dim", "1e6", "--secure-only"], "after"),
    ("N100 secure only", ["--facilities", "100", "--dim", "1e6", "--secure-only"], "after"),
    ("N16 d1e7 both paths", ["--facilities", "16", "--dim", "1e7", "--rounds", "2"], "after"),
]


WHAT = (
    "Issue 17, stop 29: the fog's memory in a secure round. hfl bench secagg, d as given, buckets of 8, "
    "mutual TLS, 3 measured rounds (2 at d=10^7), medians; fog_peak_*: the fog's VmHWM reset before each "
    "round, the largest over that path's measured rounds. 'before' is commit {before}, 'after' this tree "
    "(inbound budget, masked vectors read in place, frames of 256 KiB, two malloc arenas). Runs alternate "
    "and are back to back, so the load shown is the benchmarks' own."
)


def run(tree: Path, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "hfl.cli", "bench", "secagg", "--bucket", "8", "--json", *args]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before-tree", type=Path, required=True, help="a worktree of the commit before")
    p.add_argument("--before-commit", default="918f11b")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    p.add_argument("--both", action="store_true", help="run the 'before' tree for every label")
    p.add_argument(
        "--cool", type=float, default=0.0, help="before each run, wait until the 1-minute load is below this"
    )
    p.add_argument("--what", default=WHAT, help="the results file's description ({before}: the commit)")
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    for label, args, trees in PLAN:
        if a.only and label not in a.only:
            continue
        for k in range(a.repeats if trees == "both" or a.both else 1):
            for name, tree in (("before", a.before_tree), ("after", HERE)):
                if trees == "after" and name == "before" and not a.both:
                    continue
                while a.cool and os.getloadavg()[0] >= a.cool:
                    time.sleep(5)
                started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                r = run(tree, args)
                keep = [
                    *("secure_round_s", "plain_round_s", "ratio", "fog_peak_secure_mb", "fog_peak_plain_mb"),
                    *("peak_rss_mb", "peak_rss_facility_process_mb", "exact", "load_before", "load_after"),
                    *("facility_processes", "fog_start_mb", "facility_process_idle_mb"),
                    "facility_round_mb_per_hosted",
                ]
                row = {"label": label, "tree": name, "repeat": k, "started": started}
                row.update({key: r.get(key) for key in keep})
                rows.append(row)
                print(json.dumps(row), flush=True)
    a.out.write_text(
        json.dumps(
            {
                "what": a.what.format(before=a.before_commit),
                "runs": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
