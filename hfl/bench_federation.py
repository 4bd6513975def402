"""`hfl bench federation`: what a full round costs as the federation grows, over real gRPC on loopback.

Starts a whole federation (authority, committee of validators, leader, fogs, facilities packed several
per process) whose facilities send random updates of dimension D instead of training (HFL_BENCH_UPDATES),
runs a warm-up round plus K measured rounds, and reports medians: round time and its split by phase,
bytes the leader receives, bytes per facility, and peak memory per kind of process.

``--flat`` puts every facility under one fog, which is then the only aggregator below the leader: the
comparison point for the hierarchy (same buckets, same secure aggregation, same committee).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hfl.domain import RoundEvent
from hfl.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--facilities", type=int, default=8, help="number of facilities N (default 8)")
    p.add_argument("--fogs", type=int, default=0, help="number of fogs F (default: N/16 rounded up)")
    p.add_argument("--dim", type=float, default=1e4, help="model dimension D (default 1e4)")
    p.add_argument("--flat", action="store_true", help="one fog as the only aggregator (no fog tier)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds after one warm-up (default 3)")
    p.add_argument("--bucket-size", type=int, default=8, help="facilities per bucket (default 8)")
    p.add_argument("--validators", type=int, default=4, help="committee size 3f+1 (default 4)")
    p.add_argument(
        "--secagg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="secure aggregation (default on; --no-secagg: plain sums)",
    )
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mutual TLS with certificates from the authority, as in a federation (default on; --no-tls "
        "to see what it costs)",
    )
    p.add_argument(
        "--facilities-per-process",
        type=int,
        default=25,
        help="facilities sharing one OS process (default 25; 1 = one process each)",
    )
    p.add_argument("--round-timeout", type=float, default=600.0, help="seconds a fog waits for facilities")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes to stderr)")
    p.add_argument("--out", help="keep the run folder here (default: a temporary folder, removed after)")


def check(args: argparse.Namespace) -> tuple[int, int, int]:
    from hfl.demo import check_topology

    n, dim = args.facilities, args.dim
    if n < 1 or args.rounds < 1 or args.bucket_size < 1 or args.facilities_per_process < 1:
        raise ConfigError("--facilities, --rounds, --bucket-size and --facilities-per-process must be >= 1")
    if not math.isfinite(dim) or dim != int(dim) or not 2 <= dim <= 20_000_000:
        raise ConfigError("--dim must be a whole number between 2 and 20000000")
    check_topology(args.validators, min(n, args.bucket_size), args.secagg)
    fogs = 1 if args.flat else (args.fogs or math.ceil(n / 16))
    if fogs < 1:
        raise ConfigError("--fogs must be at least 1")
    return n, fogs, int(dim)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hfl.bench.secagg import peak_rss_mb
    from hfl.demo import (
        Federation,
        enrol_burst_env,
        hosting_record,
        start_facilities,
        watch,
    )

    n, fogs, dim = check(args)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hfl-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    total_rounds = args.rounds + 1
    per_process = args.facilities_per_process  # what was asked, also below the demo's packing threshold
    common = {
        "HFL_SEED": "0",
        "HFL_DATASET": "synthetic",
        "HFL_N_PATIENTS": "40",
        "HFL_LOG_LEVEL": "WARNING",
        "HFL_MODEL": "logreg",
        "HFL_SECAGG": "true" if args.secagg else "false",  # facilities refuse plain rounds otherwise
        "HFL_TLS": "true" if args.tls else "false",
    }
    fed = Federation(out, common)
    buckets = max(1, n // args.bucket_size)
    say(
        f"hfl bench federation: {n} facilities, {fogs} fog{'s' if fogs > 1 else ''}"
        f"{' (flat: one aggregator)' if args.flat else ''}, {buckets} buckets of ~{args.bucket_size}, "
        f"D={dim}, secure aggregation {'on' if args.secagg else 'off'}, "
        f"{'mutual TLS' if args.tls else 'no TLS'}, committee of {args.validators}, "
        f"1 warm-up + {args.rounds} measured rounds; facilities {per_process} per process"
    )
    started = time.monotonic()
    events: list[RoundEvent] = []
    try:
        auth = fed.start(
            "authority",
            "authority",
            {
                "HFL_COMMITTEE_SIZE": str(args.validators),
                "HFL_BUCKET_SIZE": str(args.bucket_size),
                "HFL_MIN_FACILITIES": str(n),
                # no facility misbehaves here, and buckets of 8 (for speed) are too few to single out the
                # one in six a federation is otherwise assumed to have: say so, or the authority refuses
                "HFL_MAX_BYZANTINE": "0",
                **enrol_burst_env(n + fogs + args.validators),
            },
        )
        fed.wait_ready([auth], label="authority")
        common["HFL_AUTHORITY"] = auth.info["address"]
        workers = [fed.start("validator", f"validator-{i + 1}") for i in range(args.validators)]
        workers += [fed.start("fog", f"fog-{i + 1}") for i in range(fogs)]
        members = [
            (f"facility-{i + 1:03d}", {"HFL_SHARD": f"{i}/{n}", "HFL_BENCH_UPDATES": "true"})
            for i in range(n)
        ]
        workers += start_facilities(fed, members, per_process)
        fed.wait_ready(workers, timeout=600, label="services")
        leader = fed.start(
            "leader",
            "leader",
            {
                "HFL_ROUNDS": str(total_rounds),
                "HFL_N_FEATURES": str(dim - 1),
                "HFL_SECAGG": "true" if args.secagg else "false",
                "HFL_ROUND_TIMEOUT": str(args.round_timeout),
                "HFL_VOTE_TIMEOUT": str(args.round_timeout),
            },
        )
        fed.wait_ready([leader], timeout=600, label="leader")
        say(f"federation up in {time.monotonic() - started:.1f}s; running rounds ...")

        def show(e: RoundEvent, _committed: int) -> None:
            kind = "warm-up" if e.round == 1 else "measured"
            say(
                f"  round {e.round}/{total_rounds} ({kind}): {e.duration_s:.2f}s, "
                f"{'committed' if e.committed else 'NOT committed: ' + e.detail}"
            )

        asyncio.run(watch(leader.info["address"], total_rounds, events, fed.operator(), show))
        rss: dict[str, list[float]] = {}
        for p in {p.popen.pid: p for p in fed.procs}.values():
            kind = "facility_process" if p.role in ("facility", "facilities") else p.role
            rss.setdefault(kind, []).append(peak_rss_mb(p.popen.pid) or 0.0)
    finally:
        fed.stop_all()
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    measured = [e for e in events if e.round > 1 and e.committed]
    if not measured:
        raise RuntimeError("no measured round committed; see the logs (again with --out DIR to keep them)")
    phases: dict[str, list[float]] = {}
    for e in measured:
        for k, v in (e.cost.phases_s if e.cost else {}).items():
            phases.setdefault(k, []).append(float(v))
    traffic = [e.cost.to_dict()["traffic"] if e.cost else {} for e in measured]
    fog_fac = median([t.get("fog_facility_bytes", 0) for t in traffic])
    peak = {k: round(max(v), 1) for k, v in sorted(rss.items())}
    peak["per_facility"] = round(max(rss.get("facility_process", [0.0])) / per_process, 1)
    return {
        "facilities": n,
        "fogs": fogs,
        "dim": dim,
        "flat": args.flat,
        "secagg": args.secagg,
        "tls": args.tls,
        "bucket_size": args.bucket_size,
        "buckets": buckets,
        "validators": args.validators,
        "rounds_measured": len(measured),
        "hosting": hosting_record(n, per_process),
        "round_s": round(median([e.duration_s for e in measured]), 4),
        "round_s_all": [round(e.duration_s, 4) for e in measured],
        "phases_s": {k: round(median(v), 4) for k, v in sorted(phases.items())},
        "leader_bytes_in": int(median([t.get("leader_bytes_in", 0) for t in traffic])),
        "leader_bytes_out": int(median([t.get("leader_bytes_out", 0) for t in traffic])),
        "fog_bytes_in_max": int(median([t.get("fog_bytes_in_max", 0) for t in traffic])),
        "bytes_per_facility": int(fog_fac / n),
        "peak_rss_mb": peak,
        "wall_s": round(time.monotonic() - started, 1),
        "note": "loopback on one machine; every process shares the same cores, so times include contention",
    }


def cmd_bench_federation(args: argparse.Namespace) -> int:
    if args.json:  # start-up progress goes to stderr; stdout carries only the JSON object
        with contextlib.redirect_stdout(sys.stderr):
            result = run(args)
    else:
        result = run(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    mb = 1e6
    print(f"\nMedian over {result['rounds_measured']} measured rounds:")
    print(f"  round time           {result['round_s']:.2f} s")
    for k, v in result["phases_s"].items():
        print(f"    {k:<20} {v:.3f} s")
    print(f"  leader received      {result['leader_bytes_in'] / mb:.2f} MB per round")
    print(f"  busiest fog received {result['fog_bytes_in_max'] / mb:.2f} MB per round")
    print(f"  per facility         {result['bytes_per_facility'] / mb:.3f} MB per round (sent + received)")
    print("  peak memory (MB)     " + ", ".join(f"{k} {v}" for k, v in result["peak_rss_mb"].items()))
    return 0
