"""Differential privacy in a real federation: ε per round matches dp_accounting, a facility without budget
declines, an exhausted facility is no longer scheduled, and the authority's privacy ledger survives a
restart. One federation (authority, 4 validators, 1 fog, 5 facilities, leader; plain sums) for ~40-70 s."""

from __future__ import annotations

import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hfl.demo import Federation, Proc
from hfl.ledger import LedgerStore
from hfl.privacy import compute_epsilon
from hfl.privacy.federation import plan_dp
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc, leader_pb2, leader_pb2_grpc
from hfl.rpc.tls import sync_channel
from tests.integration.helpers import client_tls, start_federation, wait_for_round

pytestmark = pytest.mark.integration

ROUNDS = 3
EPSILON, DELTA = 2.0, 1e-5
DP_ENV = {
    "HFL_DP_EPSILON": str(EPSILON),
    "HFL_DP_DELTA": str(DELTA),
    "HFL_DP_MECHANISM": "gaussian",
    "HFL_DP_ACCOUNTANT": "rdp",
    # The budget covers exactly ROUNDS trainings (no spare ones for retries), and the leader is asked for
    # one round more: it must end by itself once every facility has used up its budget.
    "HFL_DP_ROUNDS": str(ROUNDS),
    "HFL_DP_SPARE_ROUNDS": "0",
}
ONE_ROUND = "facility-04"  # its own budget covers exactly one round
NO_ROUND = "facility-05"  # its own budget covers no round: it declines round 1


def authority_env() -> dict[str, str]:
    return {"HFL_COMMITTEE_SIZE": "4", "HFL_BUCKET_SIZE": "3", "HFL_MIN_FACILITIES": "3", **DP_ENV}


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    plan = plan_dp(epsilon=EPSILON, delta=DELTA, rounds=ROUNDS)  # what the leader will calibrate
    one, two = plan.epsilon_after_rounds(1), plan.epsilon_after_rounds(2)
    budgets = {ONE_ROUND: plan.release_epsilon + (one + two) / 2, NO_ROUND: plan.release_epsilon + one / 2}
    out = tmp_path_factory.mktemp("dpfed")
    nodes = [f"facility-{i + 1:02d}" for i in range(5)]
    fed, procs = start_federation(
        out,
        facilities=5,
        fogs=1,
        validators=4,
        rounds=ROUNDS + 1,
        min_facilities=3,
        authority_env=DP_ENV,
        facility_env=lambda i: {
            "HFL_SECAGG": "false",  # a facility takes plain rounds only when told it may
            **({"HFL_DP_BUDGET": repr(budgets[nodes[i]])} if nodes[i] in budgets else {}),
        },
        leader_env={"HFL_SECAGG": "false", **DP_ENV},
    )
    try:
        wait_for_round(procs["leader"].info["address"], ROUNDS, limit_s=300)
        yield fed, procs, out
    finally:
        fed.stop_all()


def round_events(fed: Federation, leader: str) -> list[leader_pb2.WatchRoundsResponse]:
    with sync_channel(leader, fed.operator()) as ch:
        stream = leader_pb2_grpc.LeaderServiceStub(ch).WatchRounds(
            leader_pb2.WatchRoundsRequest(), timeout=60
        )
        return [e for e in stream if not e.done and e.committed]


