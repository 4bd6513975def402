"""What `hfl demo` prints beside each round's progress line."""

from __future__ import annotations

import argparse

from hfl.demo import header_line, hosting_text, quarantine_lines, round_line, specialty_lines
from hfl.domain import RoundEvent, SpecialtyResult


def test_a_facility_is_announced_once_in_the_round_it_is_quarantined() -> None:
    assert quarantine_lines((), ()) == []
    assert quarantine_lines((), ("facility-12",)) == [
        "  facility-12 quarantined: left out of every later round"
    ]
    assert quarantine_lines(("facility-12",), ("facility-12",)) == []
    assert quarantine_lines(("facility-12",), ("facility-12", "facility-03", "facility-11")) == [
        "  facility-03 quarantined: left out of every later round",
        "  facility-11 quarantined: left out of every later round",
    ]
    assert quarantine_lines(("facility-12",), ()) == []  # released: nothing to announce here


def test_a_refused_attempt_says_not_committed_once_and_why() -> None:
    why = "block 5: only 0 valid accepting votes; 3 of 4 needed (accuracy on validation data drops)"
    line = round_line(RoundEvent(round=5, committed=False, rejects=4, detail=why), 4, 20)
    assert line.lower().count("not committed") == 1
    assert line.endswith(f"NOT committed ({why})")
    assert "votes 0 yes/4 no" in line
    ok = round_line(RoundEvent(round=5, committed=True, accuracy=0.8, accepts=4, detail="committed"), 5, 20)
    assert ok.endswith("committed") and "NOT" not in ok and "accuracy 0.800" in ok


def test_shared_processes_claim_no_port_for_a_facility() -> None:
    assert hosting_text(8, 1) == "one process per facility (8 processes)"
    shared = hosting_text(200, 25)
    assert shared.startswith("25 per process (8 processes; ")
    assert "port" not in shared  # facilities only dial out


def test_the_first_line_counts_in_the_singular_when_there_is_one() -> None:
    args = argparse.Namespace(
        fogs=1, validators=4, committee=4, rounds=1, dataset="synthetic", model="logreg", secagg=True
    )
    assert header_line(args, 8) == (
        "hfl demo: 8 facilities, 1 fog, 4 validators (all on every committee), 1 round, "
        "dataset synthetic, model logreg, secure aggregation on"
    )
    args.fogs, args.validators, args.rounds = 2, 7, 10
    assert "2 fogs, 7 validators (committees of 4), 10 rounds," in header_line(args, 8)


def test_specialties_too_small_this_round_get_the_hint_only_when_given() -> None:
    results = [
        SpecialtyResult("clinic", 2, not_reported="only 2 clinic facilities took part"),
        SpecialtyResult("hospital", 3, accuracy=0.8),
    ]
    with_hint = specialty_lines(results, "try --facilities 12 to see all four").splitlines()
    assert with_hint[-1].startswith("  Not shown: clinic (2) — a specialty needs at least 3 of its")
    assert with_hint[-1].endswith("worked out (try --facilities 12 to see all four).")
    assert specialty_lines(results).splitlines()[-1].endswith("worked out.")  # 12 already, or csv: data


def test_a_committed_round_says_who_dropped_out_and_what_was_flagged() -> None:
    quiet = round_line(RoundEvent(round=2, committed=True, accuracy=0.8, accepts=4), 2, 10)
    assert quiet.endswith("committed")
    busy = RoundEvent(round=2, committed=True, accuracy=0.8, accepts=4, dropouts=3, flagged_buckets=("b1",))
    assert round_line(busy, 2, 10).endswith("committed (3 facilities dropped out; 1 bucket flagged)")
    one = RoundEvent(round=2, committed=True, dropouts=1, flagged_buckets=("b1", "b2"))
    assert round_line(one, 2, 10).endswith("committed (1 facility dropped out; 2 buckets flagged)")
    lost = RoundEvent(round=1, committed=True, dropouts=2, abandoned_buckets=1)
    assert round_line(lost, 1, 10).endswith(
        "committed (2 facilities dropped out; 1 bucket left out: too few of its members stayed)"
    )


def test_simulated_misbehaviour_is_named_at_start() -> None:
    from hfl.demo import simulated_line

    assert simulated_line({}, {}) == ""
    assert simulated_line({"facility-08": "scale"}, {"validator-7": "reject_all"}) == (
        "Simulated misbehaviour (set by you): facility-08 (scale), validator-7 (reject_all)"
    )


def test_the_privacy_line_explains_the_budget_before_the_settings() -> None:
    from hfl.demo_dp import dp_banner

    assert dp_banner(None) == "Differential privacy: off"
    plan = {
        "mechanism": "gaussian", "accountant": "rdp", "clip": 1.0, "noise_multiplier": 5.9412,
        "sampling_rate": 0.25, "delta": 1e-5, "epsilon_budget": 1.0, "steps_per_round": 4, "rounds": 10,
    }  # fmt: skip
    plain, technical = dp_banner(plan).split("\n")
    assert plain.startswith(
        "Differential privacy: on. Each facility may spend a privacy budget of ε = 1, enough for 10 "
        "rounds, the planned ones and a few spare for retried ones"
    )
    assert "a random 25% of a site's patients" in plain and "gaussian noise 5.94 times" in plain
    assert technical == (
        "  (noise multiplier 5.94, clip 1, sampling rate q = 0.25, 4 steps per round, RDP accounting with "
        "Google's dp-accounting)"
    )
