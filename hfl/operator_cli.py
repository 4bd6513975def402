"""The operator's controls from the command line (operator certificate needed): `hfl pause`, `hfl resume`,
`hfl stop-after`, `hfl interval` (the leader), `hfl quarantine`, `hfl token` (the authority) and
`hfl actions` (what operators did, from both). The console offers the same controls."""

from __future__ import annotations

from typing import Any

import grpc

from hfl.control import OperatorAction, TrainingControl
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc import serde
from hfl.rpc.tls import AUTHORITY, LEADER, NodeTls, sync_channel
from hfl.status import _addresses, _operator_tls


def _call(role: str, address: str | None, tls: NodeTls | None, method: str, request: Any, what: str) -> Any:
    """One operator call; None (after one plain line saying why) when it failed."""
    if not address:
        print(f"No {role} found: give --{role} or a run folder with endpoints.json.")
        return None
    stub_class = (
        leader_pb2_grpc.LeaderServiceStub if role == "leader" else authority_pb2_grpc.AuthorityServiceStub
    )
    try:
        with sync_channel(address, tls, peer=LEADER if role == "leader" else AUTHORITY) as ch:
            return getattr(stub_class(ch), method)(request, timeout=10)
    except grpc.RpcError as e:
        print(f"The {role} did not {what}: {e.details() or e.code().name}")
        return None


def describe_control(c: TrainingControl) -> str:
    parts = [f"paused ({c.pause_reason})" if c.paused else "running"]
    if c.stop_after is not None:
        parts.append(f"stops after round {c.stop_after}")
    if c.round_interval_s is not None:
        parts.append(f"{c.round_interval_s:g} s between rounds")
    return "Training: " + ", ".join(parts) + "."


def control_training(
    action: str,
    reason: str,
    run: str | None,
    leader: str | None,
    cert_dir: str | None = None,
    *,
    round_: int = 0,
    seconds: float = 0.0,
) -> int:
    leader = _addresses(run, leader, None)[0]
    request = leader_pb2.ControlTrainingRequest(
        action=serde.control_action_to_proto(action),  # type: ignore[arg-type]
        reason=reason,
        round=round_,
        seconds=seconds,
    )
    resp = _call(
        "leader", leader, _operator_tls(run, cert_dir), "ControlTraining", request, action.replace("_", " ")
    )
    if resp is None:
        return 1
    print(describe_control(serde.training_control_from_proto(resp.control)))
    return 0


def quarantine_facility(
    facility: str, reason: str, run: str | None, authority: str | None, cert_dir: str | None = None
) -> int:
    authority = _addresses(run, None, authority)[1]
    request = authority_pb2.QuarantineFacilityRequest(node_id=facility, reason=reason)
    what = f"quarantine {facility}"
    resp = _call("authority", authority, _operator_tls(run, cert_dir), "QuarantineFacility", request, what)
    if resp is None:
        return 1
    print(f"{facility} is quarantined: it is left out of training and its certificates are revoked.")
    print(f"To lift it after checking: hfl release {facility} --reason '...'")
    return 0


def issue_token(
    facility: str, hours: float, run: str | None, authority: str | None, cert_dir: str | None
) -> int:
    authority = _addresses(run, None, authority)[1]
    request = authority_pb2.IssueEnrolmentTokenRequest(node_id=facility, hours=hours)
    what = f"make a token for {facility}"
    resp = _call("authority", authority, _operator_tls(run, cert_dir), "IssueEnrolmentToken", request, what)
    if resp is None:
        return 1
    print(f"One-time enrolment token for {facility} (valid until {resp.expires} UTC; shown only now):")
    print(resp.token)
    print("Give it to the site's IT team; their facility starts with HFL_ENROL_TOKEN set to it.")
    return 0


def operator_actions(
    run: str | None, leader: str | None, authority: str | None, cert_dir: str | None
) -> list[OperatorAction] | None:
    """Every recorded operator action, from the leader and the authority, oldest first."""
    leader, authority = _addresses(run, leader, authority)
    tls = _operator_tls(run, cert_dir)
    out: list[OperatorAction] = []
    for role, address in (("leader", leader), ("authority", authority)):
        resp = _call(
            role, address, tls, "ListOperatorActions", pb.ListOperatorActionsRequest(), "list its actions"
        )
        if resp is None:
            return None
        out += [serde.operator_action_from_proto(a) for a in resp.actions]
    return sorted(out, key=lambda a: a.at)


def show_actions(run: str | None, leader: str | None, authority: str | None, cert_dir: str | None) -> int:
    actions = operator_actions(run, leader, authority, cert_dir)
    if actions is None:
        return 1
    if not actions:
        print("No operator action has been recorded.")
    for a in actions:
        print(action_line(a))
    return 0


def action_line(a: OperatorAction) -> str:
    """One recorded action on one line; pause and resume have no target."""
    what = f"{a.action} {a.target}" if a.target else a.action
    return f"{a.at}  {a.by}: {what} ({a.reason}) -> {a.result}"
