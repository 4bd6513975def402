"""The console with 200 facilities (issue 16): how long each view takes to refresh, and the memory of the
process that runs the console.

    .venv/bin/python bench/console.py            # -> bench/results/console.json

It starts `hfl demo --facilities 200 --keep-running` (real gRPC, mutual TLS, secure aggregation), waits
for the rounds, then runs the console's own script in a separate process with Streamlit's AppTest (the
same script, data layer and gRPC calls as `hfl console`): it signs in, opens every view several times and
reports each view's refresh time (median, slowest) and that process's peak resident memory. Run it on a
quiet machine; the load average is recorded next to the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "hfl" / "console" / "app.py"
PASSWORD = "bench console password"

# Runs in the child process: only the console script and Streamlit live there.
CHILD = r"""
import json, resource, statistics, sys, time
from streamlit.testing.v1 import AppTest

app, password, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
at = AppTest.from_file(app, default_timeout=120).run()
at.text_input[0].input(password)
at.button[0].click().run()
assert not at.exception, at.exception
views = list(at.sidebar.radio[0].options)
times = {v: [] for v in views}
for _ in range(repeats):
    for v in views:
        t = time.perf_counter()
        at.sidebar.radio[0].set_value(v).run()
        times[v].append(time.perf_counter() - t)
        assert not at.exception, (v, at.exception)
shown = {m.label: m.value for m in at.sidebar.radio[0].set_value("Training").run().metric}
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"views": times, "peak_rss_mb": round(rss_kb / 1024, 1), "training_metrics": shown}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--facilities", type=int, default=200)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument(
        "--settle", type=float, default=60.0, help="seconds to wait after the rounds (start-up load decays)"
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "console.json"))
    args = p.parse_args(argv)

    load_before = list(os.getloadavg())
    run = Path(tempfile.mkdtemp(prefix="hfl-console-bench-"))
    cmd = [
        sys.executable,
        "-m",
        "hfl.cli",
        "demo",
        "--facilities",
        str(args.facilities),
        "--rounds",
        str(args.rounds),
        "--keep-running",
        "--out",
        str(run),
    ]
    print("==", " ".join(cmd[2:]), flush=True)
    demo = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + args.timeout
        while not (run / "summary.json").exists():
            if demo.poll() is not None:
                raise SystemExit(f"the demo ended early (exit {demo.returncode}); logs in {run / 'logs'}")
            if time.monotonic() > deadline:
                raise SystemExit("the demo did not finish its rounds in time")
            time.sleep(2)
        summary = json.loads((run / "summary.json").read_text())
        print(
            f"== {summary['committed_rounds']} rounds committed; settling {args.settle:.0f} s ...", flush=True
        )
        time.sleep(args.settle)
        env = {**os.environ, "HFL_CONSOLE_RUN": str(run), "HFL_CONSOLE_PASSWORD": PASSWORD}
        load_console = list(os.getloadavg())
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(APP), PASSWORD, str(args.repeats)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        if child.returncode != 0:
            raise SystemExit(f"the console measurement failed:\n{child.stderr[-3000:]}")
        measured = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
    views: dict[str, Any] = {
        v: {
            "median_s": round(statistics.median(ts), 3),
            "slowest_s": round(max(ts), 3),
            "runs": [round(t, 3) for t in ts],
        }
        for v, ts in measured["views"].items()
    }
    result = {
        "facilities": args.facilities,
        "committed_rounds": summary["committed_rounds"],
        "repeats_per_view": args.repeats,
        "views": views,
        "slowest_view_median_s": max(v["median_s"] for v in views.values()),
        "console_peak_rss_mb": measured["peak_rss_mb"],
        "training_metrics_shown": measured["training_metrics"],
        "targets": {"view_refresh_s": 1.0, "console_rss_mb": 300},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average": {"before": load_before, "console": load_console, "after": list(os.getloadavg())},
        "how": "the console's own script under Streamlit's AppTest in a separate process, against a "
        "live `hfl demo --keep-running` (real gRPC, mutual TLS); the federation keeps running meanwhile",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("slowest_view_median_s", "console_peak_rss_mb")}))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
