"""Fault injection on real processes (kill -9): leader at random points of rounds, a fog mid-round,
facilities during secure aggregation, f validators (commits go on) and f+1 (nothing commits until they
return). After every crash the ledger verifies and no committed block is lost or rewritten.

HFL_FAULT_TRIALS sets the leader-kill trials (default 3 in CI; the recorded run used more). With
HFL_RECORD_RESULTS=1 the results go to bench/results/fault_trials.json.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hfl.demo import Federation, Proc
from hfl.ledger import LedgerStore
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.round.audit import verify_ledger
from tests.conftest import record_result
from tests.integration.helpers import (
    leader_status,
    operator_channel,
    start_federation,
    start_leader,
    wait_for_round,
)

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("HFL_FAULT_TRIALS", "3"))
RECORD: dict[str, Any] = {
    "leader_kill_trials": 0,
    "crash_trials_survived": 0,
    "committed_rounds_lost": 0,
    "details": [],
}
LEADER_ENV = {"HFL_ROUND_INTERVAL": "0.2", "HFL_SECAGG": "true"}
Fed = tuple[Federation, dict[str, Proc], Path]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    out = tmp_path_factory.mktemp("faults")
    fed, procs = start_federation(
        out,
        facilities=6,
        fogs=2,
        validators=4,
        rounds=0,
        extra_env={"HFL_SECAGG": "true"},
        authority_env={"HFL_FOG_MIN_BUCKETS": "1"},  # both fogs take facilities (one bucket each)
        leader_env=LEADER_ENV,
    )
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()
        record_result("fault_trials.json", RECORD)


def _kill(p: Proc) -> None:
    p.popen.send_signal(signal.SIGKILL)
    p.popen.wait()


def _blocks(out: Path) -> dict[int, bytes]:
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        verify_ledger(store, recompute=False)
        return {b.header.round: b.hash for b in store.blocks()}


def _check_nothing_lost(before: dict[int, bytes], out: Path, what: str) -> dict[int, bytes]:
    after = _blocks(out)
    lost = [r for r, h in before.items() if after.get(r) != h]
    RECORD["committed_rounds_lost"] += len(lost)
    assert not lost, f"{what}: committed rounds lost or rewritten: {lost}"
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        verify_ledger(store)  # full check, aggregates recomputed
    RECORD["crash_trials_survived"] += 1
    return after


def _committed(procs: dict[str, Proc]) -> int:
    return int(leader_status(procs["leader"].info["address"]).committed_round)


def test_leader_killed_at_random_points(federation: Fed) -> None:
    fed, procs, out = federation
    rng = random.Random(7)
    wait_for_round(procs["leader"].info["address"], 1)
    seen: dict[int, bytes] = {}  # every block committed before any of the kills
    for trial in range(TRIALS):
        start = _committed(procs)
        delay = rng.uniform(0.0, 1.5)  # rounds take about a second here: anywhere in a round
        time.sleep(delay)
        before = _blocks(out)
        seen.update(before)
        _kill(procs["leader"])
        RECORD["leader_kill_trials"] += 1
        _check_nothing_lost(before, out, f"leader kill {trial}")
        procs["leader"] = start_leader(fed, 0, LEADER_ENV)
        status = wait_for_round(procs["leader"].info["address"], max(start, max(before)) + 1, limit_s=180)
        RECORD["details"].append(
            {
                "trial": trial,
                "delay_s": round(delay, 3),
                "committed_before": max(before),
                "committed_after_restart": int(status.committed_round),
            }
        )
    _check_nothing_lost(seen, out, "after the leader trials")  # still there after all the restarts


def _served_by(out: Path, fog: str, first: int, last: int) -> list[int]:
    """Committed rounds in [first, last] whose buckets came only through ``fog``, with every facility."""
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        return [
            r
            for r in range(first, last + 1)
            if store.block(r).header.extra["fogs"] == [fog] * len(store.block(r).header.extra["fogs"])
            and sum(store.block(r).header.bucket_counts) == 6
        ]


def test_fog_killed_mid_round_has_its_facilities_moved(federation: Fed) -> None:
    fed, procs, out = federation
    address = procs["leader"].info["address"]
    time.sleep(0.4)
    before = _blocks(out)
    _kill(procs["fog-1"])
    now = _committed(procs)  # a round in flight may still commit with fog-1's buckets (now + 1)
    # Rounds go on with fog-2's buckets; the leader tells the authority that fog-1 is down, which moves
    # fog-1's facilities to fog-2; they dial it, and rounds have every facility again.
    target, moved = now + 2, []
    deadline = time.monotonic() + 120
    while not moved and time.monotonic() < deadline:
        wait_for_round(address, target, limit_s=120)
        moved = _served_by(out, "fog-2", now + 2, target)
        target += 1
    assert moved, "fog-1's facilities were not served through fog-2 after fog-1 was killed"
    after = _check_nothing_lost(before, out, "fog kill")
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        later = [store.block(r) for r in sorted(after) if r > now + 1]
        assert later and all("fog-1" not in b.header.extra["fogs"] for b in later)
    # It comes back (same state folder: same certificate), registers again and gets buckets again.
    fog = fed.start("fog", "fog-1")
    fed.wait_ready([fog], label="fog-1")
    procs["fog-1"] = fog
    # Its facilities dial it again (at its new port, from the authority's list) and it gets buckets
    # again: within a bounded wait, however fast rounds go by meanwhile.
    back_from = _committed(procs)
    target, served = back_from + 1, False
    deadline = time.monotonic() + 120
    while not served and time.monotonic() < deadline:
        wait_for_round(address, target, limit_s=120)
        with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
            served = any(
                "fog-1" in store.block(r).header.extra["fogs"] for r in range(back_from + 1, target + 1)
            )
        target += 1
    assert served, f"fog-1 served no committed round in the {target - back_from - 1} rounds after its restart"
    _check_nothing_lost(after, out, "fog restart")


def test_facility_killed_during_secure_aggregation(federation: Fed) -> None:
    """A facility killed at a random moment of secure-aggregation rounds: its bucket recovers from the
    other members' shares (or is abandoned if too few remain); rounds go on."""
    fed, procs, out = federation
    address = procs["leader"].info["address"]
    rng = random.Random(11)
    for name in ("facility-02", "facility-05"):
        now = _committed(procs)
        time.sleep(rng.uniform(0.0, 1.0))
        before = _blocks(out)
        _kill(procs[name])
        wait_for_round(address, now + 2, limit_s=240)
        _check_nothing_lost(before, out, f"{name} kill")
        p = fed.start("facility", name, {"HFL_SHARD": f"{int(name[-2:]) - 1}/6"})
        fed.wait_ready([p], label=name)
        procs[name] = p
    wait_for_round(address, _committed(procs) + 1, limit_s=240)


