"""`hfl status`: what a running federation is doing, in plain words; and the other operator calls to a
running federation (revoke, release, fetching the leader's ledger)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from hfl.errors import ConfigError
from hfl.ledger import LedgerStore
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.rpc import limits, serde
from hfl.rpc.tls import AUTHORITY, LEADER, NodeTls, load_client, operator_for_run, sync_channel
from hfl.words import counted


def _run_folder(run: str | None, leader: str | None, authority: str | None) -> str | None:
    """The demo run folder to read: the one named, else runs/latest when no address is given by hand.
    Addresses given by hand name the federation to ask: the last demo's folder may belong to another
    one, whose stale address would be reported as "not reachable"."""
    if run is not None:
        return run
    return None if (leader or authority) else "runs/latest"


def _addresses(run: str | None, leader: str | None, authority: str | None) -> tuple[str | None, str | None]:
    folder = _run_folder(run, leader, authority)
    if (leader and authority) or folder is None:
        return leader, authority
    path = Path(folder) / "endpoints.json"
    if path.exists():
        rows = json.loads(path.read_text())
        by_role = {r["role"]: r["address"] for r in rows}
        leader = leader or by_role.get("leader")
        authority = authority or by_role.get("authority")
    return leader, authority


def _operator_tls(run: str | None, cert_dir: str | None) -> NodeTls | None:
    """mTLS: an operator certificate folder, or the one of that demo run (None without TLS)."""
    return load_client(Path(cert_dir)) if cert_dir else operator_for_run(Path(run or "runs/latest"))


def show_status(
    run: str | None, leader: str | None, authority: str | None, cert_dir: str | None = None
) -> int:
    leader, authority = _addresses(run, leader, authority)
    tls = _operator_tls(run, cert_dir)
    if not leader and not authority:
        print("No federation found: give --leader/--authority or a run folder with endpoints.json.")
        return 1
    rc = 0
    if authority:
        try:
            with sync_channel(authority, tls, peer=AUTHORITY) as ch:
                stub = authority_pb2_grpc.AuthorityServiceStub(ch)
                nodes = stub.ListNodes(authority_pb2.ListNodesRequest(), timeout=5)
                spend = stub.GetPrivacySpend(authority_pb2.GetPrivacySpendRequest(), timeout=5)
            counts: dict[str, int] = {}
            for n in nodes.nodes:
                counts[n.role] = counts.get(n.role, 0) + 1
            print(f"authority {authority}: " + ", ".join(counted(v, k) for k, v in sorted(counts.items())))
            if nodes.quarantined:
                print(f"  quarantined: {', '.join(nodes.quarantined)}")
            if nodes.inactive:
                away = ", ".join(nodes.inactive)
                print(f"  left out after missing several rounds (back when they register again): {away}")
            if spend.epsilon_spent:
                worst = max(spend.epsilon_spent.values())
                print(
                    f"  privacy: {len(spend.epsilon_spent)} facilities have spent some of their budget "
                    f"(the most: ε = {worst:.3g})"
                )
            if spend.exhausted:
                print(
                    "  privacy budget used up, no longer training (their patients' guarantee is kept): "
                    + ", ".join(spend.exhausted)
                )
        except grpc.RpcError as e:
            print(f"authority {authority}: not reachable ({e.code().name})")
            rc = 1
    if leader:
        try:
            with sync_channel(leader, tls, peer=LEADER) as ch:
                s = leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=5)
            target = s.target_rounds or "unlimited"
            print(
                f"leader {leader}: {s.committed_round} rounds committed (target {target}); {s.state}; "
                f"ledger head {s.head_hash.hex()[:16]}"
            )
        except grpc.RpcError as e:
            print(f"leader {leader}: not reachable ({e.code().name})")
            rc = 1
    return rc


def _operator_call(
    method: str, request: Any, what: str, run: str | None, authority: str | None, cert_dir: str | None
) -> Any:
    """Call an operator-only authority method; None (after saying why in one line) when it failed."""
    _, authority = _addresses(run, None, authority)
    if not authority:
        print("No authority found: give --authority or a run folder with endpoints.json.")
        return None
    try:
        with sync_channel(authority, _operator_tls(run, cert_dir), peer=AUTHORITY) as ch:
            return getattr(authority_pb2_grpc.AuthorityServiceStub(ch), method)(request, timeout=10)
    except grpc.RpcError as e:
        print(f"The authority did not {what}: {e.details() or e.code().name}")
        return None


def revoke_node(
    node: str, reason: str, run: str | None, authority: str | None, cert_dir: str | None = None
) -> int:
    """`hfl revoke`: revoke every certificate of a node of any role (operator certificate needed)."""
    request = authority_pb2.RevokeNodeRequest(node_id=node, reason=reason)
    resp = _operator_call("RevokeNode", request, f"revoke {node}", run, authority, cert_dir)
    if resp is None:
        return 1
    print(
        f"Revoked {resp.certificates} certificate(s) of {resp.role} {node}. Every service refuses it within "
        f"{resp.refresh_seconds:.0f} s; it is no longer scheduled and cannot renew its certificate or enrol "
        "again under this name."
    )
    how = "hfl token NEW-NAME with the operator certificate, or " if resp.role == "facility" else ""
    print(
        "To bring the machine back after checking it, enrol it under a new name with a new one-time token "
        f"({how}on the authority: hfl enrol-token {resp.role} NEW-NAME)."
    )
    return 0


def release_facility(
    facility: str, reason: str, run: str | None, authority: str | None, cert_dir: str | None = None
) -> int:
    """`hfl release`: ask the authority to lift a facility's quarantine (operator certificate needed)."""
    request = authority_pb2.ReleaseFacilityRequest(node_id=facility, reason=reason)
    resp = _operator_call("ReleaseFacility", request, f"release {facility}", run, authority, cert_dir)
    if resp is None:
        return 1
    print(f"{facility} is no longer quarantined; it will be scheduled again once it is back.")
    print(
        "Its old certificate stays revoked. To bring it back, make it a new one-time token "
        f"(hfl token {facility}, with the same operator certificate) and restart it with HFL_ENROL_TOKEN "
        "set to that token."
    )
    if resp.quarantined:
        print(f"Still quarantined: {', '.join(resp.quarantined)}")
    return 0


def fetch_ledger(leader: str, run: str | None, cert_dir: str | None, timeout: float = 120.0) -> LedgerStore:
    """Every block of a running leader's ledger, with its models and bucket sums, in an in-memory
    LedgerStore that is NOT verified yet (run hfl.round.audit.verify_ledger on it). Needs the operator
    certificate (``cert_dir``, or the one of the demo run folder ``run``)."""
    tls = _operator_tls(run, cert_dir)
    options = [("grpc.max_receive_message_length", limits.MODEL)]
    try:
        with sync_channel(leader, tls, options=options, peer=LEADER) as ch:
            stream = leader_pb2_grpc.LeaderServiceStub(ch).GetLedger(
                leader_pb2.GetLedgerRequest(), timeout=timeout
            )
            records = [serde.ledger_block_from_proto(m) for m in stream]
    except grpc.RpcError as e:
        raise ConfigError(
            f"the leader at {leader} did not send its ledger: {e.details() or e.code().name}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"the leader at {leader} sent a malformed ledger block: {e}") from None
    return LedgerStore.from_records(records)
