"""Differential privacy for a whole federation: the plan the leader calibrates and every facility follows.

The leader turns a target (ε, δ) into a :class:`DPPlan` once, at start-up, and sends it to facilities in
``TrainingPlan.dp`` (a ``PrivacyPlan`` message on the wire, see hfl.rpc.serde). The plan fixes everything
the accounting depends on, so that every facility spends exactly the same ε per round:

* each round a facility takes exactly ``steps_per_round`` DP-SGD steps (``ceil(local_epochs / q)``),
  each on a Poisson-sampled batch (every record joins with probability ``q``), whatever its data size;
* ``release_epsilon`` (pure ε) is set aside once per facility for the statistics it publishes on the
  dashboard (noisy sample count and class balance, Laplace mechanism); the training budget is what
  remains: ``epsilon_budget - release_epsilon``;
* the noise multiplier is calibrated so that ``rounds`` rounds spend (just under) that training budget
  with the chosen accountant (:func:`hfl.privacy.calibrate.calibrate_noise_multiplier`).

Spend records use one ledger slot per round attempt (:func:`spend_slot`): a retried round trains again
and so spends again, and the privacy ledger keeps one record per (facility, slot, kind).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hfl.bounds import SLOTS_PER_ROUND, attempt_slot
from hfl.learning.data import Dataset
from hfl.learning.models import Model
from hfl.learning.train import clip_update, train_local_private_steps
from hfl.privacy.accountant import PrivacyAccountant
from hfl.privacy.calibrate import calibrate_noise_multiplier, describe
from hfl.privacy.dpsgd import ACCOUNTANTS, DPSGD, MECHANISMS, DPConfig, check_supported
from hfl.privacy.report import SpendReport

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DP_LR",
    "DEFAULT_LOCAL_EPOCHS",
    "DEFAULT_SAMPLING_RATE",
    "MAX_ATTEMPTS",
    "DPPlan",
    "default_release_epsilon",
    "describe_plan",
    "dp_local_update",
    "plan_dp",
    "sampling_rate_or_default",
    "spend_slot",
]

# Defaults tuned with bench/dp_sweep.py (see bench/results/NOTES-privacy.md).
DEFAULT_CLIP = 1.0
DEFAULT_SAMPLING_RATE = 0.25
DEFAULT_LOCAL_EPOCHS = 1.0
DEFAULT_DP_LR = 0.3
MAX_ATTEMPTS = SLOTS_PER_ROUND  # attempts per round that get their own ledger slot (hfl.bounds)


def sampling_rate_or_default(sampling_rate: float | None) -> float:
    """The Poisson sampling rate q to use: the one given (HFL_DP_SAMPLING_RATE), else the built-in one."""
    return DEFAULT_SAMPLING_RATE if sampling_rate is None else sampling_rate


def spend_slot(round_: int, attempt: int) -> int:
    """Ledger slot of one round attempt: round·1000 + attempt (slot 0 holds the one-off release)."""
    for name, v in (("round", round_), ("attempt", attempt)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if attempt >= MAX_ATTEMPTS:
        raise ValueError(
            f"round {round_} has been retried {attempt} times; at most {MAX_ATTEMPTS - 1} retries "
            "can be accounted for"
        )
    return attempt_slot(round_, attempt)


def ledger_entry(report: SpendReport) -> tuple[int, dict[str, Any]]:
    """Where the authority records a facility's spend report, and the details it keeps with it: a training
    spend under its round attempt's slot (:func:`spend_slot`), the one-off release under slot 0. Raises
    ValueError for a round attempt that has no slot."""
    slot = 0 if report.kind == "release" else spend_slot(report.round, report.attempt)
    details = {**report.details, "round": report.round, "attempt": report.attempt, "steps": report.steps}
    return slot, details


def default_release_epsilon(epsilon: float) -> float:
    """ε set aside for the dashboard statistics: 5% of the budget, at most 0.1."""
    return min(0.1, 0.05 * float(epsilon))


def _num(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise ValueError(f"the privacy plan's {key!r} must be a finite number, got {v!r}")
    return float(v)


def _int(d: dict[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"the privacy plan's {key!r} must be a positive integer, got {v!r}")
    return v


@dataclass(frozen=True)
class DPPlan:
    """Everything a facility needs to train privately and account for it (travels as JSON)."""

    mechanism: str
    accountant: str
    clip: float
    noise_multiplier: float
    sampling_rate: float
    delta: float
    epsilon_budget: float
    steps_per_round: int
    rounds: int
    release_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.release_epsilon < self.epsilon_budget:
            raise ValueError(
                f"the ε for released statistics ({self.release_epsilon:g}) must be below the whole "
                f"budget ε={self.epsilon_budget:g}"
            )
        if self.steps_per_round < 1 or self.rounds < 1:
            raise ValueError("steps per round and rounds must be at least 1")
        self.dp_config()  # validates mechanism, accountant, clip, σ, q, δ and the budget

    @property
    def training_budget(self) -> float:
        """ε available to DP-SGD: the budget minus what the released statistics cost."""
        return self.epsilon_budget - self.release_epsilon

    def dp_config(self, epsilon_budget: float | None = None) -> DPConfig:
        """DPConfig for DP-SGD and its accountant; the budget is the *training* budget."""
        budget = self.training_budget if epsilon_budget is None else epsilon_budget
        return DPConfig(
            mechanism=self.mechanism,  # type: ignore[arg-type]
            clip=self.clip,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=self.sampling_rate,
            accountant=self.accountant,  # type: ignore[arg-type]
            delta=self.delta,
            epsilon_budget=budget,
        )

    def accounting_key(self) -> dict[str, Any]:
        """The parameters a running ε total depends on; they must not change during a facility's life."""
        return {
            "mechanism": self.mechanism,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "delta": self.delta,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> DPPlan:
        """Parse and check a plan received on the wire; raises ValueError with a plain message."""
        if not isinstance(d, dict):
            raise ValueError("the privacy plan must be a JSON object")
        mech, acct = d.get("mechanism"), d.get("accountant")
        if mech not in MECHANISMS:
            raise ValueError(f"unknown noise mechanism {mech!r}; choose {' or '.join(MECHANISMS)}")
        if acct not in ACCOUNTANTS:
            raise ValueError(f"unknown privacy accountant {acct!r}; choose {' or '.join(ACCOUNTANTS)}")
        return cls(
            mechanism=str(mech),
            accountant=str(acct),
            clip=_num(d, "clip"),
            noise_multiplier=_num(d, "noise_multiplier"),
            sampling_rate=_num(d, "sampling_rate"),
            delta=_num(d, "delta"),
            epsilon_budget=_num(d, "epsilon_budget"),
            steps_per_round=_int(d, "steps_per_round"),
            rounds=_int(d, "rounds"),
            release_epsilon=_num(d, "release_epsilon") if "release_epsilon" in d else 0.0,
        )

    def epsilon_after_rounds(self, rounds: int) -> float:
        """Training ε (at δ) after ``rounds`` full rounds, from dp_accounting."""
        return PrivacyAccountant(self.dp_config()).epsilon_after(self.steps_per_round * rounds)


def spare_rounds(rounds: int, spare: int | None = None) -> int:
    """Trainings kept in the budget for retried rounds. A round the validators refuse is trained again,
    and that second noisy release costs privacy like any other; without spare trainings one refusal
    would use up every facility's budget a round before the planned end. None: 10 % of ``rounds``,
    at least 2."""
    if spare is None:
        return max(2, math.ceil(rounds / 10))
    if isinstance(spare, bool) or not isinstance(spare, int) or spare < 0:
        raise ValueError(f"spare rounds for retries must be 0 or more, got {spare!r}")
    return spare


def plan_dp(
    *,
    epsilon: float,
    delta: float,
    rounds: int,
    mechanism: str = "gaussian",
    accountant: str = "rdp",
    clip: float | None = None,
    sampling_rate: float | None = None,
    local_epochs: float | None = None,
    release_epsilon: float | None = None,
) -> DPPlan:
    """Calibrate the noise multiplier so ``rounds`` rounds spend at most the training budget. None: the
    built-in clip, sampling rate, local epochs and release ε (HFL_DP_* left unset)."""
    clip = DEFAULT_CLIP if clip is None else clip
    sampling_rate = sampling_rate_or_default(sampling_rate)
    local_epochs = DEFAULT_LOCAL_EPOCHS if local_epochs is None else local_epochs
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float)
        or not (math.isfinite(epsilon) and epsilon > 0)
    ):
        raise ValueError(f"the privacy budget ε must be a positive number, got {epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"differential privacy needs the planned number of rounds (≥ 1), got {rounds!r}")
    if not (isinstance(local_epochs, int | float) and math.isfinite(local_epochs) and local_epochs > 0):
        raise ValueError(f"local epochs per round must be positive, got {local_epochs!r}")
    if not (isinstance(sampling_rate, int | float) and 0.0 < sampling_rate <= 1.0):
        raise ValueError(f"the sampling rate must be in (0, 1], got {sampling_rate!r}")
    check_supported(mechanism, accountant, float(sampling_rate))
    release = default_release_epsilon(epsilon) if release_epsilon is None else float(release_epsilon)
    if not 0.0 <= release < epsilon:
        raise ValueError(
            f"the ε for released statistics ({release:g}) must be at least 0 and below ε={epsilon:g}"
        )
    steps = max(1, math.ceil(local_epochs / sampling_rate - 1e-9))
    sigma = calibrate_noise_multiplier(
        epsilon - release, delta, float(sampling_rate), steps * rounds, mechanism, accountant
    )
    return DPPlan(
        mechanism=mechanism,
        accountant=accountant,
        clip=float(clip),
        noise_multiplier=float(sigma),
        sampling_rate=float(sampling_rate),
        delta=float(delta),
        epsilon_budget=float(epsilon),
        steps_per_round=steps,
        rounds=rounds,
        release_epsilon=release,
    )


def describe_plan(plan: DPPlan) -> str:
    """One plain-language paragraph for start-up logs."""
    line = describe(plan.dp_config(), plan.steps_per_round, plan.rounds)
    if plan.release_epsilon > 0:
        line += (
            f" Another ε={plan.release_epsilon:.3g} (Laplace, pure ε) covers each facility's published "
            f"sample count and class balance, for a total budget of ε={plan.epsilon_budget:g}."
        )
    return line


def dp_local_update(
    model: Model,
    params: np.ndarray,
    data: Dataset,
    plan: DPPlan,
    *,
    lr: float,
    max_update_norm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One facility's private round: ``plan.steps_per_round`` DP-SGD steps, then the update-norm clip.

    ``rng`` drives both the Poisson sampling and the noise; in a real facility it must come from
    :func:`hfl.privacy.secure_generator`. The update clip is post-processing (no extra privacy cost).
    """
    new = train_local_private_steps(
        model, params, data, lr, rng, DPSGD(plan.dp_config()), plan.steps_per_round
    )
    return clip_update(new - params, max_update_norm)
