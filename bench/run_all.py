"""`make bench`: run every benchmark that exists and write bench/results/*.json.

Quick settings by default (a few minutes on 2 cores); each benchmark module documents its full grid.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHES = ["bench.spine", "bench.secagg_grid", "bench.federation_grid"]


def main() -> int:
    failed = []
    for name in BENCHES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            print(f"-- {name}: not present, skipped")
            continue
        print(f"== {name}")
        t0 = time.monotonic()
        try:
            module.main()
        except Exception as e:  # keep going: report every benchmark
            print(f"!! {name} failed: {e}")
            failed.append(name)
        print(f"   ({time.monotonic() - t0:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
