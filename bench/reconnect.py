"""200 facilities reconnecting at once: a fog is killed (as under kill -9) and started again, and every
facility that was connected to it has to connect again (issue 14: "all back within 2 rounds").

A whole federation on this machine (authority, validators, leader, 2 fogs, N facilities packed several per
process, random updates instead of training). Each facility is connected to its home fog only (about
half to each). After a few committed rounds, fog-1 is killed and restarted on a new port (as a restarted
process or container would be); its facilities notice the broken connection and read their home fog
again: fog-2 when the leader has meanwhile reported fog-1 down, fog-1 at its new address otherwise (and
back to fog-1 once it is up again). They dial with backoff and jitter.

Recorded: seconds from the restart until the two fogs hold all N connections again, the round that was
under way when it restarted, and the first committed round after it whose buckets include every facility.

    python bench/reconnect.py --facilities 200 > bench/results/reconnect.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from hfl.demo import Federation, enrol_burst_env, start_facilities
from hfl.health import metric_values


def metric(port: int, name: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return -1.0
    return sum(metric_values(text, name))


def committed(fed: Federation) -> int:
    from hfl.ledger import LedgerStore

    path = fed.out / "state" / "leader" / "ledger.db"
    if not path.exists():
        return 0
    with LedgerStore(path) as store:
        rounds = store.rounds()
    return rounds[-1] if rounds else 0


def members_of(fed: Federation, round_: int) -> set[str]:
    from hfl.ledger import LedgerStore

    with LedgerStore(fed.out / "state" / "leader" / "ledger.db") as store:
        return {m for ms in store.block(round_).header.extra["members"] for m in ms}


def run(n: int, per_process: int, rounds_before: int, interval: float) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="hfl-reconnect-"))
    common = {
        "HFL_SEED": "0",
        "HFL_DATASET": "synthetic",
        "HFL_N_PATIENTS": "40",
        "HFL_LOG_LEVEL": "INFO",
        "HFL_BENCH_UPDATES": "true",
    }
    fed = Federation(out, common)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        auth = fed.start(
            "authority",
            "authority",
            {
                "HFL_COMMITTEE_SIZE": "4",
                "HFL_BUCKET_SIZE": "8",
                "HFL_MIN_FACILITIES": str(n),
                "HFL_MAX_BYZANTINE": "0",  # no facility misbehaves; buckets of 8 could not single them out
                **enrol_burst_env(n + 10),
            },
        )
        fed.wait_ready([auth], label="authority")
        common["HFL_AUTHORITY"] = auth.info["address"]
        workers = [fed.start("validator", f"validator-{i + 1}") for i in range(4)]
        workers += [fed.start("fog", f"fog-{i + 1}") for i in range(2)]
        members = [(f"facility-{i + 1:03d}", {"HFL_SHARD": f"{i}/{n}"}) for i in range(n)]
        workers += start_facilities(fed, members, per_process)
        fed.wait_ready(workers, timeout=900, label="services")
        fog = next(p for p in workers if p.node_id == "fog-1")
        fog2_port = int(next(p for p in workers if p.node_id == "fog-2").info["metrics_port"])
        leader = fed.start(
            "leader",
            "leader",
            {
                "HFL_ROUNDS": "0",
                "HFL_N_FEATURES": "99",
                "HFL_ROUND_TIMEOUT": "60",
                "HFL_VOTE_TIMEOUT": "60",
                "HFL_ROUND_INTERVAL": str(interval),  # as in deploy/docker-compose.yml
            },
        )
        fed.wait_ready([leader], timeout=600, label="leader")
        held = metric(fog.info["metrics_port"], "hfl_fog_connected_facilities")
        held2 = metric(fog2_port, "hfl_fog_connected_facilities")
        say(f"federation of {n} facilities up; fog-1 holds {held:.0f} connections, fog-2 {held2:.0f}")
        while committed(fed) < rounds_before:
            time.sleep(0.5)
        say(f"{committed(fed)} rounds committed; killing fog-1 and starting it again")
        load_before = os.getloadavg()
        fog.popen.send_signal(signal.SIGKILL)
        fog.popen.wait()
        at_restart = committed(fed)
        restarted = time.monotonic()
        fog = fed.start("fog", "fog-1")
        fed.wait_ready([fog], timeout=120, label="fog-1")
        port = int(fog.info["metrics_port"])
        back_s = None
        seen: list[tuple[float, float]] = []
        while time.monotonic() - restarted < 300:
            got = sum(metric(p, "hfl_fog_connected_facilities") for p in (port, fog2_port))
            seen.append((round(time.monotonic() - restarted, 2), got))
            if got >= n:
                back_s = time.monotonic() - restarted
                break
            time.sleep(0.25)
        say(f"the fogs hold {seen[-1][1]:.0f} connections {seen[-1][0]:.1f} s after fog-1's restart")
        full_round = None
        deadline = time.monotonic() + 600
        rounds_after: dict[int, dict[str, float]] = {}
        while full_round is None and time.monotonic() < deadline:
            for r in range(at_restart + 1, committed(fed) + 1):
                if r not in rounds_after:
                    rounds_after[r] = {
                        "committed_s_after_restart": round(time.monotonic() - restarted, 1),
                        "facilities_in_it": len(members_of(fed, r)),
                    }
                if rounds_after[r]["facilities_in_it"] == n and full_round is None:
                    full_round = r
            time.sleep(0.5)
        load_after = os.getloadavg()
        return {
            "facilities": n,
            "fogs": 2,
            "facilities_per_process": per_process,
            "rounds_committed_before_restart": at_restart,
            "all_reconnected_s": None if back_s is None else round(back_s, 2),
            "connections_over_time": seen[:: max(1, len(seen) // 40)],
            "first_round_with_every_facility": full_round,
            "round_interval_s": interval,
            "rounds_after_restart": {str(r): v for r, v in sorted(rounds_after.items())},
            "rounds_after_restart_until_everyone_is_back": None
            if full_round is None
            else full_round - at_restart,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "fog_1_connections_before_kill": held,
            "fog_2_connections_before_kill": held2,
            "note": "one 2-core machine runs every process; each facility is connected to its home fog only; "
            "the fog restarts on a new port (facilities read their home fog again when a connection fails); "
            "connections are counted over both fogs; backoff 0.5 s doubling to 30 s with jitter",
        }
    finally:
        fed.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--facilities", type=int, default=200)
    p.add_argument("--per-process", type=int, default=50)
    p.add_argument("--rounds-before", type=int, default=3)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (compose: 5)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # start-up progress; stdout carries only the result
        result = run(args.facilities, args.per_process, args.rounds_before, args.interval)
    print(json.dumps(result, indent=1 if args.json else None, sort_keys=True))
    ok = result["rounds_after_restart_until_everyone_is_back"]
    return 0 if ok is not None and ok <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
