"""The console's data layer: one snapshot of a running federation over gRPC, as plain dataclasses.

No Streamlit here (the views only render these), and no patient-level data: only what the authority and
the leader already tell an operator (`hfl status`), plus the run's summary.json when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from hfl.control import OperatorAction, TrainingControl
from hfl.domain import RoundEvent, SecurityReport
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc import serde
from hfl.rpc.tls import AUTHORITY, LEADER, NodeTls, sync_channel
from hfl.status import _addresses, _operator_tls, _run_folder


@dataclass(frozen=True)
class Node:
    node_id: str
    role: str
    address: str
    specialty: str = ""


@dataclass(frozen=True)
class Nodes:
    nodes: tuple[Node, ...]
    quarantined: tuple[str, ...]
    inactive: tuple[str, ...]

    def by_role(self, role: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == role)


@dataclass(frozen=True)
class PrivacySpend:
    epsilon_spent: dict[str, float]
    exhausted: tuple[str, ...]
    budget: float = 0.0  # per facility; 0: no differential privacy
    delta: float = 0.0
    mechanism: str = ""


@dataclass(frozen=True)
class LeaderStatus:
    committed_round: int
    target_rounds: int
    finished: bool
    state: str
    head_hash: str
    control: TrainingControl = field(default_factory=TrainingControl)


@dataclass(frozen=True)
class Snapshot:
    """What the console shows; a part is None (with the reason in `problems`) when it was not reachable."""

    nodes: Nodes | None = None
    privacy: PrivacySpend | None = None
    leader: LeaderStatus | None = None
    summary: dict[str, object] | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)
    # Every round attempt the leader announced since it started (committed or not), oldest first.
    rounds: tuple[RoundEvent, ...] = ()
    ended: str | None = None  # why training ended, once it has
    security: SecurityReport | None = None
    actions: tuple[OperatorAction, ...] = ()  # what operators did, from the leader and the authority

    @property
    def committed(self) -> tuple[RoundEvent, ...]:
        return tuple(e for e in self.rounds if e.committed)

    @property
    def latest(self) -> RoundEvent | None:
        """The newest round attempt that reached the fogs (it has buckets)."""
        return next((e for e in reversed(self.rounds) if e.buckets), None)


@dataclass(frozen=True)
class Connection:
    """Where the federation is and the operator certificate to reach it with."""

    leader: str | None
    authority: str | None
    tls: NodeTls | None
    run: Path | None = None
    cert_dir: str | None = None

    @classmethod
    def from_args(
        cls,
        run: str | None = None,
        leader: str | None = None,
        authority: str | None = None,
        cert_dir: str | None = None,
    ) -> Connection:
        run = _run_folder(run, leader, authority)  # its ledger can be checked too
        leader, authority = _addresses(run, leader, authority)
        return cls(leader, authority, _operator_tls(run, cert_dir), Path(run) if run else None, cert_dir)


def _nodes(conn: Connection) -> tuple[Nodes, PrivacySpend, SecurityReport]:
    assert conn.authority
    with sync_channel(conn.authority, conn.tls, peer=AUTHORITY) as ch:
        stub = authority_pb2_grpc.AuthorityServiceStub(ch)
        listed = stub.ListNodes(authority_pb2.ListNodesRequest(), timeout=5)
        spend = stub.GetPrivacySpend(authority_pb2.GetPrivacySpendRequest(), timeout=5)
        security = serde.security_from_proto(
            stub.GetSecurityReport(authority_pb2.GetSecurityReportRequest(), timeout=5)
        )
    nodes = Nodes(
        nodes=tuple(
            sorted(
                (Node(n.node_id, n.role, n.address, n.specialty) for n in listed.nodes),
                key=lambda n: (n.role, n.node_id),
            )
        ),
        quarantined=tuple(listed.quarantined),
        inactive=tuple(listed.inactive),
    )
    privacy = PrivacySpend(
        dict(spend.epsilon_spent), tuple(spend.exhausted), spend.budget, spend.delta, spend.mechanism
    )
    return nodes, privacy, security


def _leader(conn: Connection) -> LeaderStatus:
    assert conn.leader
    with sync_channel(conn.leader, conn.tls, peer=LEADER) as ch:
        s = leader_pb2_grpc.LeaderServiceStub(ch).GetStatus(leader_pb2.GetStatusRequest(), timeout=5)
    return LeaderStatus(
        s.committed_round,
        s.target_rounds,
        s.finished,
        s.state,
        s.head_hash.hex(),
        serde.training_control_from_proto(s.control),
    )


def _history(conn: Connection) -> tuple[tuple[RoundEvent, ...], str | None]:
    """The leader's round events so far (it replays them and ends the stream), and why training ended."""
    assert conn.leader
    with sync_channel(conn.leader, conn.tls, peer=LEADER) as ch:
        stream = leader_pb2_grpc.LeaderServiceStub(ch).WatchRounds(
            leader_pb2.WatchRoundsRequest(replay_only=True), timeout=10
        )
        events = [serde.event_from_proto(m) for m in stream]
    ended = next((e.detail for e in events if e.done), None)
    return tuple(e for e in events if not e.done), ended


