"""The operator's controls on a live federation (real gRPC, mutual TLS), through the console (Streamlit's
AppTest), the command line and the wire: pause really stops new rounds and resume starts them again,
stop-after ends training, a facility is quarantined and released by hand (never without a reason), a
token is issued once, the model downloads, every action is recorded, and only the operator may do any
of it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from hfl.console import data
from hfl.demo import Federation
from hfl.learning.export import from_npz
from hfl.operator_cli import control_training, issue_token, quarantine_facility, show_actions
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc.tls import AUTHORITY, LEADER, sync_channel
from tests.integration.helpers import client_tls, leader_status, start_federation, wait_for_round

pytestmark = pytest.mark.integration

APP = str(Path(__file__).resolve().parents[2] / "hfl" / "console" / "app.py")
PASSWORD = "operator controls test"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("controls")
    fed: Federation
    fed, _procs = start_federation(out, facilities=5, fogs=1, validators=4, rounds=0)  # runs until stopped
    try:
        (out / "endpoints.json").write_text(json.dumps(fed.endpoints()))
        wait_for_round(_address(out, "leader"), 1)
        yield out
    finally:
        fed.stop_all()


def _address(run: Path, role: str) -> str:
    return next(r["address"] for r in json.loads((run / "endpoints.json").read_text()) if r["role"] == role)


def _conn(run: Path) -> data.Connection:
    return data.Connection.from_args(str(run))


def _until(check: object, what: str, limit_s: float = 60.0) -> None:
    """Wait for ``check()`` (a bound on waiting, not an assertion on speed)."""
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.3)


def test_only_the_operator_may_steer(run_dir: Path) -> None:
    calls = [
        (
            "leader",
            LEADER,
            leader_pb2_grpc.LeaderServiceStub,
            "ControlTraining",
            leader_pb2.ControlTrainingRequest(),
        ),
        (
            "leader",
            LEADER,
            leader_pb2_grpc.LeaderServiceStub,
            "ListOperatorActions",
            pb.ListOperatorActionsRequest(),
        ),
        (
            "authority",
            AUTHORITY,
            authority_pb2_grpc.AuthorityServiceStub,
            "QuarantineFacility",
            authority_pb2.QuarantineFacilityRequest(node_id="facility-01", reason="x"),
        ),
        (
            "authority",
            AUTHORITY,
            authority_pb2_grpc.AuthorityServiceStub,
            "IssueEnrolmentToken",
            authority_pb2.IssueEnrolmentTokenRequest(node_id="new-site"),
        ),
        (
            "authority",
            AUTHORITY,
            authority_pb2_grpc.AuthorityServiceStub,
            "ListOperatorActions",
            pb.ListOperatorActionsRequest(),
        ),
        (
            "authority",
            AUTHORITY,
            authority_pb2_grpc.AuthorityServiceStub,
            "ReleaseFacility",
            authority_pb2.ReleaseFacilityRequest(),
        ),
    ]
    for role, node in (("facility", "facility-01"), ("validator", "validator-1")):
        tls = client_tls(run_dir, role, node)
        for service, peer, stub_class, method, request in calls:
            with (
                sync_channel(_address(run_dir, service), tls, peer=peer) as ch,
                pytest.raises(grpc.RpcError) as e,
            ):
                getattr(stub_class(ch), method)(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, method)
    assert not leader_status(_address(run_dir, "leader")).control.paused  # nothing changed


def test_pause_and_resume_from_the_console(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFL_CONSOLE_PASSWORD", PASSWORD)
    monkeypatch.setenv("HFL_CONSOLE_RUN", str(run_dir))
    st.cache_resource.clear()
    leader = _address(run_dir, "leader")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    at.sidebar.radio[0].set_value("Controls").run()
    assert not at.exception

    def apply(kind: str, reason: str) -> AppTest:
        at.radio(key="control_kind").set_value(kind)
        at.text_input(key="control_reason").input(reason)
        return at.button[0].click().run()  # the form's Apply

    apply("Pause", "")
    assert "give the reason" in at.error[0].value  # refused, nothing changed
    assert not leader_status(leader).control.paused
    apply("Pause", "checking facility-02's data")
    assert at.success[0].value.startswith("Training: paused (checking facility-02's data)")
    _until(
        lambda: leader_status(leader).state.startswith("paused by the operator"), "the leader did not pause"
    )
    paused_at = leader_status(leader).committed_round
    time.sleep(3)  # several rounds' worth of time: none may be committed while paused
    assert leader_status(leader).committed_round == paused_at
    apply("Resume", "data checked")
    assert at.success[0].value == "Training: running."
    wait_for_round(leader, paused_at + 1)
    actions = [(a.action, a.reason) for a in data._actions(_conn(run_dir))]
    assert ("pause", "checking facility-02's data") in actions and ("resume", "data checked") in actions


def test_quarantine_release_token_and_record(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, conn = str(run_dir), _conn(run_dir)
    assert quarantine_facility("facility-05", "", run, None) == 1
    assert "give the reason" in capsys.readouterr().out
    assert quarantine_facility("facility-05", "sent records from the wrong ward", run, None) == 0
    snap = data.snapshot(conn)
    assert snap.nodes is not None and "facility-05" in snap.nodes.quarantined
    ok, message = data.release(conn, "facility-05", "   ")
    assert not ok and "give the reason" in message  # a release without a reason is refused
    assert "facility-05" in data.snapshot(conn).nodes.quarantined  # type: ignore[union-attr]
    ok, message = data.release(conn, "facility-05", "the ward was mislabelled; fixed")
    assert ok and "facility-05" not in data.snapshot(conn).nodes.quarantined  # type: ignore[union-attr]
    ok, message, token = data.enrolment_token(conn, "hospital-north", 2.0)
    assert ok and len(token) >= 24 and "shown only now" in message
    capsys.readouterr()
    assert show_actions(run, None, None, None) == 0
    printed = capsys.readouterr().out
    for what in ("quarantine facility-05", "release facility-05", "enrolment token hospital-north"):
        assert what in printed
    assert token not in printed  # the token is never kept in the record
    assert issue_token("bad name with spaces", 1.0, run, None, None) == 1


def test_download_then_stop_after_a_round(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leader = _address(run_dir, "leader")
    with pytest.raises(ValueError, match="give --dataset"):  # no run summary says which data it is
        data.current_model(_conn(run_dir))
    npz, name = data.current_model(_conn(run_dir), "synthetic")
    model = from_npz(npz)
    assert name == f"model-round-{model.round}.npz" and model.round >= 1
    now = leader_status(leader).committed_round
    assert control_training("stop_after", "end of the study", str(run_dir), None, round_=now + 1) == 0
    assert f"stops after round {now + 1}" in capsys.readouterr().out
    _until(lambda: leader_status(leader).finished, "the leader did not stop")
    status = leader_status(leader)
    assert status.committed_round == now + 1
    assert status.state == f"finished: stopped after round {now + 1} by the operator"
    capsys.readouterr()
    assert control_training("pause", "too late", str(run_dir), None) == 1  # it could change nothing now
    assert "training has already ended (stopped after round" in capsys.readouterr().out
