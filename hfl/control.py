"""The operator's steering of training (pause, resume, stop after a round, round interval), as a pure
state machine, and the record each operator action leaves.

The leader keeps a TrainingControl, persists it (services/leader/control.py) and consults it before every
round; `apply` is the only way it changes, and it refuses anything that makes no sense with one plain
sentence (InvalidInput) without changing anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from hfl import bounds
from hfl.errors import InvalidInput

Action = Literal["pause", "resume", "stop_after", "round_interval"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "stop_after", "round_interval")
MAX_INTERVAL_S = 7 * 24 * 3600.0  # a week between rounds is the longest pause-like interval accepted


@dataclass(frozen=True)
class TrainingControl:
    """What the operator has decided about training. ``stop_after``: the last round to train (None: as
    planned). ``round_interval_s``: seconds between rounds (None: the leader's HFL_ROUND_INTERVAL)."""

    paused: bool = False
    pause_reason: str = ""
    stop_after: int | None = None
    round_interval_s: float | None = None

    def interval(self, default: float) -> float:
        return default if self.round_interval_s is None else self.round_interval_s

    def last_round(self, target: int) -> int:
        """The last round to train: the planned target (0: no end) unless the operator stops earlier."""
        if self.stop_after is None:
            return target
        return self.stop_after if target == 0 else min(target, self.stop_after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "stop_after": self.stop_after,
            "round_interval_s": self.round_interval_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingControl:
        return cls(
            paused=bool(d.get("paused", False)),
            pause_reason=str(d.get("pause_reason", "")),
            stop_after=None if d.get("stop_after") is None else int(d["stop_after"]),
            round_interval_s=None if d.get("round_interval_s") is None else float(d["round_interval_s"]),
        )


def reason_of(text: str) -> str:
    """An operator's reason: required, one line, at most MAX_REASON characters."""
    reason = " ".join(bounds.reason(text, "the reason").split())
    if not reason:
        raise InvalidInput(
            f"give the reason in 1 to {bounds.MAX_REASON} characters; it is kept in the record"
        )
    return reason


def apply(
    state: TrainingControl,
    action: str,
    reason: str,
    *,
    committed_round: int,
    round_: int = 0,
    seconds: float = 0.0,
    planned: int = 0,
    ended: str = "",
) -> TrainingControl:
    """The control after ``action`` (a reason is always required). ``round_``: for stop_after, the last
    round to train (0 clears it), no later than the ``planned`` last round (0: no end planned);
    ``seconds``: for round_interval (negative clears it); ``ended``: why training has ended, if it has
    (then every control is refused: it could change nothing)."""
    why = reason_of(reason)
    if ended:
        raise InvalidInput(
            f"training has already ended ({ended}), so there is nothing to control; start a new run instead"
        )
    if action == "pause":
        if state.paused:
            raise InvalidInput(f"training is already paused ({state.pause_reason})")
        return replace(state, paused=True, pause_reason=why)
    if action == "resume":
        if not state.paused:
            raise InvalidInput("training is not paused")
        return replace(state, paused=False, pause_reason="")
    if action == "stop_after":
        if round_ == 0:
            return replace(state, stop_after=None)
        if not 0 < round_ <= bounds.MAX_ROUND:
            raise InvalidInput(f"the last round must be a round number from 1 to {bounds.MAX_ROUND}")
        if round_ < committed_round:
            raise InvalidInput(
                f"round {committed_round} is already committed; choose round {committed_round} or later"
            )
        if planned and round_ > planned:
            raise InvalidInput(
                f"training is planned to end after round {planned} (HFL_ROUNDS); stop-after can only end "
                f"it earlier, so choose round {planned} or earlier"
            )
        return replace(state, stop_after=round_)
    if action == "round_interval":
        if seconds < 0:
            return replace(state, round_interval_s=None)
        if not math.isfinite(seconds) or seconds > MAX_INTERVAL_S:
            raise InvalidInput(f"the round interval must be 0 to {MAX_INTERVAL_S:.0f} seconds")
        return replace(state, round_interval_s=float(seconds))
    raise InvalidInput(f"unknown control {action!r}; choose one of {', '.join(ACTIONS)}")


@dataclass(frozen=True)
class OperatorAction:
    """One operator action as recorded: when (ISO 8601, UTC), who (the operator certificate's id), what,
    on what, why, and what came of it."""

    at: str
    by: str
    action: str
    target: str
    reason: str
    result: str
