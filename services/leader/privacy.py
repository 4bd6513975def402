"""The leader's side of differential privacy: calibrate the noise once at start-up and say so.

HFL_DP_EPSILON (more than 0) turns DP on. The leader calibrates the noise multiplier so that
HFL_DP_ROUNDS (default: HFL_ROUNDS) rounds, plus HFL_DP_SPARE_ROUNDS spare ones for retried rounds
(default 10 %, at least 2), of ``ceil(local_epochs / q)`` Poisson-sampled DP-SGD steps spend the budget
(minus the small ε set aside for each facility's published statistics) with the chosen accountant, logs
the plain-language summary, and ships the resulting plan to every facility in ``TrainingPlan.dp``.
"""

from __future__ import annotations

import logging

from hfl.errors import ConfigError
from hfl.privacy.federation import DPPlan, describe_plan, plan_dp, spare_rounds
from hfl.rpc.settings import LeaderSettings

log = logging.getLogger("hfl.leader")


def dp_rounds(settings: LeaderSettings) -> int:
    """How many rounds the privacy budget is spread over: HFL_DP_ROUNDS, else HFL_ROUNDS. After them each
    facility's budget is used up and it sits out (the federation may go on with sites that have budget).
    A leader with differential privacy and neither is refused when its settings load."""
    return settings.rounds if settings.dp_rounds is None else settings.dp_rounds


def dp_plan_from_settings(settings: LeaderSettings) -> DPPlan | None:
    """The calibrated DP plan, or None when HFL_DP_EPSILON is not set (no differential privacy)."""
    if settings.dp_epsilon is None:
        return None
    rounds = dp_rounds(settings)
    try:
        spare = spare_rounds(rounds, settings.dp_spare_rounds)
    except ValueError as e:
        raise ConfigError(f"HFL_DP_SPARE_ROUNDS: {e}") from None
    log.info(
        "calibrating the privacy noise for ε=%g, δ=%g over %d rounds plus %d spare for rounds the "
        "validators send back ...",
        settings.dp_epsilon,
        settings.dp_delta,
        rounds,
        spare,
    )
    try:
        plan = plan_dp(
            epsilon=settings.dp_epsilon,
            delta=settings.dp_delta,
            rounds=rounds + spare,
            mechanism=settings.dp_mechanism,
            accountant=settings.dp_accountant,
            clip=settings.dp_clip,
            sampling_rate=settings.dp_sampling_rate,
            local_epochs=settings.dp_local_epochs,
            release_epsilon=settings.dp_release_epsilon,
        )
    except ValueError as e:
        raise ConfigError(f"differential privacy cannot be set up: {e}") from None
    log.info("differential privacy: %s", describe_plan(plan))
    return plan
