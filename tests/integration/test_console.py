"""The console (Streamlit's own AppTest) against a live federation on loopback: real gRPC, operator mTLS.

What each view shows must equal what `hfl status` and the leader/authority say; nothing is shown before
signing in; a wrong password is refused and five lock the console."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from hfl.demo import Federation
from hfl.domain import RoundEvent
from hfl.ledger import LedgerStore
from hfl.pki.ca import open_ca
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.rpc import serde
from hfl.rpc.tls import AUTHORITY, LEADER, operator_for_run, sync_channel
from hfl.status import show_status
from tests.integration.helpers import client_tls, start_federation, wait_for_round

APP = str(Path(__file__).resolve().parents[2] / "hfl" / "console" / "app.py")
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("console")
    fed: Federation
    fed, procs = start_federation(out, facilities=4, fogs=2, validators=4, rounds=2)
    try:
        (out / "endpoints.json").write_text(json.dumps(fed.endpoints()))
        wait_for_round(procs["leader"].info["address"], 2)
        yield out
    finally:
        fed.stop_all()


@pytest.fixture(autouse=True)
def _env(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFL_CONSOLE_PASSWORD", PASSWORD)
    monkeypatch.setenv("HFL_CONSOLE_RUN", str(run_dir))
    st.cache_resource.clear()  # a fresh login (and lock-out counter) for each test


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


def _signed_in() -> AppTest:
    at = _app()
    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    return at


def _view(at: AppTest, name: str) -> AppTest:
    at.sidebar.radio[0].set_value(name).run()
    assert not at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _status_lines(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert show_status(str(run_dir), None, None) == 0
    return capsys.readouterr().out


def test_nothing_is_shown_before_signing_in() -> None:
    at = _app()
    assert [t.value for t in at.title] == ["hfl console: sign in"]
    assert not at.sidebar.radio and not at.metric and not at.table and not at.header


def test_wrong_password_then_lock_out() -> None:
    at = _app()
    for _ in range(4):
        at.text_input[0].input("wrong")
        at.button[0].click().run()
        assert [e.value for e in at.error] == ["Wrong password."]
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert "locked" in at.error[0].value
    at.text_input[0].input(PASSWORD)
    at.button[0].click().run()
    assert "Too many wrong passwords" in at.error[0].value
    assert not at.sidebar.radio


def test_views_match_the_federation(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = _status_lines(run_dir, capsys)
    at = _signed_in()
    assert not at.warning, [w.value for w in at.warning]
    assert list(at.sidebar.radio[0].options) == [
        "Federation map",
        "Training",
        "Privacy",
        "Consensus and ledger",
        "Security",
        "Controls",
    ]

    # Federation map: the same members by role as `hfl status` ("4 facilities, 2 fogs, ...").
    at = _view(at, "Federation map")
    subheaders = {s.value for s in at.subheader}
    for role, count in (("Facility", 4), ("Fog", 2), ("Validator", 4)):
        assert f"{role} ({count})" in subheaders
    assert "4 facilities, 2 fogs" in status
    facilities = at.table[[s.value for s in at.subheader].index("Facility (4)")].value
    assert sorted(facilities["name"]) == [f"facility-0{i}" for i in range(1, 5)]
    assert set(facilities["specialty"]) != {"not given"}

    # Training and ledger: the leader's own numbers, as `hfl status` prints them.
    at = _view(at, "Training")
    rounds = int(_metrics(at)["Rounds committed"])
    assert rounds >= 2 and f"{rounds} rounds committed" in status
    assert all(at.caption), "every number has a one-line explanation"
    at = _view(at, "Consensus and ledger")
    head = _metrics(at)["Ledger head"]
    assert f"ledger head {head}" in status
    at.button[0].click().run()  # "Check the ledger": the same checks as `hfl ledger verify`
    assert at.success[0].value.startswith(f"Ledger OK: {rounds + 1} blocks")

    # Privacy and security render without errors and show no quarantine in a healthy run.
    at = _view(at, "Privacy")
    assert at.header[0].value == "Privacy"
    assert any("Differential privacy is off" in w.value for w in at.warning)
    at = _view(at, "Security")
    assert _metrics(at)["Quarantined facilities"] == "0" and not at.error


def _leader_events(run_dir: Path) -> list[RoundEvent]:
    leader = next(
        r["address"] for r in json.loads((run_dir / "endpoints.json").read_text()) if r["role"] == "leader"
    )
    with sync_channel(leader, operator_for_run(run_dir), peer=LEADER) as ch:
        stream = leader_pb2_grpc.LeaderServiceStub(ch).WatchRounds(
            leader_pb2.WatchRoundsRequest(replay_only=True), timeout=10
        )
        return [serde.event_from_proto(m) for m in stream if not m.done]


def test_round_history_matches_the_leader_and_the_ledger(run_dir: Path) -> None:
    """Training, votes, committee and buckets come from the leader's own round events; the newest block's
    hash and signers are the ledger's."""
    events = _leader_events(run_dir)
    committed = [e for e in events if e.committed]
    assert len(committed) >= 2
    at = _view(_signed_in(), "Training")
    table = at.dataframe[0].value
    assert list(table["round"]) == [e.round for e in events]
    assert list(table["committed"]) == [e.committed for e in events]
    assert _metrics(at)["Accuracy"] == f"{committed[-1].accuracy:.3f}"
    assert committed[-1].clinical is not None
    assert _metrics(at)["ROC AUC"] == f"{committed[-1].clinical.auc:.3f}"

    at = _view(at, "Federation map")
    buckets = at.table[-1].value
    latest = [e for e in events if e.buckets][-1]
    assert list(buckets["bucket"]) == [b.bucket_id for b in latest.buckets]
    assert sorted(m for ms in buckets["members"] for m in ms.split(", ")) == sorted(
        m for b in latest.buckets for m in b.members
    )

    at = _view(at, "Consensus and ledger")
    assert _metrics(at)["Ledger height"] == str(committed[-1].round + 1)
    votes = at.dataframe[0].value
    assert len(votes) == sum(len(e.committee) for e in events)
    with LedgerStore(run_dir / "state" / "leader" / "ledger.db") as store:
        head = store.head()
    assert head is not None and head.hash == committed[-1].block_hash
    newest = dict(zip(at.table[0].value["field"], at.table[0].value["value"], strict=True))
    assert newest["block hash"] == head.hash.hex()
    assert set(newest["signed by"].split(", ")) == {v.validator_id for v in head.votes}


