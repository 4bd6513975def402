"""The authority's schedule (hfl/round/schedule.py) in memory: bucket sizes, Shamir thresholds,
committee and quorum for several federation sizes; left-out facilities; determinism; bad inputs."""

from __future__ import annotations

import dataclasses

import pytest

from hfl.domain import NodeInfo
from hfl.errors import BudgetSpent, ConfigError, InvalidInput, NotReady
from hfl.ledger import quorum_size
from hfl.round.schedule import (
    Federation,
    RoundPlan,
    ScheduleSettings,
    check_ready,
    draw_committee,
    schedule_round,
)
from hfl.schedule import EQUAL_BUCKETS_ROUNDS
from hfl.secagg import MIN_BUCKET_SIZE, unmask_threshold

HEAD = b"\x07" * 32
SETTINGS = ScheduleSettings(bucket_size=3, committee_size=4)


def _federation(n: int, fogs: int = 1, validators: int = 5, **left_out: frozenset[str]) -> Federation:
    fog_ids = [f"fog-{j}" for j in range(fogs)]
    return Federation(
        facilities=tuple(
            NodeInfo(f"fac-{i}", "facility", "", bytes(32), "cardiology", fog=fog_ids[i % fogs])
            for i in range(n)
        ),
        fogs=tuple(NodeInfo(f, "fog", f"{f}:1") for f in fog_ids),
        validators=tuple(
            NodeInfo(f"val-{i}", "validator", f"val-{i}:1", bytes(32)) for i in range(validators)
        ),
        **left_out,
    )


def _plan(
    fed: Federation, settings: ScheduleSettings = SETTINGS, seed_head: bytes = HEAD, round_: int = 1
) -> RoundPlan:
    """As the authority does: check readiness, draw the epoch's committee, then schedule."""
    check_ready(settings, fed)
    homes = {n.node_id: n.fog for n in fed.eligible()}
    draw = draw_committee(settings, fed.validators, {}, HEAD, max(0, settings.epoch(round_)))
    by_id = {v.node_id: v for v in fed.validators}
    return schedule_round(
        settings,
        fed,
        round_=round_,
        attempt=0,
        head=seed_head,
        homes=homes,
        committee=[by_id[str(m)] for m in draw["members"]],  # type: ignore[attr-defined]
        committee_draw=draw,
    )


@pytest.mark.parametrize(("n", "fogs"), [(3, 1), (7, 1), (12, 2), (30, 3)])
def test_buckets_thresholds_committee_and_quorum(n: int, fogs: int) -> None:
    config = _plan(_federation(n, fogs)).config
    members = [m for b in config.buckets for m in b.members]
    assert len(members) == len(set(members)) == n  # everyone once, in exactly one bucket
    for b in config.buckets:
        assert len(b.members) >= MIN_BUCKET_SIZE
        assert b.threshold == unmask_threshold(len(b.members))
        assert {m.fog for m in config.facilities if m.node_id in b.members} == {b.fog_id}  # never across fogs
    assert len(config.committee) == SETTINGS.committee_size
    assert config.quorum == quorum_size(SETTINGS.committee_size) == 3
    assert {m for b in config.eval_buckets for m in b.members} == set(members)
    assert config.round == 1 and config.ledger_head == HEAD and config.signature == b""


def test_left_out_facilities_are_not_scheduled() -> None:
    left = {
        "quarantined": frozenset({"fac-0"}),
        "out_of_budget": frozenset({"fac-1"}),
        "away": frozenset({"fac-2"}),
    }
    config = _plan(_federation(9, **left)).config
    scheduled = {m for b in config.buckets for m in b.members}
    assert scheduled == {f"fac-{i}" for i in range(3, 9)}
    assert config.quarantined == ("fac-0",)


