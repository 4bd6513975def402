"""Reputation: group-testing quarantine of facilities and vote-based validator weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.robust.reputation import Reputation, ReputationError, simulate

# --- the quarantine simulation from the brief ---------------------------------------------------------


def _run_quarantine(seed: int, rounds: int = 10) -> tuple[set[str], dict[str, int]]:
    """12 facilities, buckets of 3 re-drawn each round, 2 offenders whose buckets are norm-flagged."""
    g = np.random.default_rng(seed)
    facilities = [f"hospital-{i}" for i in range(12)]
    byzantine = {facilities[i] for i in g.choice(12, size=2, replace=False)}
    rep = Reputation()
    caught: dict[str, int] = {}
    for rnd in range(1, rounds + 1):
        active = [x for x in facilities if x not in rep.quarantined]  # the leader leaves them out
        order = [active[i] for i in g.permutation(len(active))]
        buckets = {f"b{k}": order[k : k + 3] for k in range(0, len(order), 3)}
        flagged = {b: "norm" for b, members in buckets.items() if byzantine.intersection(members)}
        for fac in rep.observe(rnd, buckets, flagged):
            caught[fac] = rnd
    return byzantine, caught


@pytest.mark.parametrize("seed", range(5))
def test_offenders_quarantined_and_no_honest_one(seed: int) -> None:
    byzantine, caught = _run_quarantine(seed)
    assert set(caught) == byzantine
    assert all(rnd <= 10 for rnd in caught.values())


@pytest.mark.parametrize("seed", range(5))
def test_simulate_helper_agrees(seed: int) -> None:
    caught = simulate(seed=seed)
    assert set(caught) == {"f00", "f01"}
    assert max(caught.values()) < 10  # 0-based rounds


def test_simulate_intermittent_offender_is_slower_and_validates() -> None:
    always = simulate(seed=1, rounds=30)
    sometimes = simulate(seed=1, rounds=30, attack_prob=0.6)
    assert {"f00", "f01"} <= set(always)
    assert all(sometimes.get(f, 99) >= always[f] for f in ("f00", "f01"))
    with pytest.raises(ReputationError):
        simulate(n_facilities=2, n_byzantine=3)


# --- the facility rule --------------------------------------------------------------------------------


def test_norm_flag_weighs_more_than_outlier_flag() -> None:
    rep = Reputation()
    rep.observe(1, {"a": ["x1", "x2"], "b": ["y1", "y2"], "c": ["z1"]}, {"a": "norm", "b": "outlier"})
    assert rep.suspicion("x1") == rep.suspicion("x2") == 1.0
    assert rep.suspicion("y1") == rep.suspicion("y2") == 0.25
    assert rep.suspicion("z1") == 0.0


def test_clean_members_decay_absent_ones_keep_their_score() -> None:
    rep = Reputation(decay=0.5)
    rep.observe(1, {"a": ["x", "y"], "b": ["z"]}, {"a": "norm"})
    rep.observe(2, {"a": ["x", "z"]}, {})
    assert rep.suspicion("x") == 0.5
    assert rep.suspicion("y") == 1.0  # sat this round out: no laundering
    assert rep.suspicion("z") == 0.0


def test_explaining_away_known_offender_takes_the_blame() -> None:
    rep = Reputation(prior=1.0)
    rep.observe(1, {"a": ["bad"]}, {"a": "norm"})
    rep.observe(2, {"a": ["bad"]}, {"a": "norm"})
    assert rep.suspicion("bad") == pytest.approx(2.0)
    rep.observe(3, {"a": ["bad", "new1", "new2"]}, {"a": "norm"})
    # shares: (2+1)/((3+1+1)/3) = 1.8 for bad, 1/(5/3) = 0.6 for each newcomer
    assert rep.suspicion("bad") == pytest.approx(3.8)
    assert rep.suspicion("new1") == pytest.approx(0.6)


def test_false_positive_honest_facility_recovers() -> None:
    """An honest facility unlucky enough to share two flagged buckets with an offender is not quarantined,
    and its suspicion fades in clean rounds."""
    rep = Reputation()
    rep.observe(1, {"a": ["honest", "bad", "o1"], "b": ["o2", "o3", "o4"]}, {"a": "norm"})
    rep.observe(2, {"a": ["honest", "bad", "o2"], "b": ["o1", "o3", "o4"]}, {"a": "norm"})
    peak = rep.suspicion("honest")
    assert 0 < peak < rep.threshold
    for rnd in range(3, 8):
        rep.observe(rnd, {"a": ["honest", "o1", "o2"], "b": ["bad", "o3", "o4"]}, {"b": "norm"})
    assert "honest" not in rep.quarantined
    assert rep.suspicion("honest") <= peak * rep.decay**5 + 1e-12  # fades geometrically
    assert "bad" in rep.quarantined


def test_quarantine_is_permanent_until_released() -> None:
    rep = Reputation(threshold=2.0)
    assert rep.observe(1, {"a": ["x"]}, {"a": "norm"}) == []
    assert rep.observe(2, {"a": ["x"]}, {"a": "norm"}) == ["x"]
    assert rep.quarantined == frozenset({"x"})
    assert rep.quarantined_since("x") == 2
    assert rep.observe(3, {"a": ["x"]}, {"a": "norm"}) == []  # not "newly" again
    for rnd in range(4, 30):
        rep.observe(rnd, {"a": ["x"]}, {})
    assert "x" in rep.quarantined
    assert rep.score("x") == 0.0
    rep.release("x")
    assert "x" not in rep.quarantined
    assert rep.suspicion("x") == 0.0
    with pytest.raises(ReputationError):
        rep.release("x")


def test_score_range() -> None:
    rep = Reputation(threshold=4.0)
    assert rep.score("never-seen") == 1.0
    rep.observe(1, {"a": ["x", "y"]}, {"a": "norm"})
    assert rep.score("x") == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("buckets", "flagged"),
    [
        ({"a": ["x"]}, {"b": "norm"}),  # unknown bucket
        ({"a": ["x"]}, {"a": "bad"}),  # unknown kind
        ({"a": ["x"], "b": ["x"]}, {}),  # facility twice
        ({"a": ["x", "x"]}, {}),
        ({"a": []}, {}),
        ({"a": "xy"}, {}),
        ({"a": [""]}, {}),
    ],
)
def test_observe_refuses_bad_input(buckets: dict[str, list[str]], flagged: dict[str, str]) -> None:
    rep = Reputation()
    with pytest.raises(ReputationError):
        rep.observe(1, buckets, flagged)
    assert rep.to_dict() == Reputation().to_dict()  # nothing half-applied


def test_round_cannot_be_counted_twice() -> None:
    rep = Reputation()
    rep.observe(5, {"a": ["x"]}, {"a": "norm"})
    with pytest.raises(ReputationError, match="already observed"):
        rep.observe(5, {"a": ["x"]}, {"a": "norm"})
    with pytest.raises(ReputationError):
        rep.observe(4, {"a": ["x"]}, {})
    with pytest.raises(ReputationError):
        rep.observe(-1, {"a": ["x"]}, {})
    assert rep.suspicion("x") == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": float("inf")},
        {"decay": 1.0},
        {"decay": -0.1},
        {"norm_penalty": 0.1, "outlier_penalty": 0.5},
        {"prior": 0.0},
        {"min_weight": 0.0},
        {"vote_against_penalty": 0.0},
        {"silent_penalty": 1.5},
    ],
)
def test_bad_configuration_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ReputationError):
        Reputation(**kwargs)


# --- validators ---------------------------------------------------------------------------------------


def test_validator_votes() -> None:
    rep = Reputation(vote_against_penalty=0.5, silent_penalty=0.2, vote_recovery=0.1)
    committee = ["v1", "v2", "v3", "v4"]
    rep.observe_votes(1, committee, {"v1": True, "v2": False, "v3": None}, certified=True)
    assert rep.weight("v1") == 1.0
    assert rep.weight("v2") == 0.5  # voted against the outcome
    assert rep.weight("v3") == pytest.approx(0.8)  # silent
    assert rep.weight("v4") == pytest.approx(0.8)  # missing = silent
    assert rep.weight("v9") == 1.0
    rep.observe_votes(2, committee, {"v1": True, "v2": False, "v3": False, "v4": None}, certified=False)
    assert rep.weight("v1") == 0.5  # now v1 voted against the (refused) outcome
    assert rep.weight("v2") == pytest.approx(0.55)  # agreed this time: recovers 10 % of the gap
    assert rep.weight("v3") == pytest.approx(0.82)
    assert rep.weight("v4") == pytest.approx(0.64)
    assert rep.score("v4") == pytest.approx(0.64)


def test_validator_weight_has_a_floor_and_recovers() -> None:
    rep = Reputation(min_weight=0.05)
    for rnd in range(40):
        rep.observe_votes(rnd, ["v"], {"v": False}, certified=True)
    assert rep.weight("v") == 0.05
    for rnd in range(40, 80):
        rep.observe_votes(rnd, ["v"], {"v": True}, certified=True)
    assert 0.9 < rep.weight("v") <= 1.0


@pytest.mark.parametrize(
    ("committee", "votes", "certified"),
    [
        (["v1"], {"v2": True}, True),
        ([], {}, True),
        (["v1", "v1"], {}, True),
        (["v1"], {"v1": 1}, True),
        (["v1"], {"v1": True}, None),
    ],
)
def test_observe_votes_refuses(committee: list[str], votes: dict[str, object], certified: object) -> None:
    rep = Reputation()
    with pytest.raises(ReputationError):
        rep.observe_votes(1, committee, votes, certified)  # type: ignore[arg-type]


def test_vote_round_cannot_repeat() -> None:
    rep = Reputation()
    rep.observe_votes(3, ["v"], {"v": False}, certified=True)
    with pytest.raises(ReputationError):
        rep.observe_votes(3, ["v"], {"v": False}, certified=True)
    assert rep.weight("v") == 0.5


# --- persistence --------------------------------------------------------------------------------------


def test_round_trip_through_json_continues_identically() -> None:
    a = Reputation(threshold=5.0)
    a.observe(1, {"a": ["x", "y"], "b": ["z"]}, {"a": "norm"})
    a.observe(2, {"a": ["x"], "b": ["z", "y"]}, {"a": "outlier"})
    a.observe_votes(2, ["v1", "v2"], {"v1": True}, certified=True)
    b = Reputation.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.to_dict() == a.to_dict()
    step = ({"a": ["x", "z"], "b": ["y"]}, {"a": "norm"})
    for rep in (a, b):
        for rnd in range(3, 7):
            rep.observe(rnd, *step)
    assert a.to_dict() == b.to_dict()
    assert a.quarantined == b.quarantined == frozenset({"x"})
    with pytest.raises(ReputationError):
        b.observe(6, *step)  # last round survived the round trip


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("suspicion"),
        lambda d: d["suspicion"].update(x=-1.0),
        lambda d: d["suspicion"].update(x="lots"),
        lambda d: d["weights"].update(v=2.0),
        lambda d: d["config"].update(decay=3.0),
        lambda d: d.update(last_round=-4),
    ],
)
def test_damaged_state_refused(damage: object) -> None:
    rep = Reputation()
    rep.observe(1, {"a": ["x"]}, {"a": "norm"})
    rep.observe_votes(1, ["v"], {"v": True}, certified=True)
    data = json.loads(json.dumps(rep.to_dict()))
    damage(data)  # type: ignore[operator]
    with pytest.raises(ReputationError):
        Reputation.from_dict(data)


# --- properties ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.permutations(list(range(6))), st.sets(st.integers(0, 2))), max_size=12))
def test_suspicion_nonnegative_and_scores_bounded(history: list[tuple[list[int], set[int]]]) -> None:
    rep = Reputation()
    for rnd, (perm, flagged_ids) in enumerate(history):
        buckets = {b: [f"f{perm[2 * b]}", f"f{perm[2 * b + 1]}"] for b in range(3)}
        rep.observe(rnd, buckets, {b: ("norm" if b % 2 else "outlier") for b in flagged_ids})
        for i in range(6):
            s = rep.suspicion(f"f{i}")
            assert s >= 0.0
            assert 0.0 <= rep.score(f"f{i}") <= 1.0
            assert (f"f{i}" in rep.quarantined) == (rep.quarantined_since(f"f{i}") is not None)
            if s >= rep.threshold:
                assert f"f{i}" in rep.quarantined
