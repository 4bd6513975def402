"""How long a round waits for its last members (sans-I/O).

A stage of a round (the fog asking a bucket's members for their keys, their masked input, their unmask
shares, or waiting for plain updates) has a hard limit from the round plan. Waiting that long for a
member that accepted the round and then went silent made every round cost the full limit, round after
round. Instead, once half of the members have answered, the others get ``factor`` times the median time
the answers took (at least ``floor_s``), never more than the hard limit. Members still silent then are
*late*: the stage goes on without them (secure aggregation recovers dropped members from their shares),
and they are reported like absent members, so a site that keeps stalling is left out after
``HFL_ABSENT_ROUNDS`` rounds in a row, as an unreachable one is.

With the defaults (4 x the median, at least 2 s) an honest site is cut only when it is more than four
times slower than the middle of its bucket in that stage; it loses that round's contribution, and only
stalling in several rounds in a row leaves it out. Raise HFL_STRAGGLER_FACTOR for federations whose sites
differ a lot in speed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

STRAGGLER_FACTOR = 4.0
STRAGGLER_FLOOR_S = 2.0


def stage_deadline(
    answer_times: Sequence[float],
    expected: int,
    limit_s: float,
    *,
    factor: float = STRAGGLER_FACTOR,
    floor_s: float = STRAGGLER_FLOOR_S,
) -> float:
    """Seconds after the stage started at which to stop waiting, given how long each answer so far took.

    ``expected``: members asked in this stage. Until half of them (rounded up) have answered, the hard
    limit applies; then ``max(floor_s, factor * median)``, capped by the limit."""
    if expected < 1 or limit_s <= 0 or factor < 1 or floor_s < 0:
        raise ValueError("a stage needs members, a positive limit, factor >= 1 and floor >= 0")
    if len(answer_times) < math.ceil(expected / 2):
        return limit_s
    return min(limit_s, max(floor_s, factor * statistics.median(answer_times)))


@dataclass
class StragglerWindow:
    """One stage's wait, as a small state machine: when it started, when each answer was heard, and so
    how long to go on waiting (``stage_deadline``). The caller keeps the clock: ``now`` is any monotonic
    time in seconds, the same clock as ``started``.

    ``heard`` may be a list the caller shares (the plain bucket records its answers there)."""

    started: float
    expected: int
    limit_s: float
    factor: float = STRAGGLER_FACTOR
    floor_s: float = STRAGGLER_FLOOR_S
    heard: list[float] = field(default_factory=list)

    def hear(self, now: float, count: int = 1) -> None:
        """``count`` answers (usable or not) arrived at ``now``."""
        self.heard.extend([now - self.started] * count)

    def waited(self, now: float) -> float:
        """Seconds since the stage started."""
        return now - self.started

    def left(self, now: float) -> float:
        """Seconds still to wait at ``now``; zero or less: stop waiting, the silent ones are late."""
        cut = stage_deadline(
            self.heard, self.expected, self.limit_s, factor=self.factor, floor_s=self.floor_s
        )
        return self.started + cut - now

    def median_s(self) -> float:
        """The median time the answers took (NaN before any)."""
        return statistics.median(self.heard) if self.heard else float("nan")