def test_security_view_matches_the_authority(run_dir: Path) -> None:
    """Suspicion for every scheduled facility, every node's certificate and every enrolment, as the
    authority's certificate database holds them; only the operator may ask."""
    at = _view(_signed_in(), "Security")
    assert _metrics(at)["Quarantined facilities"] == "0"
    frames = [f.value for f in at.dataframe]
    suspicion, records, certificates = frames[0], frames[1], frames[2]
    assert sorted(suspicion["facility"]) == [f"facility-0{i}" for i in range(1, 5)]
    assert all(s == 0 for s in suspicion["suspicion"])  # an honest run: nothing flagged
    ca = open_ca(run_dir / "state" / "authority")
    assert sorted(certificates["node"]) == sorted(c["node_id"] for c in ca.certificates())
    assert all(h > 0 for h in certificates["hours left"])
    enrolled = [r for r in records["what"] if r.startswith("enrolled")]
    assert len(enrolled) == len(ca.enrolments()) >= 4 + 2 + 4  # facilities, fogs, validators at least
    authority = next(
        r["address"] for r in json.loads((run_dir / "endpoints.json").read_text()) if r["role"] == "authority"
    )
    for role, node in (("facility", "facility-01"), ("validator", "validator-1")):
        with (
            sync_channel(authority, client_tls(run_dir, role, node), peer=AUTHORITY) as ch,
            pytest.raises(grpc.RpcError) as refused,
        ):
            authority_pb2_grpc.AuthorityServiceStub(ch).GetSecurityReport(
                authority_pb2.GetSecurityReportRequest(), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
