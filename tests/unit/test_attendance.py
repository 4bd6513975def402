"""Facilities that keep missing rounds stop being scheduled until they register again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, NodeInfo
from hfl.errors import InvalidInput
from hfl.proto.v1 import authority_pb2
from hfl.rpc import serde
from hfl.rpc.settings import Settings
from hfl.schedule import Attendance
from services.authority.registry import Registry
from services.authority.service import Authority
from services.fog.secure import no_answer
from services.fog.service import PlainBucket

ALL = ("a", "b", "c", "d")


def test_three_absences_in_a_row_make_a_facility_inactive() -> None:
    att = Attendance(3)
    assert att.observe(1, ALL, ["d"]) == [] and att.missed("d") == 1
    assert att.observe(2, ALL, ["d"]) == []
    assert att.observe(3, ALL, ["c", "d"]) == ["d"]
    assert att.inactive == {"d"} and att.missed("c") == 1
    assert att.observe(4, ("a", "b", "c"), []) == [] and att.missed("c") == 0  # present again: restarts
    assert att.present("d") is True and att.inactive == frozenset() and att.missed("d") == 0
    assert att.present("d") is False


def test_absences_must_be_in_a_row() -> None:
    att = Attendance(3)
    for rnd, absent in enumerate((["a"], ["a"], [], ["a"], ["a"]), 1):
        assert att.observe(rnd, ALL, absent) == []
    assert att.inactive == frozenset()


def test_limit_zero_never_leaves_anyone_out() -> None:
    att = Attendance(0)
    for rnd in range(1, 11):
        assert att.observe(rnd, ALL, ["a"]) == []
    assert att.inactive == frozenset() and att.missed("a") == 10


def test_state_round_trips_under_the_current_limit() -> None:
    att = Attendance(2)
    att.observe(1, ALL, ["a", "b"])
    att.observe(2, ALL, ["a"])
    back = Attendance.from_dict(att.to_dict(), limit=2)
    assert back.to_dict() == att.to_dict() and back.inactive == {"a"}
    assert Attendance.from_dict(att.to_dict(), limit=5).limit == 5
    with pytest.raises(ValueError, match="already counted"):  # the replay guard survives a restart
        back.observe(2, ALL, ["b"])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="absence limit"):
        Attendance(bad)  # type: ignore[arg-type]


def test_bad_or_replayed_observations_change_nothing() -> None:
    att = Attendance()
    with pytest.raises(ValueError, match="not scheduled"):
        att.observe(1, ["a"], ["z"])
    att.observe(5, ALL, ["a"])
    before = att.to_dict()
    for rnd in (5, 4):
        with pytest.raises(ValueError, match="already counted"):
            att.observe(rnd, ALL, ["a"])
    assert att.to_dict() == before and att.missed("a") == 1
    with pytest.raises(ValueError, match="malformed"):
        Attendance.from_dict({"missed": [], "inactive": []}, limit=3)


# --- the authority ------------------------------------------------------------------------------------


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    registry = Registry(tmp_path / "registry.db")
    settings = Settings(role="authority", tls=False, state_dir=tmp_path, secagg=False, committee_size=1)
    a = Authority(settings, SigningKey.generate(), registry)
    for node in [
        *(
            NodeInfo(f"facility-{i}", "facility", f"127.0.0.1:{i}", SigningKey.generate().public_bytes)
            for i in range(4)
        ),
        NodeInfo("fog-1", "fog", "127.0.0.1:90", SigningKey.generate().public_bytes),
        NodeInfo("validator-1", "validator", "127.0.0.1:91", SigningKey.generate().public_bytes),
    ]:
        registry.upsert(node)
    yield a
    registry.close()


def _round(a: Authority, rnd: int, absent: list[str]) -> set[str]:
    """Schedule round ``rnd`` and report ``absent``; returns who was scheduled."""
    config = a.make_config(rnd, 0, bytes(32))
    scheduled = {m for b in config.buckets for m in b.members}
    report = authority_pb2.RoundReport(absent=sorted(absent))
    req = authority_pb2.ReportRoundRequest(round=rnd, attempt=0, committed=True, report=report)
    asyncio.run(a.ReportRound(req, None))  # type: ignore[arg-type]
    return scheduled


def test_authority_leaves_out_a_missing_facility_until_it_registers_again(authority: Authority) -> None:
    for rnd in (1, 2, 3):
        assert "facility-3" in _round(authority, rnd, ["facility-3"])
    assert "facility-3" not in _round(authority, 4, [])
    listed = asyncio.run(authority.ListNodes(authority_pb2.ListNodesRequest(), None))  # type: ignore[arg-type]
    assert list(listed.inactive) == ["facility-3"]
    again = Authority(authority.settings, authority.key, authority.registry)  # survives a restart
    assert again.attendance.inactive == {"facility-3"}
    node = authority.registry.get("facility-3")
    assert node is not None
    asyncio.run(again.Register(authority_pb2.RegisterRequest(node=serde.node_to_proto(node)), None))  # type: ignore[arg-type]
    assert "facility-3" in _round(again, 5, [])


def test_report_naming_an_unscheduled_absentee_is_refused(authority: Authority) -> None:
    authority.make_config(1, 0, bytes(32))
    req = authority_pb2.ReportRoundRequest(
        round=1, attempt=0, report=authority_pb2.RoundReport(absent=["facility-99"])
    )
    with pytest.raises(InvalidInput, match="not scheduled"):
        asyncio.run(authority.ReportRound(req, None))  # type: ignore[arg-type]
    assert authority.attendance.to_dict()["missed"] == {}


def test_report_without_a_proposal_counts_attendance_only_and_cannot_be_replayed(
    authority: Authority,
) -> None:
    """A round where no bucket sum arrived: the leader reports who never answered, but no flags or votes;
    reputation must not read it as a clean round (no decay), and the same report twice is refused."""
    _round(authority, 1, ["facility-3"])
    assert authority.reputation.to_dict()["last_round"] is None  # reputation saw nothing
    req = authority_pb2.ReportRoundRequest(
        round=1, attempt=0, report=authority_pb2.RoundReport(absent=["facility-3"])
    )
    with pytest.raises(InvalidInput, match="already counted"):
        asyncio.run(authority.ReportRound(req, None))  # type: ignore[arg-type]
    assert authority.attendance.missed("facility-3") == 1


# --- how fogs tell "did not answer at all" from "answered no" ----------------------------------------


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


@pytest.mark.parametrize(
    ("exc", "silent"),
    [
        (TimeoutError(), True),
        (_RpcError(grpc.StatusCode.UNAVAILABLE), True),
        (_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (_RpcError(grpc.StatusCode.PERMISSION_DENIED), False),  # declined (e.g. privacy budget)
        (_RpcError(grpc.StatusCode.INVALID_ARGUMENT), False),
        (ValueError("malformed answer"), False),
    ],
)
def test_no_answer_is_only_silence(exc: BaseException, silent: bool) -> None:
    assert no_answer(exc) is silent


def test_plain_bucket_stops_waiting_for_an_unreachable_member_and_reports_it() -> None:
    bucket = Bucket("b0", "fog-1", ("a", "b", "c"), 2)
    plain = PlainBucket(bucket, dim=2)
    plain.add("a", np.ones(2))
    plain.lost("c")
    assert not plain.complete.is_set()
    plain.lost("b")
    assert plain.complete.is_set()
    result = plain.result()
    assert result.members == ("a",) and result.unreachable == ("b", "c") and result.dropped == ("b", "c")
    late = PlainBucket(bucket, dim=2)
    late.lost("a")
    late.add("a", np.ones(2))  # slow to answer, but its update came: not absent
    assert late.result().unreachable == ()
    back = serde.bucket_result_from_proto(serde.bucket_result_to_proto(result), expected_length=2)
    assert back.unreachable == ("b", "c")


def test_no_round_once_every_schedulable_facility_has_used_up_its_budget(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Then no later round can train: BudgetSpent (OUT_OF_RANGE on the wire, so a leader with a planned
    number of rounds ends); while someone with budget left could still come back, only NotReady."""
    from hfl.errors import BudgetSpent, NotReady
    from hfl.rpc.errors import status_for
    from services.authority.privacy import PrivacyBook

    spent = {"facility-0", "facility-1", "facility-2"}
    monkeypatch.setattr(PrivacyBook, "exhausted", property(lambda _self: frozenset(spent)))
    monkeypatch.setattr(Attendance, "inactive", property(lambda _self: frozenset({"facility-3"})))  # away
    with pytest.raises(NotReady, match="no facility can take part") as waiting:
        authority.make_config(1, 0, bytes(32))
    assert not isinstance(waiting.value, BudgetSpent)
    spent.add("facility-3")
    with pytest.raises(BudgetSpent, match=r"used up its privacy budget \(4 used up, 0 quarantined\)") as end:
        authority.make_config(1, 0, bytes(32))
    assert status_for(end.value)[0] == grpc.StatusCode.OUT_OF_RANGE
    spent.discard("facility-3")
    monkeypatch.setattr(Authority, "quarantined", property(lambda _self: frozenset({"facility-3"})))
    with pytest.raises(BudgetSpent, match=r"\(3 used up, 1 quarantined\)"):
        authority.make_config(1, 0, bytes(32))


def test_registration_log_names_an_address_only_when_there_is_one(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    facility = NodeInfo("facility-9", "facility", "", SigningKey.generate().public_bytes, specialty="clinic")
    fog = NodeInfo("fog-2", "fog", "127.0.0.1:92", SigningKey.generate().public_bytes)
    with caplog.at_level("INFO"):
        for node in (facility, fog):
            request = authority_pb2.RegisterRequest(node=serde.node_to_proto(node))
            asyncio.run(authority.Register(request, None))  # type: ignore[arg-type]
    assert "registered facility facility-9 (clinic; dials out, listens on no port)" in caplog.messages
    assert "registered fog fog-2 at 127.0.0.1:92" in caplog.messages
