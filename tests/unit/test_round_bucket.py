"""What a fog reports for one bucket (hfl.round.bucket): the plain bucket's tally and abandoned buckets."""

from __future__ import annotations

import numpy as np
import pytest

from hfl.domain import Bucket
from hfl.errors import AlreadyDone, NotAllowed
from hfl.round.bucket import PlainTally, abandoned

BUCKET = Bucket("b0", "fog-1", ("a", "b", "c", "d"), 3)


def test_tally_sums_in_the_bucket_order_and_reports_who_is_missing() -> None:
    t = PlainTally(BUCKET, dim=2)
    t.add("c", np.array([1.0, 2.0], dtype=np.float32))
    t.add("a", np.array([0.5, 0.5]))
    assert t.refuse("b") is True and t.lost("d") is True
    assert t.all_heard() and t.stragglers() == []
    r = t.result()
    assert not r.abandoned and r.count == 2 and r.members == ("a", "c") and r.dropped == ("b", "d")
    assert r.refused == ("b",) and r.unreachable == ("d",)
    assert r.total.dtype == np.float64
    np.testing.assert_array_equal(r.total, [1.5, 2.5])


def test_tally_waits_for_the_members_it_has_not_heard() -> None:
    t = PlainTally(BUCKET, dim=1)
    assert t.decline("b") is True
    t.add("a", np.ones(1))
    assert not t.all_heard() and t.stragglers() == ["c", "d"]
    assert t.decline("b") is True  # already declined: still not waited for (a set)
    assert t.lost("x") is False  # not a member: changes nothing
    assert t.lost("a") is False  # its update is here: not unreachable
    assert t.result().unreachable == () and t.result().dropped == ("b", "c", "d")


def test_an_update_after_being_given_up_on_counts() -> None:
    t = PlainTally(BUCKET, dim=1)
    t.lost("a")
    t.refuse("b")
    t.add("a", np.ones(1))  # slow to answer StartRound, but its update came
    t.add("b", np.ones(1))  # a malformed update, then a good one: kept, no longer evidence
    r = t.result()
    assert r.members == ("a", "b") and r.unreachable == () and r.refused == ()


def test_tally_refuses_strangers_and_second_updates() -> None:
    t = PlainTally(BUCKET, dim=1)
    with pytest.raises(NotAllowed):
        t.add("x", np.ones(1))
    t.add("a", np.ones(1))
    with pytest.raises(AlreadyDone):
        t.add("a", np.zeros(1))
    np.testing.assert_array_equal(t.result().total, [1.0])


def test_a_bucket_without_updates_is_abandoned_with_its_evidence() -> None:
    t = PlainTally(BUCKET, dim=3)
    t.refuse("c")
    t.lost("b")
    r = t.result()
    assert r.abandoned and r.reason == "no member sent an update" and r.count == 0 and r.members == ()
    assert r.total.size == 0 and r.dropped == BUCKET.members
    assert r.refused == ("c",) and r.unreachable == ("b",)


def test_abandoned_keeps_the_dropped_order_and_sorts_the_reports() -> None:
    r = abandoned(BUCKET, ("d", "a"), "too few", unreachable={"d", "a"})
    assert (r.bucket_id, r.fog_id, r.abandoned, r.reason) == ("b0", "fog-1", True, "too few")
    assert r.dropped == ("d", "a") and r.unreachable == ("a", "d") and r.refused == ()
    assert r.members == () and r.count == 0 and r.total.size == 0