def test_facility_killed_in_each_secagg_stage(federation: Fed) -> None:
    """A facility that dies (exit as under kill -9) exactly when its fog reaches each stage of secure
    aggregation: the round still commits (its bucket recovers from shares, or is abandoned when too
    few members remain) and nothing committed is lost."""
    fed, procs, out = federation
    address = procs["leader"].info["address"]
    name = "facility-03"
    for stage in (1, 2, 3, 4):
        _kill(procs[name])
        p = fed.start("facility", name, {"HFL_SHARD": "2/6", "HFL_CRASH_AT_STAGE": str(stage)})
        fed.wait_ready([p], label=name)
        procs[name] = p
        before = _blocks(out)
        p.popen.wait(timeout=300)  # it dies when its fog reaches that stage
        assert p.popen.returncode == 137
        assert "crashing on purpose at stage" in p.log_file.read_text()
        wait_for_round(address, max(before) + 1, limit_s=300)
        _check_nothing_lost(before, out, f"facility killed at secure-aggregation stage {stage}")
    p = fed.start("facility", name, {"HFL_SHARD": "2/6"})
    fed.wait_ready([p], label=name)
    procs[name] = p


def _inactive(fed: Federation, procs: dict[str, Proc]) -> list[str]:
    with operator_channel(fed, procs["authority"].info["address"]) as ch:
        nodes = authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
            authority_pb2.ListNodesRequest(), timeout=10
        )
    return list(nodes.inactive)


def _members(out: Path, round_: int) -> set[str]:
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        return {m for ms in store.block(round_).header.extra["members"] for m in ms}


def test_missing_facility_is_left_out_until_it_registers_again(federation: Fed) -> None:
    """A facility that is gone (killed, not restarted) is scheduled for three more rounds, then left out,
    so the others stop waiting for it; once it is back and registers it takes part again."""
    fed, procs, out = federation
    address = procs["leader"].info["address"]
    name = "facility-06"
    _kill(procs[name])
    deadline = time.monotonic() + 240
    while name not in _inactive(fed, procs):
        assert time.monotonic() < deadline, f"{name} was still scheduled after 240 s"
        time.sleep(0.5)
    now = _committed(procs)
    wait_for_round(address, now + 2, limit_s=240)
    assert name not in _members(out, now + 2)
    p = fed.start("facility", name, {"HFL_SHARD": "5/6"})
    fed.wait_ready([p], label=name)
    procs[name] = p
    assert name not in _inactive(fed, procs)
    target = _committed(procs) + 2
    wait_for_round(address, target, limit_s=240)
    assert name in _members(out, target)
    assert "missed 3 rounds in a row" in procs["authority"].log_file.read_text()


def test_f_validators_down_commits_go_on_f_plus_one_waits(federation: Fed) -> None:
    fed, procs, out = federation
    address = procs["leader"].info["address"]
    # f = 1 of 4: commits go on
    _kill(procs["validator-4"])
    now = _committed(procs)
    wait_for_round(address, now + 2, limit_s=240)
    # f + 1 = 2 down: the leader waits, nothing commits
    _kill(procs["validator-3"])
    time.sleep(2.0)  # let a round in flight finish
    stuck = _committed(procs)
    before = _blocks(out)
    time.sleep(8.0)  # several round attempts (the vote timeout is 10 s)
    assert _committed(procs) == stuck
    _check_nothing_lost(before, out, "f+1 validators down")
    # they come back: commits continue
    for name in ("validator-3", "validator-4"):
        p = fed.start("validator", name)
        fed.wait_ready([p], label=name)
        procs[name] = p
    wait_for_round(address, stuck + 2, limit_s=240)
    _check_nothing_lost(before, out, "validators back")
