"""A round that keeps failing is tried again after a growing pause, not many times a second."""

from __future__ import annotations

import itertools

from hfl.bounds import SLOTS_PER_ROUND
from hfl.round.leader import RETRY_PAUSE_MAX_S, retry_pause


def test_first_attempts_go_at_once_then_the_pause_doubles_up_to_a_ceiling() -> None:
    assert retry_pause(0) == 0.0  # a new round after a committed one: no pause
    pauses = [retry_pause(a) for a in range(1, 12)]
    assert pauses[0] == 0.1
    assert all(b == min(RETRY_PAUSE_MAX_S, 2 * a) for a, b in itertools.pairwise(pauses))
    assert pauses[-1] == RETRY_PAUSE_MAX_S


def test_a_stalled_round_takes_hours_to_reach_the_attempt_limit() -> None:
    """Each attempt is numbered and the privacy ledger numbers at most SLOTS_PER_ROUND per round."""
    total = sum(retry_pause(a) for a in range(1, SLOTS_PER_ROUND))
    assert total > 2 * 3600
