"""Start real federations on loopback for integration tests (ports chosen by the OS)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from hfl.crypto import x509
from hfl.demo import Federation, Proc, start_facilities
from hfl.domain import SPECIALTIES
from hfl.proto.v1 import leader_pb2, leader_pb2_grpc
from hfl.rpc.tls import NodeTls, sync_channel


def start_federation(
    out: Path,
    *,
    facilities: int = 4,
    fogs: int = 2,
    validators: int = 4,
    rounds: int = 2,
    dataset: str = "synthetic",
    seed: int = 1,
    n_patients: int = 300,
    bucket_size: int = 3,
    committee_size: int | None = None,
    min_facilities: int | None = None,
    per_process: int = 1,
    extra_env: dict[str, str] | None = None,
    authority_env: dict[str, str] | None = None,
    facility_env: Callable[[int], dict[str, str]] | None = None,
    validator_env: Callable[[int], dict[str, str]] | None = None,
    fog_env: Callable[[int], dict[str, str]] | None = None,
    leader_env: dict[str, str] | None = None,
) -> tuple[Federation, dict[str, Proc]]:
    """Start a whole federation; if any part fails to start, stop what was started and re-raise.

    ``committee_size`` and ``min_facilities`` default to all validators and all facilities;
    ``per_process`` > 1 hosts that many facilities per OS process (`hfl serve facilities`)."""
    common = {
        "HFL_SEED": str(seed),
        "HFL_DATASET": dataset,
        "HFL_N_PATIENTS": str(n_patients),
        **(extra_env or {}),
    }
    fed = Federation(out, common)
    procs: dict[str, Proc] = {}
    try:
        auth = fed.start(
            "authority",
            "authority",
            {
                "HFL_COMMITTEE_SIZE": str(committee_size or validators),
                "HFL_BUCKET_SIZE": str(bucket_size),
                "HFL_MIN_FACILITIES": str(min_facilities or facilities),
                **(authority_env or {}),
            },
        )
        fed.wait_ready([auth], label="authority")
        procs["authority"] = auth
        common["HFL_AUTHORITY"] = auth.info["address"]
        workers = [
            fed.start("validator", f"validator-{i + 1}", (validator_env or (lambda _: {}))(i))
            for i in range(validators)
        ]
        workers += [fed.start("fog", f"fog-{i + 1}", (fog_env or (lambda _: {}))(i)) for i in range(fogs)]
        members = []
        for i in range(facilities):
            env = {"HFL_SHARD": f"{i}/{facilities}", "HFL_SPECIALTY": SPECIALTIES[i % 4]}
            env.update((facility_env or (lambda _: {}))(i))
            members.append((f"facility-{i + 1:02d}", env))
        workers += start_facilities(fed, members, per_process)
        fed.wait_ready(workers)
        procs.update((p.node_id, p) for p in workers)
        procs["leader"] = start_leader(fed, rounds, leader_env)
    except BaseException:
        fed.stop_all()
        raise
    return fed, procs


def start_leader(fed: Federation, rounds: int, env: dict[str, str] | None = None) -> Proc:
    leader = fed.start(
        "leader",
        "leader",
        {"HFL_ROUNDS": str(rounds), "HFL_ROUND_TIMEOUT": "20", "HFL_VOTE_TIMEOUT": "10", **(env or {})},
    )
    fed.wait_ready([leader], label="leader")
    _OPERATOR[leader.info["address"]] = fed.operator()
    return leader


# Operator credentials of the federations started here, by leader address (mTLS is on by default).
_OPERATOR: dict[str, NodeTls | None] = {}


def client_tls(
    out: Path,
    role: str,
    node_id: str,
    *,
    hours: float = 1.0,
    now: dt.datetime | None = None,
    ca_dir: Path | None = None,
) -> NodeTls:
    """Client credentials for any role, signed with the federation's CA key (tests act as any node)."""
    ca_dir = ca_dir or out / "state" / "authority" / "ca"
    ca_key = x509.key_from_pem((ca_dir / "ca.key").read_bytes())
    ca_cert = x509.cert_from_pem((ca_dir / "ca.pem").read_bytes())
    key = x509.new_key()
    cert = x509.issue(
        ca_key,
        ca_cert,
        x509.make_csr(key, node_id, role, []),
        role=role,
        node_id=node_id,
        now=now,
        hours=hours,
    )
    tls = NodeTls.__new__(NodeTls)  # skip the validity check: tests also make expired certificates
    tls.role, tls.node_id, tls.dir, tls.ca_pem = role, node_id, None, x509.cert_to_pem(ca_cert)
    tls.ca_cert, tls.revoked, tls.generation = ca_cert, set(), 1
    tls.key_pem, tls.cert_pem, tls.cert = x509.key_to_pem(key), x509.cert_to_pem(cert), cert
    tls._channel_creds = None
    return tls


def operator_channel(fed: Federation, address: str) -> grpc.Channel:
    return sync_channel(address, fed.operator())


def leader_status(address: str) -> leader_pb2.GetStatusResponse:
    with sync_channel(address, _OPERATOR.get(address)) as ch:
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
