"""Sweep `hfl bench federation` over N in {8, 32, 64, 128, 200}, D in {1e4, 1e6}, hierarchy vs --flat
(F = N/16 rounded up, buckets of 8), and fit the slope of round time against N.

    .venv/bin/python bench/federation_sweep.py [--sizes 8,32] [--dims 1e4] [--out FILE] [--resume]

Results are written after every run (a sweep can be stopped and resumed with --resume). Times are
measured on one machine whose cores every process shares (and, during development, other jobs too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line y = a + b x, and the exponent of a power law y ~ x^k (log-log fit)."""
    import numpy as np

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    k = float(np.polyfit(np.log(x), np.log(np.maximum(y, 1e-9)), 1)[0]) if len(x) > 1 else float("nan")
    return {
        "intercept_s": round(float(a), 4),
        "slope_s_per_facility": round(float(b), 5),
        "power_law_exponent": round(k, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="8,32,64,128,200")
    p.add_argument("--dims", default="1e4,1e6")
    p.add_argument("--modes", default="hier,flat")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per point (D >= 1e6: at least 2)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "federation.json"))
    p.add_argument("--resume", action="store_true", help="keep the points already in --out")
    args = p.parse_args()
    out = Path(args.out)
    doc = json.loads(out.read_text()) if args.resume and out.exists() else {"runs": []}
    done = {(r["facilities"], r["dim"], r["flat"]) for r in doc["runs"]}
    for dim in [int(float(d)) for d in args.dims.split(",")]:
        for n in [int(x) for x in args.sizes.split(",")]:
            for mode in args.modes.split(","):
                flat = mode == "flat"
                if (n, dim, flat) in done:
                    continue
                rounds = args.rounds if dim < 1_000_000 else min(args.rounds, 2)
                cmd = [
                    sys.executable,
                    "-m",
                    "hfl.cli",
                    "bench",
                    "federation",
                    "--facilities",
                    str(n),
                    "--dim",
                    str(dim),
                    "--rounds",
                    str(rounds),
                    "--json",
                ]
                cmd += ["--flat"] if flat else []
                print(f"N={n} D={dim} {mode} ...", flush=True)
                t = time.monotonic()
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode != 0:
                    print(f"  FAILED ({res.returncode}): {res.stderr[-1500:]}", flush=True)
                    continue
                r = json.loads(res.stdout)
                doc["runs"].append(r)
                print(
                    f"  round {r['round_s']:.2f}s  leader in {r['leader_bytes_in'] / 1e6:.2f} MB  "
                    f"busiest fog in {r['fog_bytes_in_max'] / 1e6:.2f} MB  per facility "
                    f"{r['bytes_per_facility'] / 1e6:.3f} MB  ({time.monotonic() - t:.0f}s)",
                    flush=True,
                )
                doc["fits"] = fits(doc["runs"])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(doc, indent=1, sort_keys=True))
    print(json.dumps(doc.get("fits", {}), indent=1))
    return 0


def fits(runs: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for dim in sorted({r["dim"] for r in runs}):
        for flat in (False, True):
            pts = sorted(
                (r["facilities"], r["round_s"]) for r in runs if r["dim"] == dim and r["flat"] == flat
            )
            if len(pts) >= 2:
                key = f"D={dim} {'flat' if flat else 'hierarchy'}"
                out[key] = fit([x for x, _ in pts], [y for _, y in pts])
    return out


if __name__ == "__main__":
    sys.exit(main())
