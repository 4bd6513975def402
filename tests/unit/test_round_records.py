"""What the leader tells the operator about each round attempt: every bucket (fog, members, dropouts,
flagged or abandoned) and every committee member's vote, carried on the wire without loss."""

from __future__ import annotations

import numpy as np

from hfl.domain import Bucket, BucketRecord, BucketResult, NodeInfo, RoundConfig, RoundEvent, VoteRecord
from hfl.ledger import Vote
from hfl.round.leader import bucket_records, vote_records
from hfl.rpc import serde


def _config() -> RoundConfig:
    return RoundConfig(
        round=4,
        attempt=1,
        seed=b"s" * 32,
        ledger_head=b"h" * 32,
        epoch=0,
        buckets=(
            Bucket("b0", "fog-1", ("a", "b", "c"), 2),
            Bucket("b1", "fog-2", ("d", "e", "f"), 2),
            Bucket("b2", "fog-1", ("g", "h", "i"), 2),
        ),
        committee=tuple(
            NodeInfo(f"validator-{i}", "validator", f"127.0.0.1:{i}", b"k" * 32) for i in (1, 2, 3)
        ),
        quorum=2,
        facilities=(),
        fogs=(),
    )


def _result(bucket: str, fog: str, members: tuple[str, ...], **kw: object) -> BucketResult:
    return BucketResult(bucket, fog, np.zeros(2), len(members), members, **kw)  # type: ignore[arg-type]


def test_every_scheduled_bucket_is_recorded_with_its_fate() -> None:
    results = [
        _result("b0", "fog-1", ("a", "c"), dropped=("b",)),
        _result("b1", "fog-2", (), abandoned=True, reason="too few survivors"),
    ]  # b2: its fog sent nothing
    records = bucket_records(_config(), results, flagged=("b0",))
    assert records == (
        BucketRecord("b0", "fog-1", ("a", "b", "c"), dropped=("b",), flagged=True, abandoned=False),
        BucketRecord("b1", "fog-2", ("d", "e", "f"), flagged=False, abandoned=True),
        BucketRecord("b2", "fog-1", ("g", "h", "i"), flagged=False, abandoned=True),
    )


def test_every_committee_member_has_a_vote_or_says_it_did_not_answer() -> None:
    h = b"x" * 32
    votes = [
        Vote(4, h, "validator-3", False, "accuracy drops by 0.2", None, b"s" * 64),
        Vote(4, h, "validator-1", True, "", 0.8, b"s" * 64),
        Vote(4, h, "validator-9", True, "", 0.8, b"s" * 64),  # not on the committee: not listed
    ]
    assert vote_records(_config(), votes) == (
        VoteRecord("validator-1", accept=True, reason=""),
        VoteRecord("validator-2", accept=False, reason="no answer in time", answered=False),
        VoteRecord("validator-3", accept=False, reason="accuracy drops by 0.2"),
    )


def test_round_event_records_survive_the_wire() -> None:
    event = RoundEvent(
        round=4,
        committed=False,
        votes=vote_records(_config(), []),
        buckets=bucket_records(_config(), [], flagged=()),
        detail="not committed",
    )
    back = serde.event_from_proto(serde.event_to_proto(event))
    assert back.votes == event.votes and back.buckets == event.buckets
    assert [v.answered for v in back.votes] == [False, False, False]
    assert all(b.abandoned for b in back.buckets)


def test_topology_metric_shows_only_this_rounds_buckets() -> None:
    """The Grafana topology table reads hfl_facility_fog: after buckets are dealt again, the old pairs
    are gone (they used to stay at 1 for ever)."""
    from dataclasses import replace

    from prometheus_client import REGISTRY

    from services.leader.rounds import publish_topology

    def pairs() -> set[tuple[str, str]]:
        return {
            (s.labels["facility"], s.labels["fog"])
            for m in REGISTRY.collect()
            if m.name == "hfl_facility_fog"
            for s in m.samples
            if s.value == 1
        }

    first = _config()
    publish_topology(first)
    assert pairs() == {(m, b.fog_id) for b in first.buckets for m in b.members}
    dealt_again = replace(first, buckets=(Bucket("b0", "fog-2", ("a", "d", "g"), 2),))
    publish_topology(dealt_again)
    assert pairs() == {("a", "fog-2"), ("d", "fog-2"), ("g", "fog-2")}


def test_round_cost_is_typed_on_the_wire() -> None:
    from hfl.domain import RoundCost

    cost = RoundCost({"config": 0.01, "committee": 0.2}, 10, 20, 30, 40, {"fog": 5, "validator": 7})
    back = serde.event_from_proto(serde.event_to_proto(RoundEvent(round=1, committed=True, cost=cost)))
    assert back.cost == cost
    assert back.cost.to_dict()["traffic"]["fog_bytes_in_max"] == 40
    assert serde.event_from_proto(serde.event_to_proto(RoundEvent(round=1, committed=True))).cost is None


def test_round_report_is_typed_on_the_wire() -> None:
    """The leader's evidence for the authority, including a committee member that did not vote."""
    from hfl.domain import RoundReport

    report = RoundReport(
        flags={"b1": "norm"},
        refused=("f9",),
        absent=("f3", "f4"),
        votes=(("validator-1", True), ("validator-2", None), ("validator-3", False)),
    )
    back = serde.round_report_from_proto(serde.round_report_to_proto(report))
    assert back == report and back.committee == ("validator-1", "validator-2", "validator-3")
    assert serde.round_report_from_proto(serde.round_report_to_proto(RoundReport())) == RoundReport()
