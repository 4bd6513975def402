"""One facility cannot slow everyone (issue 18): a member that accepts a stage and then goes silent
costs the bucket the straggler window, not the stage limit; it is reported like an absent member and
left out after repeated stalls; an honest member that is slower but within the window is kept."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hfl.deadline import StragglerWindow, stage_deadline
from hfl.schedule import Attendance
from services.fog.secure import StageTimeouts, run_secure_bucket
from tests.unit.test_secagg_wiring import ATTEMPT, PLAN, ROUND, D, FakeFacilities

# Stage limits of a minute; the window floor is 0.2 s. Every run below must end long before a limit:
# ``bounded`` gives it 20 s (a bound on waiting, not a timing assertion).
LONG = StageTimeouts(keys=60.0, masked=60.0, factor=4.0, floor_s=0.2)


def bounded(fakes: FakeFacilities, timeouts: StageTimeouts = LONG):
    async def go():
        return await asyncio.wait_for(
            run_secure_bucket(fakes.bucket, ROUND, ATTEMPT, D, PLAN, fakes, timeouts), timeout=20
        )

    return asyncio.run(go())


def test_the_window_opens_once_half_have_answered() -> None:
    assert stage_deadline([0.1], expected=4, limit_s=60) == 60  # 1 of 4: keep waiting
    assert stage_deadline([0.1, 0.3], expected=4, limit_s=60) == 2.0  # floor
    assert stage_deadline([3.0, 5.0, 4.0], expected=4, limit_s=60) == 16.0  # 4 x median 4 s
    assert stage_deadline([30.0, 40.0], expected=4, limit_s=60) == 60  # never past the limit
    assert stage_deadline([1.0], expected=1, limit_s=9, factor=2, floor_s=0) == 2.0
    with pytest.raises(ValueError):
        stage_deadline([], expected=0, limit_s=1)


def test_a_window_waits_the_limit_until_half_have_answered_then_the_window() -> None:
    w = StragglerWindow(started=100.0, expected=4, limit_s=60.0, factor=4.0, floor_s=2.0)
    assert w.left(100.0) == 60.0 and np.isnan(w.median_s())
    w.hear(101.0)  # 1 of 4 after 1 s: still the limit
    assert w.left(110.0) == 50.0
    w.hear(103.0, count=2)  # 3 of 4, median 3 s: 12 s after the start
    assert w.heard == [1.0, 3.0, 3.0] and w.median_s() == 3.0
    assert w.left(110.0) == 2.0 and w.left(112.0) == 0.0 and w.left(113.0) < 0
    assert w.waited(113.0) == 13.0
    w.hear(104.0, count=0)  # nothing arrived: nothing changes
    assert w.heard == [1.0, 3.0, 3.0]
    shared: list[float] = []
    StragglerWindow(0.0, 2, 9.0, heard=shared).hear(1.5)
    assert shared == [1.5]  # a caller's list records the answers


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_a_member_stalling_at_any_stage_costs_the_window_not_the_limit(stage: int) -> None:
    fakes = FakeFacilities(8, silent={"f2": stage})
    r = bounded(fakes)
    assert not r.abandoned, r.reason
    in_sum = fakes.ids if stage == 4 else [m for m in fakes.ids if m != "f2"]
    assert list(r.members) == in_sum
    np.testing.assert_array_equal(r.total, fakes.expected(in_sum))
    assert r.unreachable == ("f2",)  # reported: the authority counts it like an absent member


class SlowButHonest(FakeFacilities):
    """f5 takes 0.6 s for its masked input (training); the others answer at once."""

    async def masked_input(self, member, shares, timeout):  # type: ignore[no-untyped-def]
        if member == "f5":
            await asyncio.sleep(0.6)
        return await super().masked_input(member, shares, timeout)


def test_an_honest_slow_member_within_the_window_is_kept_and_not_reported() -> None:
    fakes = SlowButHonest(6)
    r = bounded(fakes, StageTimeouts(keys=60.0, masked=60.0, factor=4.0, floor_s=1.0))
    assert list(r.members) == fakes.ids and r.unreachable == ()
    np.testing.assert_array_equal(r.total, fakes.expected(fakes.ids))


def test_a_member_that_keeps_stalling_is_left_out_and_one_stall_is_forgiven() -> None:
    scheduled = [f"f{i}" for i in range(6)]
    once = Attendance(limit=3)
    once.observe(1, scheduled, ["f2"])  # stalled in one round
    once.observe(2, scheduled, [])
    assert "f2" not in once.inactive and once.missed("f2") == 0
    repeated = Attendance(limit=3)
    for round_ in (1, 2, 3):
        repeated.observe(round_, scheduled, ["f2"])
    assert repeated.inactive == frozenset({"f2"})
