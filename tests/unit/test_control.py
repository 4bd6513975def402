"""The operator's training controls (pure) and their record (SQLite): every change needs a reason, nonsense
is refused in one plain sentence and changes nothing, and both survive a restart."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hfl.control import OperatorAction, TrainingControl, apply
from hfl.errors import InvalidInput
from hfl.oplog import OperatorLog
from hfl.robust.reputation import Reputation, ReputationError


def test_pause_resume_stop_and_interval() -> None:
    s = apply(TrainingControl(), "pause", "  checking  a site ", committed_round=3)
    assert s.paused and s.pause_reason == "checking a site"
    s = apply(s, "stop_after", "end of the study", committed_round=3, round_=10)
    s = apply(s, "round_interval", "night only", committed_round=3, seconds=60)
    s = apply(s, "resume", "site checked", committed_round=3)
    assert s == TrainingControl(paused=False, stop_after=10, round_interval_s=60.0)
    assert s.last_round(20) == 10 and s.last_round(0) == 10 and s.last_round(5) == 5
    assert s.interval(0.0) == 60.0 and TrainingControl().interval(2.5) == 2.5
    cleared = apply(
        apply(s, "stop_after", "as planned", committed_round=3, round_=0),
        "round_interval",
        "x",
        committed_round=3,
        seconds=-1,
    )
    assert cleared == TrainingControl()
    assert TrainingControl.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("state", "action", "kw", "refusal"),
    [
        (TrainingControl(), "pause", {"reason": ""}, "give the reason"),
        (TrainingControl(), "pause", {"reason": "x" * 501}, "at most 500"),
        (TrainingControl(paused=True, pause_reason="a"), "pause", {}, "already paused"),
        (TrainingControl(), "resume", {}, "not paused"),
        (TrainingControl(), "stop_after", {"round_": 2}, "round 3 is already committed"),
        (TrainingControl(), "stop_after", {"round_": 2**60}, "a round number from 1"),
        (TrainingControl(), "stop_after", {"round_": 40, "planned": 6}, "planned to end after round 6"),
        (TrainingControl(), "round_interval", {"seconds": math.inf}, "0 to 604800 seconds"),
        (TrainingControl(), "round_interval", {"seconds": math.nan}, "0 to 604800 seconds"),
        (TrainingControl(), "explode", {}, "unknown control"),
        (TrainingControl(), "pause", {"ended": "all planned rounds are done"}, "training has already ended"),
        (TrainingControl(), "round_interval", {"seconds": 10, "ended": "stopped"}, "nothing to control"),
        (TrainingControl(), "stop_after", {"round_": 5, "ended": "stopped"}, "already ended \\(stopped\\)"),
    ],
)
def test_nonsense_is_refused_in_plain_words(
    state: TrainingControl, action: str, kw: dict[str, object], refusal: str
) -> None:
    args: dict[str, object] = {"reason": "because", **kw}
    with pytest.raises(InvalidInput, match=refusal):
        apply(state, action, committed_round=3, **args)  # type: ignore[arg-type]


def test_the_record_and_the_control_survive_a_restart(tmp_path: Path) -> None:
    log = OperatorLog(tmp_path / "operator.db")
    log.record("operator", "pause", "", "checking", "done")
    log.record("operator", "quarantine", "facility-03", "odd updates", "quarantined")
    log.set_control(TrainingControl(paused=True, pause_reason="checking", stop_after=7))
    log.close()
    again = OperatorLog(tmp_path / "operator.db")
    assert [(a.action, a.target) for a in again.actions()] == [("pause", ""), ("quarantine", "facility-03")]
    assert again.control() == TrainingControl(paused=True, pause_reason="checking", stop_after=7)
    assert [a.action for a in again.actions(last=1)] == ["quarantine"]
    assert (tmp_path / "operator.db").stat().st_mode & 0o077 == 0  # private to the service


def test_quarantine_by_hand_and_release() -> None:
    rep = Reputation()
    rep.quarantine("facility-03")
    assert rep.quarantined == {"facility-03"}
    with pytest.raises(ReputationError, match="already quarantined"):
        rep.quarantine("facility-03")
    rep.release("facility-03")
    assert rep.quarantined == frozenset() and Reputation.from_dict(rep.to_dict()).quarantined == frozenset()


def test_an_action_without_a_target_is_listed_without_a_gap() -> None:
    from hfl.operator_cli import action_line

    at = "2026-12-05T19:47:26+00:00"
    paused = OperatorAction(at, "operator", "pause", "", "checking a site's data", "done")
    assert action_line(paused) == f"{at}  operator: pause (checking a site's data) -> done"
    stop = OperatorAction(at, "operator", "stop_after", "40", "end of the study", "done")
    assert action_line(stop) == f"{at}  operator: stop_after 40 (end of the study) -> done"
