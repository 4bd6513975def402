"""One facility that accepts every round and never answers (HFL_BYZANTINE=stall): what it costs a round.

Runs `hfl demo` three times on loopback (8 facilities in buckets of 4, secure aggregation, mutual TLS,
the demo's default 120 s round limit) and records every round's duration from summary.json:

* honest: no staller (the reference);
* window: one staller, the straggler window on (the default: 4 x the median answer, at least 2 s);
* no_window: one staller, the window switched off (HFL_STRAGGLER_FLOOR_S above the limit) and stalls not
  counted (HFL_ABSENT_ROUNDS=0), which is how the fog behaved before: it waited the whole stage limit,
  round after round.

    python bench/stall.py [--rounds 6] [--round-timeout 30]     -> bench/results/stall.json

Run it on a quiet machine: the load average is recorded next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def run(label: str, rounds: int, round_timeout: float, stall: bool, window: bool) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"hfl-stall-{label}-"))
    cmd = [sys.executable, "-m", "hfl.cli", "demo", "--rounds", str(rounds), "--out", str(out / "run")]
    cmd += ["--round-timeout", str(round_timeout)]
    if stall:
        cmd += ["--byzantine", "1:stall"]
    env = {**os.environ}
    if not window:  # the fog before: wait the whole stage limit, and a stall was never counted
        env["HFL_STRAGGLER_FLOOR_S"] = str(10 * round_timeout)
        env["HFL_ABSENT_ROUNDS"] = "0"
    print(f"== {label}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "run" / "summary.json").read_text())
    durations = [r["duration_s"] for r in summary["rounds"] if r["committed"]]
    logs = out / "run" / "logs" / "authority.log"
    left_out = "missed 3 rounds in a row" in logs.read_text()
    row = {
        "label": label,
        "staller": stall,
        "window": window,
        "round_durations_s": durations,
        "median_round_s": round(statistics.median(durations), 3),
        "max_round_s": max(durations),
        "committed_rounds": len(durations),
        "staller_left_out": left_out,
        "final_accuracy": summary["final_accuracy"],
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(f"   {json.dumps(row)}", flush=True)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--round-timeout", type=float, default=30.0)
    p.add_argument("--skip-no-window", action="store_true", help="skip the slow 'before' run")
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = [
        run("honest", args.rounds, args.round_timeout, stall=False, window=True),
        run("window", args.rounds, args.round_timeout, stall=True, window=True),
    ]
    if not args.skip_no_window:
        rows.append(run("no_window", args.rounds, args.round_timeout, stall=True, window=False))
    result = {
        "benchmark": "stall",
        "what": "per-round time with one facility that accepts rounds and never sends its masked input",
        "setup": {
            "facilities": 8,
            "bucket_size": 4,
            "secure_aggregation": True,
            "tls": True,
            "rounds": args.rounds,
            "round_timeout_s": args.round_timeout,
            "straggler_window": "4 x median answer time, at least 2 s (defaults)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stall.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'stall.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
