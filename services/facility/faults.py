"""Simulated misbehaviour of a facility for experiments (HFL_BYZANTINE): what is not an update attack."""

from __future__ import annotations

import asyncio
import logging
import secrets

from hfl.domain import TrainingPlan

log = logging.getLogger("hfl.facility")


async def stall(round_: int) -> None:
    """HFL_BYZANTINE=stall: accept the round, then never send the update (nor the masked input)."""
    log.warning("round %d: stalling on purpose (HFL_BYZANTINE=stall): the update is never sent", round_)
    await asyncio.sleep(24 * 3600)


def drops_out(plan: TrainingPlan) -> bool:
    """The demo drop-out roll: True with probability ``plan.drop_rate`` (never when it is 0)."""
    return plan.drop_rate > 0 and secrets.randbelow(1_000_000) < plan.drop_rate * 1_000_000
