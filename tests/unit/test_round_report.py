"""What the authority makes of the leader's round report (hfl/round/report.py): it names only the round's
buckets and registered fogs, refused members take the blame alone, absences are counted once, and the
registry keeps the round's flags, votes and suspicion."""

from __future__ import annotations

import pytest

from hfl.domain import RoundReport
from hfl.errors import InvalidInput
from hfl.robust.reputation import Reputation
from hfl.round.report import check_report, round_record, take_report
from hfl.schedule import Attendance

BUCKETS = {"b0": ["a", "b", "c"], "b1": ["d", "e", "f"]}
FOGS = {"fog-1", "fog-2"}


@pytest.mark.parametrize(
    "report",
    [
        RoundReport(flags={"b9": "norm"}),  # not a bucket of the round
        RoundReport(flags={"b0": "loud"}),  # not a kind of flag
    ],
)
def test_flags_outside_the_round_are_refused(report: RoundReport) -> None:
    with pytest.raises(InvalidInput, match="flags buckets that were not part of the round"):
        check_report(report, BUCKETS, FOGS)


@pytest.mark.parametrize(
    "report", [RoundReport(fogs_down=("fog-9",)), RoundReport(fogs_up=("fog-1", "fog-9"))]
)
def test_unregistered_fogs_are_refused(report: RoundReport) -> None:
    with pytest.raises(InvalidInput, match="fogs that are not registered"):
        check_report(report, BUCKETS, FOGS)


def test_a_sound_report_passes_the_check() -> None:
    check_report(
        RoundReport(flags={"b1": "outlier"}, fogs_down=("fog-1",), fogs_up=("fog-2",)), BUCKETS, FOGS
    )


def test_a_refused_member_is_its_own_flagged_group_and_absences_are_counted() -> None:
    attendance = Attendance(1)
    report = RoundReport(flags={"b0": "screen"}, refused=("d",), absent=("f",))
    evidence = take_report(report, BUCKETS, FOGS, attendance, 3001)
    assert evidence.groups == {"b0": ["a", "b", "c"], "b1": ["e", "f"], "refused:d": ["d"]}
    assert evidence.flags == {"b0": "screen", "refused:d": "norm"}
    assert evidence.scheduled == ["a", "b", "c", "d", "e", "f"]
    assert evidence.gone == ["f"] and attendance.inactive == {"f"}  # a limit of one missed round


def test_a_replayed_or_inconsistent_report_is_refused_and_changes_nothing() -> None:
    attendance = Attendance(2)
    take_report(RoundReport(absent=("a",)), BUCKETS, FOGS, attendance, 3001)
    with pytest.raises(InvalidInput, match="inconsistent: attendance for observation 3001 was already"):
        take_report(RoundReport(absent=("a",)), BUCKETS, FOGS, attendance, 3001)
    with pytest.raises(InvalidInput, match="inconsistent: refused facility 'z'"):
        take_report(RoundReport(refused=("z",), absent=("a",)), BUCKETS, FOGS, attendance, 3002)
    with pytest.raises(InvalidInput, match="inconsistent: absent facilities that were not scheduled: z"):
        take_report(RoundReport(absent=("z",)), BUCKETS, FOGS, attendance, 3002)
    assert attendance.missed("a") == 1 and not attendance.inactive


def test_the_record_keeps_flags_votes_and_each_scheduled_facilitys_suspicion() -> None:
    reputation = Reputation()
    evidence = take_report(RoundReport(flags={"b0": "norm"}), BUCKETS, FOGS, Attendance(3), 5000)
    reputation.observe(5000, evidence.groups, evidence.flags)
    record = round_record(0, True, b"\x01\xff", evidence, {"v1": True, "v2": None}, [], reputation)
    assert record["attempt"] == 0 and record["committed"] is True and record["block_hash"] == "01ff"
    assert record["flags"] == {"b0": "norm"} and record["votes"] == {"v1": True, "v2": None}
    assert record["newly_quarantined"] == []
    suspicion = record["suspicion"]
    assert isinstance(suspicion, dict) and list(suspicion) == ["a", "b", "c", "d", "e", "f"]
    assert suspicion["a"] > 0 and suspicion["d"] == 0  # the flagged bucket's members carry the evidence