def test_same_inputs_give_the_same_schedule_and_another_head_another() -> None:
    fed = _federation(12, 2)
    assert _plan(fed).config.hash() == _plan(fed).config.hash()
    other = _plan(fed, seed_head=b"\x08" * 32).config
    assert other.seed != _plan(fed).config.seed
    assert other.hash() != _plan(fed).config.hash()


def test_too_few_at_a_fog_sit_out() -> None:
    plan = _plan(_federation(5, 2))  # fog-0: fac-0, 2, 4; fog-1: fac-1, 3 (too few for a secure bucket)
    assert plan.sit_out == ("fac-1", "fac-3") and plan.sit_out_fogs == ("fog-1",)
    assert {m for b in plan.config.buckets for m in b.members} == {"fac-0", "fac-2", "fac-4"}
    with pytest.raises(NotReady, match="no fog has enough facilities"):
        _plan(_federation(2))


def test_after_a_flag_the_remainder_rests_and_every_bucket_has_the_bucket_size() -> None:
    equal = ScheduleSettings(bucket_size=3, committee_size=4, equal_buckets=True)
    # no bucket flagged yet, or the last flag more than EQUAL_BUCKETS_ROUNDS ago: nobody rests
    assert _plan(_federation(11), equal).resting == ()
    flagged = dataclasses.replace(_federation(11), last_flagged_round=1)
    assert _plan(flagged, equal, round_=2 + EQUAL_BUCKETS_ROUNDS).resting == ()
    plan = _plan(flagged, equal, round_=2)
    placed = [m for b in plan.config.buckets for m in b.members]
    assert [len(b.members) for b in plan.config.buckets] == [3, 3, 3]
    assert len(plan.resting) == 2 and not set(plan.resting) & set(placed)
    assert sorted(placed + list(plan.resting)) == sorted(f"fac-{i}" for i in range(11))
    # the resting facilities are not scheduled: not in the configuration, not in an evaluation bucket
    assert {m.node_id for m in plan.config.facilities} == set(placed)
    assert {m for b in plan.config.eval_buckets for m in b.members} == set(placed)
    assert plan.sit_out == ()
    # another round, another draw of who rests
    assert any(_plan(flagged, equal, round_=r).resting != plan.resting for r in range(3, 7))
    # the same federation without it: buckets of 4, 4, 3 and nobody rests
    grown = _plan(flagged, round_=2)
    assert grown.resting == () and sorted(len(b.members) for b in grown.config.buckets) == [3, 4, 4]


def test_not_ready_reasons() -> None:
    with pytest.raises(NotReady, match="waiting for 5"):
        _plan(_federation(3), ScheduleSettings(bucket_size=3, committee_size=4, min_facilities=5))
    with pytest.raises(NotReady, match="the committee needs 4"):
        _plan(_federation(6, validators=3))
    with pytest.raises(BudgetSpent, match="used up its privacy budget"):
        _plan(_federation(3, out_of_budget=frozenset({"fac-0", "fac-1", "fac-2"})))
    with pytest.raises(NotReady, match="1 quarantined"):
        _plan(_federation(1, quarantined=frozenset({"fac-0"})))


def test_bad_inputs_are_refused() -> None:
    fed = _federation(6)
    with pytest.raises(InvalidInput, match="numbered from 1"):
        _plan(fed, round_=0)
    with pytest.raises(InvalidInput, match="32-byte hash"):
        _plan(fed, seed_head=b"\x01")
    with pytest.raises(ConfigError):
        ScheduleSettings(bucket_size=0, committee_size=4)
    with pytest.raises(ConfigError):
        ScheduleSettings(bucket_size=3, committee_size=0)


def test_secure_buckets_too_small_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="at least 3 facilities"):
        _plan(_federation(4), ScheduleSettings(bucket_size=2, committee_size=4, secagg=True))
    plain = _plan(_federation(4), ScheduleSettings(bucket_size=2, committee_size=4, secagg=False)).config
    assert [len(b.members) for b in plain.buckets] == [2, 2]
