"""`make bench`: the quick benchmarks, each writing its numbers to bench/results/.

Quick settings (about 5 minutes on 2 cores). The full grids quoted in the closing notes come from:
  hfl bench secagg --facilities N --dim D --bucket 8 --json      (N in 8, 32, 64; D in 1e4, 1e5, 1e6)
  python bench/federation_sweep.py                                (N up to 200, D in 1e4, 1e6, --flat)
  python bench/dp_sweep.py                                        (accuracy vs epsilon)
  python bench/robust_sweep.py                                    (every attack, robust rule vs mean)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

QUICK = {
    "secagg_quick": ["bench", "secagg", "--facilities", "8", "--dim", "100000", "--bucket", "8", "--json"],
    "federation_quick": [
        "bench",
        "federation",
        "--facilities",
        "16",
        "--dim",
        "10000",
        "--rounds",
        "2",
        "--json",
    ],
}


def run_cli(name: str, args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "hfl.cli", *args], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"   {name}: {json.dumps(result)[:300]}")


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    failed = []
    steps = [("spine", None), *QUICK.items()]
    for name, args in steps:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            if args is None:
                from bench import spine

                spine.main()
            else:
                run_cli(name, args)
        except Exception as e:  # keep going: report every benchmark
            print(f"!! {name} failed: {e}")
            failed.append(name)
        print(f"   ({time.monotonic() - t0:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