def test_epsilon_per_round_matches_dp_accounting(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    fed, procs, _ = federation
    plan = procs["leader"].info["dp"]
    events = round_events(fed, procs["leader"].info["address"])
    assert [e.round for e in events] == [1, 2, 3]
    reported = [e.epsilon for e in events]
    assert reported == sorted(reported) and reported[0] < reported[-1]
    for r, eps in enumerate(reported, start=1):
        expected = (
            compute_epsilon(
                "gaussian",
                plan["noise_multiplier"],
                plan["sampling_rate"],
                plan["steps_per_round"] * r,
                DELTA,
                "rdp",
            )
            + plan["release_epsilon"]
        )
        assert eps == pytest.approx(expected, rel=1e-9)
    assert reported[-1] <= EPSILON


def test_training_ends_when_every_budget_is_used_up(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    """Asked for ROUNDS + 1 rounds with a budget for ROUNDS: the leader says why it stopped, and ends."""
    fed, procs, _ = federation
    with sync_channel(procs["leader"].info["address"], fed.operator()) as ch:
        stream = leader_pb2_grpc.LeaderServiceStub(ch).WatchRounds(
            leader_pb2.WatchRoundsRequest(), timeout=60
        )
        last = list(stream)[-1]
    assert last.done and not last.committed and last.round == ROUNDS
    assert last.detail.startswith(f"training ended after round {ROUNDS}: every facility")
    assert "used up its privacy budget" in last.detail


def test_budgets_are_enforced(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    _fed, procs, out = federation
    declined = procs[NO_ROUND].log_file.read_text()
    assert "declining round 1" in declined and "sends no update" in declined
    assert "trained with differential privacy" not in declined
    one = procs[ONE_ROUND].log_file.read_text()
    assert one.count("trained with differential privacy") == 1 and "budget reached" in one
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        members = [{m for group in store.block(r).header.extra["members"] for m in group} for r in (1, 2, 3)]
    assert ONE_ROUND in members[0] and NO_ROUND not in members[0]
    for later in members[1:]:
        assert ONE_ROUND not in later and NO_ROUND not in later and len(later) == 3


def spend(address: str, tls: object) -> authority_pb2.GetPrivacySpendResponse:
    with sync_channel(address, tls) as ch:  # type: ignore[arg-type]
        return authority_pb2_grpc.AuthorityServiceStub(ch).GetPrivacySpend(
            authority_pb2.GetPrivacySpendRequest(), timeout=10
        )


# ------------------------------------------------------------------ what each role can see (issue 18)
def test_a_facility_sees_only_its_own_privacy_spend(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    fed, procs, out = federation
    address = procs["authority"].info["address"]
    everything = spend(address, fed.operator())
    assert len(everything.epsilon_spent) == 5  # the operator sees every facility
    own = spend(address, client_tls(out, "facility", "facility-01"))
    assert dict(own.epsilon_spent) == {"facility-01": everything.epsilon_spent["facility-01"]}
    assert set(own.exhausted) <= {"facility-01"}
    for role, node in (("fog", "fog-1"), ("validator", "validator-1"), ("leader", "leader")):
        with pytest.raises(grpc.RpcError) as err:
            spend(address, client_tls(out, role, node))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, role


def test_the_node_list_is_for_the_operator(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    fed, procs, out = federation
    address = procs["authority"].info["address"]

    def nodes(tls: object) -> authority_pb2.ListNodesResponse:
        with sync_channel(address, tls) as ch:  # type: ignore[arg-type]
            return authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
                authority_pb2.ListNodesRequest(), timeout=10
            )

    registered = {n.node_id for n in nodes(fed.operator()).nodes}
    assert registered == set(procs) - {"authority"}  # the operator sees every registered node
    fogs = sorted(n for n in procs if n.startswith("fog-"))
    for role, node in (("facility", "facility-02"), ("validator", "validator-1"), ("fog", "fog-1")):
        seen = nodes(client_tls(out, role, node))
        # its own entry and the fogs (where facilities connect to), no other site's entry
        assert sorted({n.node_id for n in seen.nodes}) == sorted({node, *fogs}), role
        assert all(n.role == "fog" for n in seen.nodes if n.node_id != node)
        assert not seen.quarantined and not seen.inactive


def test_health_watch_streams_the_serving_status(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    fed, procs, _out = federation
    for name in ("authority", "leader", "fog-1", "validator-1"):  # a facility serves nothing
        with sync_channel(procs[name].info["address"], fed.operator()) as ch:
            stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            first = next(iter(stream))
            stream.cancel()
        assert first.status == health_pb2.HealthCheckResponse.SERVING, name


def _listening(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a TCP socket listening on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(host)
    return found


def test_metrics_listen_on_the_same_interface_as_grpc(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    _fed, procs, _out = federation
    for name in ("authority", "leader", "fog-1", "validator-1", "facility-01"):
        port = int(procs[name].info["metrics_port"])
        if name != "facility-01":  # a facility has no gRPC port: it only dials out
            assert procs[name].info["address"].startswith("127.0.0.1:")
        assert _listening(port) == {"0100007F"}, name  # 127.0.0.1 only, not 0.0.0.0


def test_state_folders_and_databases_are_private(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    _fed, _procs, out = federation
    for name in ("authority", "leader", "fog-1", "validator-1", "facility-01"):
        assert stat.S_IMODE((out / "state" / name).stat().st_mode) == 0o700, name
    databases = list((out / "state").rglob("*.db"))
    assert {p.name for p in databases} >= {"ledger.db", "authority.db", "privacy.db", "ca.db"}
    for db in databases:
        assert stat.S_IMODE(db.stat().st_mode) == 0o600, db


def test_status_says_who_has_used_up_their_budget(
    federation: tuple[Federation, dict[str, Proc], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from hfl.status import show_status

    _fed, procs, out = federation
    cert_dir = out / "state" / "authority" / "operator"
    assert show_status(None, None, procs["authority"].info["address"], str(cert_dir)) == 0
    text = capsys.readouterr().out
    assert "privacy budget used up, no longer training" in text
    assert all(f"facility-0{i}" in text.split("used up")[1] for i in range(1, 6))


def test_privacy_ledger_survives_authority_restart(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    fed, procs, out = federation
    auth = procs["authority"]
    before = spend(auth.info["address"], fed.operator())
    # After all planned rounds every facility has spent (almost) its whole budget: none can afford more.
    everyone = {f"facility-{i:02d}" for i in range(1, 6)}
    assert set(before.epsilon_spent) == everyone and set(before.exhausted) == everyone
    assert (
        before.epsilon_spent[NO_ROUND]
        == 0.0
        < before.epsilon_spent[ONE_ROUND]
        < before.epsilon_spent["facility-01"]
        <= EPSILON
    )
    auth.popen.send_signal(signal.SIGKILL)
    auth.popen.wait(timeout=10)
    again = fed.start("authority", "authority", authority_env())
    fed.wait_ready([again], label="authority")
    after = spend(again.info["address"], fed.operator())
    assert dict(after.epsilon_spent) == pytest.approx(dict(before.epsilon_spent), rel=0, abs=0)
    assert set(after.exhausted) == everyone
    # The restarted authority still refuses to schedule them.
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        head = store.head()
    assert head is not None
    with (
        sync_channel(again.info["address"], client_tls(out, "leader", "leader")) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        authority_pb2_grpc.AuthorityServiceStub(ch).GetRoundConfig(
            authority_pb2.GetRoundConfigRequest(round=ROUNDS + 1, attempt=0, ledger_head=head.hash),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "(5 used up, 0 quarantined)" in str(err.value.details())