def _summary(conn: Connection) -> dict[str, object] | None:
    path = conn.run / "summary.json" if conn.run else None
    if path is None or not path.exists():
        return None
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else None


def snapshot(conn: Connection) -> Snapshot:
    """Fetch everything once; an unreachable service becomes a plain sentence in `problems`."""
    problems: list[str] = []
    nodes = privacy = leader = security = None
    if conn.authority:
        try:
            nodes, privacy, security = _nodes(conn)
        except grpc.RpcError as e:
            problems.append(f"The authority at {conn.authority} did not answer ({e.code().name}).")
    else:
        problems.append("No authority address is known.")
    rounds: tuple[RoundEvent, ...] = ()
    ended = None
    if conn.leader:
        try:
            leader = _leader(conn)
            rounds, ended = _history(conn)
        except grpc.RpcError as e:
            problems.append(f"The leader at {conn.leader} did not answer ({e.code().name}).")
    else:
        problems.append("No leader address is known.")
    actions = _actions(conn) if leader is not None and nodes is not None else ()
    return Snapshot(nodes, privacy, leader, _summary(conn), tuple(problems), rounds, ended, security, actions)


def check_ledger(run: Path | None) -> tuple[bool, str]:
    """The same checks as `hfl ledger verify RUN` (hashes, signatures, quorum certificates, aggregates)."""
    from hfl.errors import ConfigError
    from hfl.ledger import LedgerError, LedgerStore
    from hfl.round.audit import verify_ledger

    if run is None:
        return False, "The ledger can only be checked here when the console is given the run folder (--run)."
    for path in (run / "ledger.db", run / "state" / "leader" / "ledger.db"):
        if path.exists():
            break
    else:
        return False, str(ConfigError(f"No ledger was found in {run}."))
    with LedgerStore(path) as store:
        try:
            n = verify_ledger(store, recompute=True)
        except LedgerError as e:
            return False, f"The ledger is NOT valid: {e}"
    return (
        True,
        f"Ledger OK: {n} blocks; hashes, signatures, quorum certificates and every aggregate check out.",
    )


def _actions(conn: Connection) -> tuple[OperatorAction, ...]:
    out: list[OperatorAction] = []
    try:
        for address, peer, stub_class in (
            (conn.leader, LEADER, leader_pb2_grpc.LeaderServiceStub),
            (conn.authority, AUTHORITY, authority_pb2_grpc.AuthorityServiceStub),
        ):
            assert address
            with sync_channel(address, conn.tls, peer=peer) as ch:
                resp = stub_class(ch).ListOperatorActions(pb.ListOperatorActionsRequest(), timeout=5)
            out += [serde.operator_action_from_proto(a) for a in resp.actions]
    except grpc.RpcError:
        return ()
    return tuple(sorted(out, key=lambda a: a.at))


# ---------------------------------------------------------------- the operator's controls
def _refusal(e: grpc.RpcError) -> str:
    return e.details() or e.code().name


def control_training(
    conn: Connection, action: str, reason: str, *, round_: int = 0, seconds: float = 0.0
) -> tuple[bool, str]:
    """Pause, resume, stop after a round or change the interval; (done, what the leader says)."""
    assert conn.leader
    request = leader_pb2.ControlTrainingRequest(
        action=serde.control_action_to_proto(action),  # type: ignore[arg-type]
        reason=reason,
        round=round_,
        seconds=seconds,
    )
    try:
        with sync_channel(conn.leader, conn.tls, peer=LEADER) as ch:
            resp = leader_pb2_grpc.LeaderServiceStub(ch).ControlTraining(request, timeout=10)
    except grpc.RpcError as e:
        return False, f"The leader refused: {_refusal(e)}"
    from hfl.operator_cli import describe_control

    return True, describe_control(serde.training_control_from_proto(resp.control))


