"""Reputation: group-testing quarantine of facilities and vote-based validator weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.robust.reputation import (
    FLAG_MEMORY,
    QuarantineTest,
    Reputation,
    ReputationError,
    base_rate,
    default_max_byzantine,
    federation_test,
    implied_offenders,
    simulate,
    wald_bounds,
    with_refused,
)

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
    always = [simulate(seed=s, rounds=30) for s in range(20)]
    sometimes = [simulate(seed=s, rounds=30, attack_prob=0.6) for s in range(20)]
    assert all({"f00", "f01"} <= set(c) for c in always)
    last = [max(c.get(f, 99) for f in ("f00", "f01")) for c in always]
    last_sometimes = [max(c.get(f, 99) for f in ("f00", "f01")) for c in sometimes]
    assert np.median(last_sometimes) > np.median(last)
    # quiet rounds cost an offender nothing when no one else is flagged: most are still caught in 30 rounds
    assert sum({"f00", "f01"} <= set(c) for c in sometimes) >= 10
    with pytest.raises(ReputationError):
        simulate(n_facilities=2, n_byzantine=3)


# --- the test itself: known answers ------------------------------------------------------------------

TEST = QuarantineTest(
    facilities=12,
    bucket_size=3,
    max_byzantine=2,
    alpha=0.01,
    horizon=100,
    beta=0.01,
    p1=0.9,
    false_flag=0.005,
)
P0 = (3 - 1) / (12 - 2) + 0.005  # one flagged bucket of 3: 2 honest places among the 10 honest facilities
UP, DOWN = math.log(0.9 / P0), math.log(0.1 / (1 - P0))


def test_wald_bounds_known_answer() -> None:
    lower, upper = wald_bounds(0.05, 0.2)
    assert lower == pytest.approx(math.log(0.2 / 0.95))
    assert upper == pytest.approx(math.log(0.8 / 0.05))
    assert wald_bounds(0.01, 0.01) == pytest.approx((math.log(0.01 / 0.99), math.log(0.99 / 0.01)))
    for bad in ((0.0, 0.1), (0.1, 1.0), (0.6, 0.5), (float("nan"), 0.1)):
        with pytest.raises(ReputationError):
            wald_bounds(*bad)


def test_base_rate_known_answers() -> None:
    assert base_rate(12, [3], 2, 0.005) == pytest.approx(P0) == pytest.approx(0.205)
    assert base_rate(12, [], 2, 0.005) == 0.0  # no flag in the pool: nothing to be in
    # two flagged buckets of 3, each with an offender: 4 honest places among 10 honest facilities
    assert base_rate(12, [3, 3], 2, 0.0) == pytest.approx(0.4)
    # three flagged buckets but only 2 offenders: one flag had no offender behind it, 7 honest places
    assert base_rate(12, [3, 3, 3], 2, 0.0) == pytest.approx(0.7)
    assert base_rate(12, [1], 2, 0.005) == pytest.approx(0.005)  # the offender alone: only a false flag
    assert base_rate(11, [4], 1, 0.0) == pytest.approx(0.3)
    assert base_rate(7, [4], 1, 0.0) == pytest.approx(0.5)
    assert base_rate(3, [3], 5, 0.0) == 1.0  # every other member may misbehave
    assert base_rate(1, [1], 2, 0.0) == 1.0  # alone in its pool: a flag can only be its own
    assert base_rate(48, [4, 4], 8, 0.0) == pytest.approx(6 / 40)
    for bad in ((3, [4], 1), (3, [2, 2], 1), (0, [], 1), (12, [0], 1), (12, [3], -1)):
        with pytest.raises(ReputationError):
            base_rate(*bad, 0.0)  # type: ignore[arg-type]


def test_the_federation_wide_bound_is_the_stated_rate() -> None:
    a1 = TEST.per_facility_alpha
    lower, upper = TEST.bounds
    assert (lower, upper) == pytest.approx(wald_bounds(a1, 0.01))
    # the flag test: 12 facilities · (e^−A + 99 · e^−(A−B)) = 0.9 %; the refusal test 0.1 %: 1 % in all
    assert 12 * (math.exp(-upper) + 99 * math.exp(-(upper - lower))) == pytest.approx(0.009, rel=1e-9)
    r_lower, r_upper = TEST.refusal_bounds
    assert 12 * (math.exp(-r_upper) + 99 * math.exp(-(r_upper - r_lower))) == pytest.approx(0.001, rel=1e-9)
    assert r_upper == pytest.approx(upper + math.log(9), abs=0.02)
    assert TEST.false_positive_bound() == pytest.approx(0.01, rel=1e-9)
    assert TEST.false_positive_bound(30) < TEST.false_positive_bound(60) < 0.01
    assert upper == pytest.approx(7.884, abs=1e-3) and lower == pytest.approx(math.log(0.01 / (1 - a1)))
    assert TEST.steps(12, [3]) == pytest.approx((UP, DOWN))
    assert TEST.steps(12, []) == (0.0, 0.0)  # a round without a flag says nothing
    assert TEST.steps(12, [3, 3, 3, 3]) == (0.0, 0.0)  # flags everywhere: nothing either
    assert TEST.rounds_to_quarantine() == math.ceil(upper / UP) == 6
    assert TEST.detects and TEST.cannot_detect() == ""
    # more facilities or a lower rate: a higher bound; a lower rate: a slower quarantine
    assert QuarantineTest(facilities=48, max_byzantine=8).bounds[1] > upper
    assert (QuarantineTest(alpha=0.0001).rounds_to_quarantine() or 0) > 6
    assert TEST.drift(0.9) > TEST.drift(0.65) > 0 > TEST.drift(0.55) > TEST.drift(P0)


def test_the_decision_after_a_known_evidence_sequence() -> None:
    """Fixed buckets of 3 (so every member of a bucket has the same evidence and no one explains another
    away): bucket a flagged in rounds 1, 2, 4 and b in round 5, no flag in round 3, then a flagged until
    its members cross A."""
    rep = Reputation(test=TEST)
    buckets = {b: [f"{b}{i}" for i in range(3)] for b in "abcd"}
    sequence = ({"a": "norm"}, {"a": "screen"}, {}, {"a": "norm"}, {"b": "norm"})
    for rnd, flagged in enumerate(sequence, start=1):
        assert rep.observe(rnd, buckets, flagged) == []
    assert rep.evidence("a0") == pytest.approx(3 * UP + DOWN)  # round 3 (no flag) counted for nothing
    assert rep.evidence("b0") == pytest.approx(max(rep.lower, 3 * DOWN) + UP)
    assert rep.evidence("c0") == pytest.approx(max(rep.lower, 4 * DOWN)) == rep.lower
    more = math.ceil((rep.threshold - (3 * UP + DOWN)) / UP)
    assert more == 4
    for rnd in range(6, 6 + more - 1):
        assert rep.observe(rnd, buckets, {"a": "norm"}) == []
    assert rep.observe(5 + more, buckets, {"a": "norm"}) == ["a0", "a1", "a2"]
    assert rep.quarantined_since("a0") == 9
    assert rep.evidence("b0") == rep.lower  # the floor: "honest", still watched


def test_kinds_outlier_is_a_quarter_and_a_group_of_one_is_certain() -> None:
    rep = Reputation(test=TEST)
    buckets = {
        "a": ["x1", "x2", "x3"],
        "b": ["y1", "y2", "y3"],
        "c": ["z1", "z2", "z3"],
        "d": ["w1", "w2", "w3"],
    }
    rep.observe(1, buckets, {"a": "norm", "b": "outlier"})
    up2, down2 = TEST.steps(12, [3, 3])
    assert up2 == pytest.approx(math.log(0.9 / 0.405)) and down2 == pytest.approx(math.log(0.1 / 0.595))
    assert rep.evidence("x1") == rep.evidence("x3") == pytest.approx(up2)
    assert rep.evidence("y1") == pytest.approx(0.25 * up2)
    assert rep.evidence("z1") == pytest.approx(down2)
    # a refused update (with_refused: a group of one flagged norm) is the refusal test's evidence:
    # ln(p1/false_flag) = 5.19; a round without a refusal ln(0.1/0.995) = -2.30
    step, clean = math.log(0.9 / 0.005), math.log(0.1 / 0.995)
    assert rep.refusal_evidence("w1") == pytest.approx(clean)
    groups, flags = with_refused(buckets, {}, ["w1"])
    assert rep.observe(2, groups, flags) == []
    assert rep.refusal_evidence("w1") == pytest.approx(clean + step)
    assert rep.evidence("w1") == pytest.approx(down2)  # no flag in the pool: the flag test is untouched
    assert rep.suspicion("w1") == pytest.approx((clean + step) * rep.upper / rep.refusal_upper)
    groups, flags = with_refused(buckets, {}, ["w1"])
    assert rep.observe(3, groups, flags) == []
    assert rep.refusal_evidence("w1") == pytest.approx(clean + 2 * step)
    assert rep.refusal_evidence("w1") < rep.refusal_upper
    assert rep.observe(4, groups, flags) == ["w1"]  # three refusals in a row after a clean round
    fresh = Reputation(test=TEST)
    assert fresh.observe(1, groups, flags) == []
    assert fresh.observe(2, groups, flags) == ["w1"]  # two in a row for a facility with no history


def test_explaining_away_known_offender_takes_the_blame() -> None:
    rep = Reputation(test=TEST)
    # a flagged bucket of one, among 7: an offender there is certain, so p0 is the false-flag rate
    rep.observe(1, {"a": ["bad"], "b": ["o1", "o2", "o3"], "c": ["o4", "o5", "o6"]}, {"a": "norm"})
    single = math.log(0.9 / 0.005)
    assert TEST.steps(7, [1])[0] == pytest.approx(single)
    assert rep.evidence("bad") == pytest.approx(single)
    rep.observe(2, {"a": ["bad", "new1", "new2"], "b": ["o1", "o2", "o3"]}, {"a": "norm"})
    up = TEST.steps(6, [3])[0]
    assert rep.evidence("bad") == pytest.approx(single + up)  # the most suspect member: the full step
    assert rep.evidence("new1") == pytest.approx(up / (1 + single))  # a sixth of it
    assert rep.evidence("o1") == pytest.approx(TEST.steps(7, [1])[1] + TEST.steps(6, [3])[1])


def test_absent_facilities_keep_their_evidence() -> None:
    rep = Reputation(test=TEST)
    rep.observe(1, {"a": ["x", "y", "o1"], "b": ["z", "o2", "o3"], "c": ["o4", "o5", "o6"]}, {"a": "norm"})
    kept = rep.evidence("y")
    assert kept == pytest.approx(TEST.steps(9, [3])[0])
    rep.observe(2, {"a": ["x", "z", "o1"], "b": ["o2", "o3", "o4"]}, {"b": "norm"})
    assert rep.evidence("y") == kept  # sat this round out: no laundering
    assert rep.evidence("x") == pytest.approx(kept + TEST.steps(6, [3])[1])


def test_false_positive_honest_facility_recovers() -> None:
    """An honest facility unlucky enough to share two flagged buckets with an offender is not quarantined,
    and its evidence falls in clean rounds, to the floor."""
    rep = Reputation(test=TEST)
    others = [f"o{i}" for i in range(9)]
    rep.observe(
        1,
        {"a": ["honest", "bad", "o0"], "b": others[1:4], "c": others[4:7], "d": [*others[7:], "o9"]},
        {"a": "norm"},
    )
    rep.observe(
        2,
        {"a": ["honest", "bad", "o1"], "b": ["o0", *others[2:4]], "c": others[4:7], "d": [*others[7:], "o9"]},
        {"a": "norm"},
    )
    peak = rep.evidence("honest")
    assert 0 < peak < rep.threshold
    for rnd in range(3, 12):
        rep.observe(
            rnd,
            {
                "a": ["honest", "o1", "o2"],
                "b": ["bad", "o3", "o4"],
                "c": others[5:8],
                "d": ["o0", "o8", "o9"],
            },
            {"b": "norm"},
        )
    assert "honest" not in rep.quarantined
    assert rep.evidence("honest") == rep.lower
    assert "bad" in rep.quarantined


def test_quarantine_is_permanent_until_released() -> None:
    rep = Reputation(test=TEST)
    refused = {"refused:x": ["x"], "a": ["y", "z", "w"]}
    assert rep.observe(1, refused, {"refused:x": "norm"}) == []
    assert rep.observe(2, refused, {"refused:x": "norm"}) == ["x"]
    assert rep.quarantined == frozenset({"x"})
    assert rep.quarantined_since("x") == 2
    assert rep.observe(3, refused, {"refused:x": "norm"}) == []  # not "newly" again
    for rnd in range(4, 30):
        rep.observe(rnd, {"a": ["x", "y", "z"]}, {})
    assert "x" in rep.quarantined
    assert rep.score("x") == 0.0
    rep.release("x")
    assert "x" not in rep.quarantined
    assert rep.suspicion("x") == 0.0 and rep.evidence("x") == 0.0
    with pytest.raises(ReputationError):
        rep.release("x")


def test_score_range() -> None:
    rep = Reputation(test=TEST)
    assert rep.score("never-seen") == 1.0
    rep.observe(
        1,
        {"a": ["x", "y", "z"], "b": ["o1", "o2", "o3"], "c": ["o4", "o5", "o6"], "d": ["o7", "o8", "o9"]},
        {"a": "norm"},
    )
    assert rep.score("x") == pytest.approx(1 - UP / rep.threshold)
    assert rep.score("x") == pytest.approx(1 - rep.suspicion("x") / rep.threshold)
    assert rep.score("o1") == 1.0  # evidence below 0 is no suspicion
    assert rep.suspicion("o1") == 0.0 > rep.evidence("o1")


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
    rep.observe(5, {"refused:x": ["x"]}, {"refused:x": "norm"})
    once = rep.refusal_evidence("x")
    with pytest.raises(ReputationError, match="already observed"):
        rep.observe(5, {"refused:x": ["x"]}, {"refused:x": "norm"})
    with pytest.raises(ReputationError):
        rep.observe(4, {"a": ["x"]}, {})
    with pytest.raises(ReputationError):
        rep.observe(-1, {"a": ["x"]}, {})
    assert rep.refusal_evidence("x") == once == pytest.approx(math.log(0.95 / 0.005))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"facilities": 0}, "facilities must be a whole number"),
        ({"facilities": 2, "bucket_size": 3, "max_byzantine": 1}, "cannot be drawn from 2 facilities"),
        ({"max_byzantine": 12}, "leave no honest one"),
        ({"max_byzantine": -1}, "max_byzantine must be"),
        ({"alpha": 0.0}, "alpha must be"),
        ({"alpha": 1.0}, "alpha must be"),
        ({"beta": float("nan")}, "beta must be"),
        ({"p1": 1.0}, "p1 must be"),
        ({"horizon": 0}, "horizon"),
    ],
)
def test_a_test_that_cannot_work_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ReputationError, match=message):
        QuarantineTest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((12, 12, 1), "group testing cannot tell them apart"),  # p0 = 11/11: one bucket for all
        ((12, 3, 11), "group testing cannot tell them apart"),  # p0 = 2/1: every other one misbehaves
        ((3, 3, 1), "in a flagged bucket in 100 % of the rounds with a flag"),
        ((12, 3, 12), "leave no honest one"),
    ],
)
def test_a_declared_threat_group_testing_cannot_handle_is_refused(
    args: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(ReputationError, match=message):
        federation_test(*args)


def test_declaring_no_misbehaving_facility_is_accepted_even_when_flags_say_nothing() -> None:
    """Benchmarks with one bucket and no attacker declare 0: nobody to single out, so no refusal."""
    test = federation_test(8, 8, 0)
    assert test.max_byzantine == 0 and not test.detects
    with pytest.raises(ReputationError, match="group testing cannot tell them apart"):
        federation_test(8, 8, 1)


def test_a_federation_too_small_for_group_testing_runs_on_certain_evidence_only() -> None:
    """3 facilities in one bucket of 3, nothing declared: flags say nothing, a refused update still counts."""
    test = federation_test(3, 3)
    assert not test.detects and test.cannot_detect() and test.rounds_to_quarantine() is None
    assert test.steps(3, [3]) == (0.0, 0.0)
    rep = Reputation(test=test)
    for rnd in range(1, 20):
        assert rep.observe(rnd, {"a": ["x", "y", "z"]}, {"a": "norm"}) == []
    assert rep.evidence("x") == 0.0
    assert rep.refusal_evidence("x") == rep.refusal_lower  # 19 rounds without a refusal: the floor
    refused = {"a": ["y", "z"], "refused:x": ["x"]}
    assert rep.observe(20, refused, {"refused:x": "norm"}) == []
    assert rep.refusal_evidence("x") == pytest.approx(rep.refusal_lower + math.log(0.95 / 0.005))
    assert rep.observe(21, refused, {"refused:x": "norm"}) == []
    assert rep.observe(22, refused, {"refused:x": "norm"}) == ["x"]
    assert federation_test(2, 2).max_byzantine == 1 and federation_test(1, 1).max_byzantine == 0


def test_federation_test_defaults() -> None:
    """Nothing declared: up to one facility in six misbehaves (at least 1), whatever the bucket size."""
    assert default_max_byzantine(12) == 2
    assert default_max_byzantine(24) == 4
    assert default_max_byzantine(48) == 8
    assert default_max_byzantine(3) == 1 and default_max_byzantine(1) == 1 and default_max_byzantine(11) == 1
    for n in range(1, 100):  # the same numbers as "one per two buckets of 3" gave before
        assert default_max_byzantine(n) == max(1, max(1, n // 3) // 2)
    assert federation_test(12, 3) == QuarantineTest()
    # larger buckets do not quietly assume fewer offenders (one per two buckets of 4 would be 1 of 12)
    assert federation_test(12, 4).max_byzantine == 2
    assert federation_test(48, 8).max_byzantine == 8
    assert federation_test(24, 3, 1, alpha=0.05, horizon=30) == QuarantineTest(
        facilities=24, max_byzantine=1, alpha=0.05, horizon=30
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outlier_weight": 0.0},
        {"outlier_weight": 1.5},
        {"test": "strict"},
        {"min_weight": 0.0},
        {"vote_against_penalty": 0.0},
        {"silent_penalty": 1.5},
        {"threshold": 6.0},  # the fixed threshold is gone
    ],
)
def test_bad_configuration_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises((ReputationError, TypeError)):
        Reputation(**kwargs)  # type: ignore[arg-type]


# --- properties of the test: false positives and time to quarantine ---------------------------------


def test_honest_facilities_at_the_base_rate_are_quarantined_at_most_at_the_stated_rate() -> None:
    """A lax test (20 % over 30 rounds), so that the rate can be seen in a few hundred runs: 12
    facilities, 2 offenders flagged in every round (so honest ones meet flagged buckets exactly at the
    base rate), plus false screen flags. Runs quarantining an honest facility: at most about 20 %."""
    lax = QuarantineTest(alpha=0.2, horizon=30)
    assert (lax.rounds_to_quarantine() or 99) < 9
    runs = 400
    bad = {"f00", "f01"}
    false_runs = sum(
        bool(set(simulate(rounds=30, seed=seed, test=lax, honest_flag_prob=0.005)) - bad)
        for seed in range(runs)
    )
    assert false_runs / runs <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / runs)


def test_honest_facility_without_explaining_away_stays_under_the_bound() -> None:
    """The bare flag test: two facilities, each alone in its bucket (nobody to explain it away), exactly
    one bucket flagged per round, at random. With no offender declared the honest facility is in the
    flagged bucket with probability 1/2 = p0, exactly its base rate; over the horizon its crossings stay
    under its share of the bound, e^−A + (T−1)·e^−(A−B)."""
    lax = QuarantineTest(
        facilities=2, bucket_size=1, max_byzantine=0, alpha=0.3, horizon=40, p1=0.8, false_flag=1e-9
    )
    assert lax.steps(2, [1]) == pytest.approx((math.log(0.8 / 0.5), math.log(0.2 / 0.5)), rel=1e-6)
    lower, upper = lax.bounds
    per_facility = math.exp(-upper) + 39 * math.exp(-(upper - lower))
    assert per_facility == pytest.approx(0.9 * 0.3 / 2, rel=1e-6)
    g = np.random.default_rng(7)
    runs, crossed = 2000, 0
    for _ in range(runs):
        rep = Reputation(test=lax)
        flags = g.random(40) < 0.5
        for rnd in range(40):
            if rep.observe(rnd, {"a": ["h"], "b": ["k"]}, {"a" if flags[rnd] else "b": "screen"}) == ["h"]:
                crossed += 1
                break
    assert crossed / runs <= per_facility + 3 * math.sqrt(per_facility * (1 - per_facility) / runs)
    assert crossed > 0  # the test does fire sometimes: the check above is not vacuous


@pytest.mark.parametrize(("n", "m"), [(12, 2), (24, 4), (48, 8)])
def test_offenders_flagged_every_round_are_quarantined_when_expected(n: int, m: int) -> None:
    """Offenders flagged in every round, the sequential test alone: never before the evidence allows (an
    offender alone in the only flagged bucket, rounds_to_quarantine), all of them by round 10 in at least
    19 of 20 runs (two offenders in two flagged buckets weigh less per round than one in one)."""
    test = federation_test(n, 3)
    assert test.max_byzantine == m
    expected = test.rounds_to_quarantine()
    assert expected is not None and expected <= 6
    width = max(2, len(str(n - 1)))
    bad = {f"f{i:0{width}d}" for i in range(m)}
    late = 0
    for seed in range(20):
        caught = simulate(n_facilities=n, n_byzantine=m, rounds=30, seed=seed, name_offenders=False)
        assert set(caught) == bad
        assert all(caught[f] + 1 >= expected for f in bad)  # not before the evidence allows
        late += any(caught[f] + 1 > 10 for f in bad)
    assert late <= 1


@pytest.mark.parametrize(("n", "m"), [(12, 2), (24, 4), (48, 8)])
def test_norm_flags_name_offenders_sooner_and_never_an_honest_one(n: int, m: int) -> None:
    """The default (sequential test and implied_offenders): the same offenders, never an honest facility,
    none later than the sequential test alone and most earlier; at 12 facilities both by round 10 in
    every run (the sequential test alone: 19 of 20 at best). Buckets are cut the same way in both runs
    (``equal=False``): resting follows who is quarantined, so with it the two runs would draw different
    buckets and stop being a paired comparison."""
    width = max(2, len(str(n - 1)))
    bad = {f"f{i:0{width}d}" for i in range(m)}
    sooner = 0
    for seed in range(20):
        both = simulate(n_facilities=n, n_byzantine=m, rounds=30, seed=seed, equal=False)
        alone = simulate(
            n_facilities=n, n_byzantine=m, rounds=30, seed=seed, name_offenders=False, equal=False
        )
        assert set(both) == bad
        assert max(both.values()) <= max(alone.values())
        sooner += max(both.values()) < max(alone.values())
        if n == 12:
            assert max(both.values()) + 1 <= 10
    assert sooner >= 15


def test_implied_offenders_known_answers() -> None:
    # Two rounds, buckets of 3, a and b flagged in different buckets each time. Without a, the flags need
    # {x1, x2}, {x3, x4} and b: 3 > 2 facilities, so a is certain; likewise b.
    rounds = [("a", "x1", "x2"), ("b", "y1", "y2"), ("a", "x3", "x4"), ("b", "y3", "y4")]
    assert implied_offenders(rounds, 2, min_groups=2) == ["a", "b"]
    assert implied_offenders(rounds, 2) == []  # each was flagged twice only: min_groups (4) not reached
    assert implied_offenders(rounds * 2, 2) == ["a", "b"]
    # With 3 allowed, {x1, x3, b} explains the flags as well: nobody is certain.
    assert implied_offenders(rounds, 3, min_groups=2) == []
    # a and b always flagged together: either alone explains every flag, so neither is certain.
    together = [("a", "b", "x1"), ("a", "b", "x2"), ("a", "b", "x3"), ("a", "b", "x4")]
    assert implied_offenders(together, 1) == []
    assert implied_offenders(together, 2) == []
    # One group of one: that facility is certain (with any m > 0 and enough groups).
    assert implied_offenders([("z",)] * 4, 1) == ["z"]
    # m = 0 declares that nobody misbehaves: flags contradict it, nobody is named.
    assert implied_offenders(rounds * 2, 0) == []
    # More disjoint flagged buckets in one round than m: the premise is broken, nobody is named.
    three = [("a", "x1", "x2"), ("b", "y1", "y2"), ("c", "z1", "z2")] * 4
    assert implied_offenders(three, 2) == []
    assert implied_offenders([], 2) == []
    with pytest.raises(ReputationError):
        implied_offenders(rounds, -1)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=6, max_value=30),
    bucket=st.integers(min_value=2, max_value=5),
    m=st.integers(min_value=1, max_value=5),
    rounds=st.integers(min_value=1, max_value=25),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_implied_offenders_never_names_an_honest_facility(
    n: int, bucket: int, m: int, rounds: int, seed: int
) -> None:
    """Whatever the buckets and whichever of at most m offenders misbehave in a round, every norm-flagged
    bucket holds one of them; then only offenders are named."""
    g = np.random.default_rng(seed)
    offenders = {f"f{i:02d}" for i in g.choice(n, size=min(m, n - 1), replace=False)}
    ids = [f"f{i:02d}" for i in range(n)]
    groups: list[list[str]] = []
    for _ in range(rounds):
        order = [ids[i] for i in g.permutation(n)]
        attacking = {x for x in offenders if g.random() < 0.7}
        for part in np.array_split(np.array(order), max(1, n // bucket)):
            members = [str(x) for x in part]
            if attacking.intersection(members):
                groups.append(members)
    assert set(implied_offenders(groups, m, min_groups=1)) <= offenders


def test_a_named_facility_is_quarantined_kept_and_released() -> None:
    rep = Reputation(test=QuarantineTest(facilities=12, bucket_size=3, max_byzantine=2))
    honest = [f"h{i}" for i in range(10)]
    newly: list[str] = []
    for rnd in range(4):
        # a and b in different buckets, each with two new honest bucket-mates; the rest unflagged
        mates = [honest[(2 * rnd + i) % 10] for i in range(4)]
        rest = [h for h in honest if h not in mates]
        buckets = {0: ["a", *mates[:2]], 1: ["b", *mates[2:]], 2: rest[:3], 3: rest[3:]}
        newly = rep.observe(rnd, buckets, {0: "norm", 1: "norm"})
        if newly:
            break
    assert newly == ["a", "b"] and rnd == 3  # named once each is in 4 flagged buckets
    assert rep.named == {"a", "b"} and rep.quarantined == {"a", "b"}
    assert rep.suspicion("a") == rep.threshold > rep.evidence("a")  # the sequential test alone: not yet
    again = Reputation.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.named == {"a", "b"} and again.to_dict() == rep.to_dict()
    rep.release("a")
    assert rep.named == {"b"} and "a" not in rep.quarantined
    # Its bucket is norm-flagged once more: with its four old flags still kept, it would be named again.
    buckets = {0: ["a", "h0", "h1"], 1: honest[2:5], 2: honest[5:8]}
    assert rep.observe(10, buckets, {0: "norm"}) == [] and rep.named == {"b"}
    damaged = again.to_dict()
    damaged["quarantined"].pop("a")
    with pytest.raises(ReputationError, match="named"):
        Reputation.from_dict(damaged)
    older = again.to_dict()
    for key in ("named", "norm_groups"):
        older.pop(key)
    assert Reputation.from_dict(older).named == set()
    with pytest.raises(ReputationError):
        Reputation(name_offenders="yes")  # type: ignore[arg-type]


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
    a = Reputation(test=QuarantineTest(facilities=5, bucket_size=2, max_byzantine=1))
    a.observe(1, {"a": ["x", "y"], "b": ["z", "w", "u"]}, {"a": "norm"})
    a.observe(2, {"a": ["x", "w"], "b": ["z", "y", "u"]}, {"a": "outlier"})
    a.observe(3, {"a": ["x", "w"], "b": ["z", "y", "u"]}, {})
    a.observe_votes(2, ["v1", "v2"], {"v1": True}, certified=True)
    assert a.last_unexplained_flag == 1  # round 2's flag is the rule's "outlier", round 3 had none
    b = Reputation.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.to_dict() == a.to_dict() and b.last_unexplained_flag == 1
    older = a.to_dict()
    older.pop("flag_groups")  # a state from before they were kept
    assert Reputation.from_dict(older).last_unexplained_flag is None
    step = ({"a": ["x", "z"], "b": ["y", "w", "u"]}, {"a": "norm"})
    for rep in (a, b):
        for rnd in range(4, 13):
            rep.observe(rnd, *step)
    assert a.to_dict() == b.to_dict()
    # z always shares x's flagged bucket, and x is the more suspect: x takes the blame, z does not cross
    assert a.quarantined == b.quarantined == frozenset({"x"})
    assert a.evidence("z") < a.threshold / 2 < a.evidence("x")
    with pytest.raises(ReputationError):
        b.observe(12, *step)  # last round survived the round trip


def test_a_flag_is_explained_once_a_member_of_its_bucket_is_quarantined() -> None:
    rep = Reputation(test=QuarantineTest(facilities=9, bucket_size=3, max_byzantine=1))
    assert rep.last_unexplained_flag is None
    rep.observe(1, {"a": ["x", "y", "z"], "b": ["u", "v", "w"]}, {"a": "norm"})
    rep.observe(2, {"a": ["x", "u", "v"], "b": ["y", "z", "w"]}, {"b": "screen"})
    rep.observe(3, {"a": ["x", "y", "w"], "b": ["u", "v", "z"]}, {})
    assert rep.last_unexplained_flag == 2
    rep.quarantine("w")  # round 2's flag is explained: round 1's, whose bucket did not hold w, is not
    assert rep.last_unexplained_flag == 1
    rep.quarantine("x")
    assert rep.last_unexplained_flag is None  # nothing left to trace
    rep.release("w")  # judged honest after all: round 2's flag has no cause in quarantine again
    assert rep.last_unexplained_flag == 2
    # multi-Krum and centered clipping leave out f buckets every round, honest ones too: not traced
    rep.observe(4, {"a": ["u", "v", "z"], "b": ["x", "y", "w"]}, {"a": "outlier"})
    assert rep.last_unexplained_flag == 2
    rep.observe(5, {"a": ["u", "v", "z"], "b": ["x", "y", "w"]}, {"a": "screen"})
    assert rep.last_unexplained_flag == 5
    for rnd in range(6, 6 + FLAG_MEMORY + 1):  # only the last FLAG_MEMORY rounds with flags are kept
        rep.observe(rnd, {"a": ["x", "y", "z"], "b": ["u", "v", "w"]}, {"a": "screen"})
    assert len({r for r, _ in rep.to_dict()["flag_groups"]}) == FLAG_MEMORY
    assert rep.last_unexplained_flag is None  # every kept flag is x's bucket


def test_settings_change_replaces_the_stored_test_and_keeps_the_evidence() -> None:
    a = Reputation()
    a.observe(1, {"a": ["x"]}, {"a": "norm"})
    bigger = QuarantineTest(facilities=48, max_byzantine=8)
    b = Reputation.from_dict(a.to_dict(), test=bigger)
    assert b.test == bigger and b.threshold > a.threshold
    assert b.evidence("x") == a.evidence("x")


# A state written by the former version (fixed threshold 6, decay 0.8, prior 1), as the authority stored it.
OLD_STATE = {
    "version": 1,
    "config": {
        "threshold": 6.0,
        "norm_penalty": 1.0,
        "screen_penalty": 1.0,
        "outlier_penalty": 0.25,
        "decay": 0.8,
        "prior": 1.0,
        "vote_against_penalty": 0.5,
        "silent_penalty": 0.3,
        "vote_recovery": 0.1,
        "min_weight": 0.01,
    },
    "suspicion": {"facility-01": 3.0, "facility-02": 0.0, "facility-03": 6.6},
    "quarantined": {"facility-03": 7001},
    "weights": {"validator-1": 0.5},
    "last_round": 9001,
    "last_vote_round": 9001,
}


def test_a_state_of_the_former_version_still_loads() -> None:
    rep = Reputation.from_dict(json.loads(json.dumps(OLD_STATE)))
    assert rep.test == QuarantineTest()
    assert rep.evidence("facility-01") == pytest.approx(0.5 * rep.threshold)  # half way, as before
    assert rep.evidence("facility-02") == 0.0
    assert rep.evidence("facility-03") == pytest.approx(rep.threshold)  # capped at the bound
    assert rep.quarantined == frozenset({"facility-03"}) and rep.quarantined_since("facility-03") == 7001
    assert rep.weight("validator-1") == 0.5 and rep.silent_penalty == 0.3 and rep.outlier_weight == 0.25
    with pytest.raises(ReputationError, match="already observed"):
        rep.observe(9001, {"a": ["facility-01"]}, {})
    rep.observe(10001, {"a": ["facility-01"]}, {"a": "norm"})
    assert rep.to_dict()["version"] == 2
    again = Reputation.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.to_dict() == rep.to_dict()
    # with the federation's own test
    big = Reputation.from_dict(OLD_STATE, test=QuarantineTest(facilities=48, max_byzantine=8))
    assert big.evidence("facility-01") == pytest.approx(0.5 * big.threshold)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("evidence"),
        lambda d: d["evidence"].update(x=float("nan")),
        lambda d: d["evidence"].update(x="lots"),
        lambda d: d["weights"].update(v=2.0),
        lambda d: d["config"].update(outlier_weight=3.0),
        lambda d: d["config"]["test"].update(max_byzantine=40),
        lambda d: d["config"].pop("test"),
        lambda d: d.update(last_round=-4),
        lambda d: d.update(flag_groups=[[2, ["x"]]]),  # after the last round observed
        lambda d: d.update(flag_groups=[["yesterday", ["x"]]]),
        lambda d: d.update(flag_groups=[[1, []]]),
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


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["suspicion"].update(x=-1.0),
        lambda d: d["suspicion"].update(x="lots"),
        lambda d: d["config"].update(threshold=0.0),
        lambda d: d["config"].pop("norm_penalty"),
        lambda d: d.pop("quarantined"),
    ],
)
def test_damaged_old_state_refused(damage: object) -> None:
    data = json.loads(json.dumps(OLD_STATE))
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
            assert s >= 0.0 and rep.evidence(f"f{i}") >= rep.lower
            assert 0.0 <= rep.score(f"f{i}") <= 1.0
            assert (f"f{i}" in rep.quarantined) == (rep.quarantined_since(f"f{i}") is not None)
            if s >= rep.threshold:
                assert f"f{i}" in rep.quarantined


def test_a_flag_explained_by_a_named_offender_is_no_evidence_against_its_bucket_mates() -> None:
    rep = Reputation(test=QuarantineTest(facilities=12, bucket_size=3, max_byzantine=1))
    others = [f"h{i:02d}" for i in range(11)]
    for rnd in range(4):
        mates = others[2 * rnd : 2 * rnd + 2]
        rest = [h for h in others if h not in mates]
        buckets = {0: ["a", *mates], 1: rest[:3], 2: rest[3:6], 3: rest[6:]}
        before = {m: rep.evidence(m) for m in mates}
        newly = rep.observe(rnd, buckets, {0: "norm"})
        if rnd < 3:
            assert newly == [] and all(rep.evidence(m) > before[m] for m in mates)
    # the 4th flag names a (m = 1: without it, 4 disjoint buckets would need 4 offenders); its mates in
    # that round take nothing
    assert newly == ["a"] and rep.named == {"a"}
    assert all(rep.evidence(m) == before[m] for m in others[6:8])
