"""Start real federations on loopback for integration tests (ports chosen by the OS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc

from hfl.demo import Federation, Proc
from hfl.proto.v1 import leader_pb2, leader_pb2_grpc


def start_federation(
    out: Path, *, facilities: int = 4, fogs: int = 2, validators: int = 4, rounds: int = 2,
    dataset: str = "synthetic", extra_env: dict[str, str] | None = None,
    facility_env: Callable[[int], dict[str, str]] | None = None,
    validator_env: Callable[[int], dict[str, str]] | None = None,
) -> tuple[Federation, dict[str, Proc]]:
    common = {"HFL_SEED": "1", "HFL_DATASET": dataset, "HFL_N_PATIENTS": "300", **(extra_env or {})}
    fed = Federation(out, common)
    procs: dict[str, Proc] = {}
    auth = fed.start("authority", "authority", {"HFL_COMMITTEE_SIZE": str(validators), "HFL_BUCKET_SIZE": "3",
                                                "HFL_MIN_FACILITIES": str(facilities)})
    fed.wait_ready([auth], label="authority")
    procs["authority"] = auth
    common["HFL_AUTHORITY"] = auth.info["address"]
    workers = []
    for i in range(validators):
        p = fed.start("validator", f"validator-{i + 1}", (validator_env or (lambda _: {}))(i))
        procs[p.node_id] = p
        workers.append(p)
    for i in range(fogs):
        p = fed.start("fog", f"fog-{i + 1}")
        procs[p.node_id] = p
        workers.append(p)
    for i in range(facilities):
        env = {"HFL_SHARD": f"{i}/{facilities}", "HFL_SPECIALTY": ("hospital", "clinic", "research", "emergency")[i % 4]}
        env.update((facility_env or (lambda _: {}))(i))
        p = fed.start("facility", f"facility-{i + 1:02d}", env)
        procs[p.node_id] = p
        workers.append(p)
    fed.wait_ready(workers)
    procs["leader"] = start_leader(fed, rounds)
    return fed, procs


def start_leader(fed: Federation, rounds: int, env: dict[str, str] | None = None) -> Proc:
    leader = fed.start("leader", "leader", {"HFL_ROUNDS": str(rounds), "HFL_ROUND_TIMEOUT": "20",
                                            "HFL_VOTE_TIMEOUT": "10", **(env or {})})
    fed.wait_ready([leader], label="leader")
    return leader


def leader_status(address: str) -> leader_pb2.GetStatusResponse:
    with grpc.insecure_channel(address) as ch:
        return leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=10)


def wait_for_round(address: str, round_: int, limit_s: float = 240.0) -> leader_pb2.GetStatusResponse:
    """Wait until the leader has committed ``round_`` (a bound on waiting, not an assertion on speed)."""
    deadline = time.monotonic() + limit_s
    while True:
        status = leader_status(address)
        if status.committed_round >= round_:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"leader stuck at round {status.committed_round} ({status.state})")
        time.sleep(0.3)