def _authority_call(conn: Connection, method: str, request: object) -> tuple[object | None, str]:
    assert conn.authority
    try:
        with sync_channel(conn.authority, conn.tls, peer=AUTHORITY) as ch:
            return getattr(authority_pb2_grpc.AuthorityServiceStub(ch), method)(request, timeout=10), ""
    except grpc.RpcError as e:
        return None, f"The authority refused: {_refusal(e)}"


def _authority_action(conn: Connection, method: str, request: object, done: str) -> tuple[bool, str]:
    """One operator action on the authority: (True, ``done``) or (False, the authority's refusal)."""
    resp, refusal = _authority_call(conn, method, request)
    return (False, refusal) if resp is None else (True, done)


def release(conn: Connection, facility: str, reason: str) -> tuple[bool, str]:
    request = authority_pb2.ReleaseFacilityRequest(node_id=facility, reason=reason)
    done = (
        f"{facility} is released; it takes part again once it enrols with a new one-time token "
        "(Enrolment token, below)."
    )
    return _authority_action(conn, "ReleaseFacility", request, done)


def quarantine(conn: Connection, facility: str, reason: str) -> tuple[bool, str]:
    request = authority_pb2.QuarantineFacilityRequest(node_id=facility, reason=reason)
    done = f"{facility} is quarantined: it is left out and its certificates are revoked."
    return _authority_action(conn, "QuarantineFacility", request, done)


def revoke(conn: Connection, node: str, reason: str) -> tuple[bool, str]:
    request = authority_pb2.RevokeNodeRequest(node_id=node, reason=reason)
    done = (
        f"Revoked the certificates of {node}; every service refuses it from its next revocation-list refresh."
    )
    return _authority_action(conn, "RevokeNode", request, done)


def enrolment_token(conn: Connection, facility: str, hours: float) -> tuple[bool, str, str]:
    """(done, message, token): the token is returned once and kept nowhere in the console."""
    resp, refusal = _authority_call(
        conn, "IssueEnrolmentToken", authority_pb2.IssueEnrolmentTokenRequest(node_id=facility, hours=hours)
    )
    if resp is None:
        return False, refusal, ""
    token = resp.token  # type: ignore[attr-defined]
    return True, f"One-time token for {facility}, valid until {resp.expires} UTC (shown only now):", token  # type: ignore[attr-defined]


def run_dataset(conn: Connection) -> str | None:
    """The dataset of a demo run (its summary.json), when the console was given the run folder."""
    from hfl.model_cli import _summary as run_summary

    summary = run_summary(conn.run) if conn.run else None
    dataset = ((summary or {}).get("config") or {}).get("dataset")
    return str(dataset) if dataset else None


def current_model(conn: Connection, dataset: str | None = None) -> tuple[bytes, str]:
    """The newest committed model as an .npz file (the same as `hfl model export --leader`): the leader's
    whole ledger is fetched and verified first; raises ValueError with a plain sentence when it fails.
    ``dataset``: the data the federation trains on (its columns and scaling go into the file)."""
    from hfl.errors import ConfigError
    from hfl.learning.export import to_npz
    from hfl.ledger import LedgerError
    from hfl.model_cli import _summary as run_summary
    from hfl.model_cli import verified_model
    from hfl.status import fetch_ledger

    assert conn.leader
    summary = run_summary(conn.run) if conn.run else None
    config = (summary or {}).get("config") or {}
    try:
        store = fetch_ledger(conn.leader, str(conn.run) if conn.run else None, conn.cert_dir)
        with store:
            exported, _ = verified_model(
                store,
                "latest",
                dataset or config.get("dataset") or "",
                config.get("label"),
                "the leader's ledger",
            )
    except (ConfigError, LedgerError, grpc.RpcError) as e:
        raise ValueError(f"The model could not be exported: {e}") from None
    return to_npz(exported), f"model-round-{exported.round}.npz"
