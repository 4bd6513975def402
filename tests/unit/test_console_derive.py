"""What the console's views compute from a snapshot (pure): statuses, the map, tables, the banner."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from hfl.console.data import LeaderStatus, Node, Nodes, PrivacySpend, Snapshot
from hfl.console.derive import (
    attention,
    bucket_rows,
    certificate_rows,
    committee_rows,
    epsilon_per_round,
    expiring,
    facility_status,
    flagged_rows,
    leader_state,
    map_dot,
    privacy_rows,
    refused_rows,
    specialty_rows,
    suspicion_chart,
    suspicion_rows,
    training_rows,
    vote_rows,
)
from hfl.domain import (
    BucketRecord,
    CertificateStatus,
    ClinicalMetrics,
    RoundEvent,
    SecurityReport,
    SpecialtyResult,
    VoteRecord,
)

FACILITIES = [f"f{i}" for i in range(1, 8)]


def _nodes(quarantined: tuple[str, ...] = (), inactive: tuple[str, ...] = ()) -> Nodes:
    return Nodes(
        (
            *(
                Node(f, "facility", "-", ("hospital", "clinic", "research", "emergency")[i % 4])
                for i, f in enumerate(FACILITIES)
            ),
            Node("fog-1", "fog", "-"),
            Node("fog-2", "fog", "-"),
            *(Node(f"v{i}", "validator", "-") for i in range(1, 6)),
        ),
        quarantined,
        inactive,
    )


def _event(rnd: int, committed: bool = True, eps: float = math.nan, **kw: object) -> RoundEvent:
    return RoundEvent(
        round=rnd,
        committed=committed,
        accuracy=0.8,
        epsilon=eps,
        committee=("v1", "v2", "v3", "v4"),
        buckets=(
            BucketRecord("b0", "fog-1", ("f1", "f2", "f3"), dropped=("f3",)),
            BucketRecord("b1", "fog-2", ("f4", "f5", "f6"), flagged=True),
        ),
        votes=(
            VoteRecord("v1", True),
            VoteRecord("v2", True),
            VoteRecord("v3", False, "accuracy drops"),
            VoteRecord("v4", False, "no answer in time", answered=False),
        ),
        **kw,  # type: ignore[arg-type]
    )


def test_each_facility_has_one_plain_status() -> None:
    snap = Snapshot(
        nodes=_nodes(quarantined=("f5",), inactive=("f6",)),
        privacy=PrivacySpend({"f4": 1.0}, ("f4",), budget=1.0),
        rounds=(_event(1),),
    )
    got = {f: facility_status(snap, f) for f in FACILITIES}
    assert got == {
        "f1": "training",
        "f2": "training",
        "f3": "dropped out",
        "f4": "out of privacy budget",
        "f5": "quarantined",
        "f6": "absent",
        "f7": "waiting",
    }
    # f1 was released (or revoked by hand): its certificate stays revoked until it enrols again
    released = Snapshot(nodes=_nodes(), rounds=(_event(1),), security=_report())
    assert facility_status(released, "f5") == "revoked: needs a new token"
    assert facility_status(released, "f1") == "training"
    ended = Snapshot(
        nodes=_nodes(quarantined=("f5",)),
        rounds=(_event(1),),
        leader=LeaderStatus(1, 1, finished=True, state="finished: all planned rounds are done", head_hash=""),
    )
    assert facility_status(ended, "f1") == "done: training has ended"  # not "training" any more
    assert facility_status(ended, "f5") == "quarantined"


def test_the_map_holds_every_member_and_this_rounds_buckets() -> None:
    snap = Snapshot(nodes=_nodes(), rounds=(_event(1),))
    dot = map_dot(snap)
    assert dot.startswith("digraph federation {") and dot.endswith("}")
    for name in [*FACILITIES, "fog-1", "fog-2", "v5", "authority", "leader"]:
        assert f'"{name}"' in dot or f"  {name} " in dot
    assert 'subgraph "cluster_b1" { label="bucket b1 (flagged)"' in dot
    assert '"v1" [shape=diamond, penwidth=3]' in dot and '"v5" [shape=diamond, style=dashed]' in dot
    assert dot.count("{") == dot.count("}")
    hostile = Snapshot(nodes=Nodes((Node('x"; evil', "facility", "-"),), (), ()))
    assert 'x\\"; evil' in map_dot(hostile)  # names are quoted, never DOT syntax


def test_tables_follow_the_round_events() -> None:
    clin = ClinicalMetrics(auc=0.9, sensitivity=0.7, specificity=0.8)
    rounds = (
        _event(1, committed=False, detail="block 1: only 2 valid accepting votes"),
        _event(1, clinical=clin, detail="committed", quarantined=("f5",)),
    )
    buckets = bucket_rows(rounds[-1])
    assert [r["outcome"] for r in buckets] == ["used", "flagged"]
    assert [r["dropped out"] for r in buckets] == ["f3", "none"]  # never a lone "-" (a Markdown bullet)
    assert [(r["round"], r["committed"], r["AUC"], r["outcome"]) for r in training_rows(rounds)] == [
        (1, False, None, "not committed: block 1: only 2 valid accepting votes"),
        (1, True, 0.9, "committed"),
    ]
    votes = vote_rows(rounds)
    assert len(votes) == 8 and [v["vote"] for v in votes[:4]] == ["accept", "accept", "reject", "no answer"]
    assert votes[2]["reason"] == "accuracy drops"
    assert committee_rows(rounds) == [{"first round": 1, "last round": 1, "committee": "v1, v2, v3, v4"}]
    assert flagged_rows(rounds) == [
        {"round": 1, "bucket": "b1", "fog": "fog-2", "members": "f4, f5, f6"},
        {"round": 1, "bucket": "b1", "fog": "fog-2", "members": "f4, f5, f6"},
    ]


def test_specialty_results_stand_beside_their_baseline() -> None:
    clinic = SpecialtyResult("clinic", 3, 0.8956, clinical=ClinicalMetrics(auc=0.83, baseline_accuracy=0.873))
    few = SpecialtyResult("research", 2, not_reported="only 2 research facilities took part")
    rows = specialty_rows(_event(1, specialties=(clinic, few)))
    assert rows[0] == {
        "specialty": "clinic",
        "facilities": 3,
        "accuracy": 0.8956,
        "baseline": 0.873,
        "AUC": 0.83,
        "note": "",
    }
    assert rows[1]["baseline"] is None and rows[1]["note"].startswith("only 2")


def test_the_leader_state_fits_a_metric() -> None:
    done = "all planned rounds are done"
    assert leader_state(f"finished: {done}") == ("finished", done)
    assert leader_state("paused by the operator: a: b") == ("paused by the operator", "a: b")
    assert leader_state("running round 7") == ("running round 7", "")


def test_rounds_left_come_from_the_worst_off_spend_rate() -> None:
    rounds = tuple(_event(r, eps=0.1 * r) for r in range(1, 5))
    assert epsilon_per_round(rounds) == pytest.approx(0.1)
    assert epsilon_per_round(rounds[:1]) is None
    snap = Snapshot(privacy=PrivacySpend({"f1": 0.4, "f2": 1.0}, ("f2",), budget=1.0), rounds=rounds)
    rows = {r["facility"]: r for r in privacy_rows(snap)}
    assert rows["f1"]["rounds left (about)"] == 6 and rows["f1"]["used"] == "40 %"
    assert rows["f2"]["rounds left (about)"] == "none"
    early = {r["facility"]: r for r in privacy_rows(Snapshot(privacy=snap.privacy, rounds=rounds[:1]))}
    assert early["f1"]["rounds left (about)"] == "not known yet"
    no_dp = Snapshot(privacy=PrivacySpend({}, ()), rounds=rounds)
    assert privacy_rows(no_dp) == []


def test_the_banner_says_what_needs_a_person() -> None:
    healthy = Snapshot(nodes=_nodes(), privacy=PrivacySpend({"f1": 0.1}, (), budget=1.0), rounds=(_event(1),))
    assert attention(healthy) == []
    stuck = (_event(2, committed=False, detail="only 1 vote"),) * 3
    worry = Snapshot(
        nodes=_nodes(quarantined=("f5",), inactive=("f6",)),
        privacy=PrivacySpend({"f1": 0.85}, (), budget=1.0),
        rounds=stuck,
        problems=("The leader at x did not answer (UNAVAILABLE).",),
        ended="training ended after round 1: every facility has used up its privacy budget",
    )
    lines = attention(worry)
    assert lines[0].startswith("The leader at x")
    assert any(line.startswith("Quarantined facilities: f5.") for line in lines)
    assert "Past 80 % of their privacy budget: f1." in lines
    assert "Absent (missed their last rounds): f6." in lines
    assert "The last 3 round attempts were not committed: only 1 vote" in lines
    assert lines[-1].startswith("Training has ended: training ended after round 1")


def _report() -> SecurityReport:
    return SecurityReport(
        quarantine_threshold=6.0,
        suspicion={"f1": 0.0, "f2": 3.0, "f5": 6.5},
        quarantined={"f5": 4},
        history=((3, {"f2": 1.0, "f5": 4.0}), (4, {"f1": 0.0, "f2": 3.0, "f5": 6.5})),
        certificates=(
            CertificateStatus("f1", "facility", "2026-12-03T12:30:00+00:00"),
            CertificateStatus("f5", "facility", "2026-12-03T12:10:00+00:00", revoked=True),
            CertificateStatus("v1", "validator", "2026-12-04T00:00:00+00:00"),
        ),
    )


def test_security_tables_from_the_authoritys_report() -> None:
    rows = suspicion_rows(_report())
    assert [r["facility"] for r in rows] == ["f5", "f2", "f1"]
    assert rows[0]["quarantined in round"] == 4 and rows[0]["share of the threshold"] == "108 %"
    assert rows[2]["quarantined in round"] is None
    assert suspicion_chart(_report()) == {"round": [3, 4], "f5": [4.0, 6.5], "f2": [1.0, 3.0]}  # f1: never
    sat_out = SecurityReport(
        quarantine_threshold=6.0,
        suspicion={"f5": 6.5},
        quarantined={"f5": 5},
        history=((3, {"f5": 4.0}), (4, {}), (5, {"f5": 6.5}), (6, {})),
    )
    # f5 sat round 4 out (its suspicion held), and has no value after its last round
    assert suspicion_chart(sat_out) == {"round": [3, 4, 5, 6], "f5": [4.0, 4.0, 6.5, None]}
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    certs = certificate_rows(_report(), now)
    assert [(c["node"], c["hours left"]) for c in certs] == [("f5", 0.2), ("f1", 0.5), ("v1", 12.0)]
    assert expiring(_report(), now) == ["f1"]  # a revoked certificate needs no renewal
    assert suspicion_rows(None) == [] and certificate_rows(None, now) == [] and suspicion_chart(None) == {}


def test_refused_calls_say_why_in_plain_words() -> None:
    rows = refused_rows({"ListNodes: UNAUTHENTICATED": 6, "GetRevocations: UNAVAILABLE": 1})
    assert rows == [
        {"call": "GetRevocations", "why": "UNAVAILABLE", "times": 1},
        {
            "call": "ListNodes",
            "why": "no valid certificate (for example a revoked or quarantined node still calling) "
            "(UNAUTHENTICATED)",
            "times": 6,
        },
    ]


def test_the_authority_assembles_its_report_without_tls() -> None:
    from hfl.robust.reputation import Reputation
    from services.authority.security import security_report

    rep = Reputation()
    rep.observe(3001, {"b0": ["f1", "f2", "f3"], "b1": ["f4", "f5", "f6"]}, {"b1": "norm"})
    report = security_report(rep.to_dict(), [(3, {"suspicion": {"f4": 1.0}}), (4, {"committed": True})], None)
    assert report.suspicion["f4"] == report.suspicion["f5"] > 0 == report.suspicion.get("f1", 0)
    assert report.history == ((3, {"f4": 1.0}),)  # reports without a suspicion record are skipped
    assert report.quarantine_threshold == rep.threshold and report.certificates == ()
