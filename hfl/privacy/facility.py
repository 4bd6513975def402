"""A facility's own privacy record: admission of a round against its budget, the steps it spent, and the
statistics it released once, kept durably in ``<state_dir>/privacy.json`` (fsync'd, so a restarted
facility remembers its spend). Every spend comes back as a SpendReport signed with the facility's key.

How a facility uses it in a round (training, reporting to the authority, metrics) is
services/facility/privacy.py; the authority's record of every facility's spend is hfl.privacy.budget.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hfl.crypto.signing import SigningKey
from hfl.errors import AlreadyDone, NotAllowed
from hfl.files import write_secret
from hfl.learning.data import Dataset
from hfl.privacy.accountant import PrivacyAccountant
from hfl.privacy.budget import BudgetExceeded
from hfl.privacy.federation import DPPlan
from hfl.privacy.mechanisms import laplace_release, secure_generator
from hfl.privacy.report import SpendReport

log = logging.getLogger("hfl.facility")

STATE_FILE = "privacy.json"

OnChange = Callable[["FacilityPrivacy", bool | None], None]


class PrivacyDeclined(NotAllowed):
    """The facility declines a round: it would go past its privacy budget (or cannot account for it)."""


@dataclass(frozen=True)
class Admission:
    """Permission to train privately in one round attempt."""

    plan: DPPlan
    round: int
    attempt: int
    projected_epsilon: float


def _write_json(path: Path, value: object) -> None:
    write_secret(path, json.dumps(value, indent=1, sort_keys=True).encode())


class FacilityPrivacy:
    """Per-facility DP accounting, persisted in the state directory. Thread-safe. ``on_change`` is told
    after every change (and once at start), with whether the budget is now exhausted when that is known:
    the facility's metrics (services/facility/privacy.py)."""

    def __init__(
        self,
        state_dir: Path,
        node_id: str,
        key: SigningKey,
        *,
        local_budget: float = 0.0,
        on_change: OnChange | None = None,
    ) -> None:
        if not (math.isfinite(local_budget) and local_budget >= 0.0):
            raise ValueError(f"HFL_DP_BUDGET must be a non-negative number, got {local_budget!r}")
        self.path = Path(state_dir) / STATE_FILE
        self.node_id = node_id
        self.key = key
        self.local_budget = float(local_budget)
        self._on_change = on_change
        self._lock = threading.Lock()
        self._acct: PrivacyAccountant | None = None
        self._acct_id: tuple[Any, ...] | None = None
        self.state: dict[str, Any] = {"accounting": None, "steps": 0, "spends": [], "release": None}
        if self.path.exists():
            try:
                loaded = json.loads(self.path.read_text())
                steps = int(loaded["steps"])
                if steps < 0 or not isinstance(loaded.get("spends"), list):
                    raise ValueError("negative step count")
            except (OSError, ValueError, KeyError, TypeError) as e:
                # Refuse to start rather than forget what was spent.
                raise ValueError(
                    f"the privacy record {self.path} is unreadable ({e}); restore it from a "
                    "backup — deleting it would let this facility overspend its budget"
                ) from None
            self.state = loaded
            log.info("privacy record loaded: %d DP-SGD steps taken so far", steps)
        self._publish()

    # ------------------------------------------------------------------ queries
    @property
    def steps(self) -> int:
        return int(self.state["steps"])

    @property
    def release_epsilon(self) -> float:
        rel = self.state.get("release")
        return float(rel["epsilon"]) if rel else 0.0

    def training_epsilon(self) -> float:
        acct = self._acct
        return acct.epsilon() if acct is not None else float(self.state.get("last_epsilon", 0.0))

    def total_epsilon(self) -> float:
        """ε spent so far: training running total plus the released statistics (basic composition)."""
        return self.training_epsilon() + self.release_epsilon

    def budget(self, plan: DPPlan) -> float:
        """Training budget: the plan's, or this facility's own stricter cap (minus the release)."""
        budget = plan.training_budget
        if self.local_budget > 0:
            budget = min(budget, self.local_budget - plan.release_epsilon)
        return budget

    def _accountant(self, plan: DPPlan) -> PrivacyAccountant:
        budget = self.budget(plan)
        ident = (tuple(sorted(plan.accounting_key().items())), budget)
        if self._acct is None or self._acct_id != ident:
            acct = PrivacyAccountant(plan.dp_config(max(budget, 1e-12)))
            acct.record_steps(self.steps)
            self._acct, self._acct_id = acct, ident
        return self._acct

    # ------------------------------------------------------------------ the round
    def admit(self, plan: DPPlan, round_: int, attempt: int) -> Admission:
        """Check the budget before training; raise PrivacyDeclined (with a plain reason) to decline."""
        with self._lock:
            key = plan.accounting_key()
            known = self.state.get("accounting")
            if known is not None and known != key:
                raise PrivacyDeclined(
                    f"declining round {round_}: the federation changed its privacy settings "
                    f"({known} -> {key}); "
                    "this facility's earlier spending cannot be combined with the new settings"
                )
            if any(s["round"] == round_ and s["attempt"] == attempt for s in self.state["spends"]):
                raise AlreadyDone(f"this facility already trained in round {round_} attempt {attempt}")
            budget = self.budget(plan)
            if budget <= 0:
                raise PrivacyDeclined(
                    f"declining round {round_}: this facility's own privacy budget (HFL_DP_BUDGET="
                    f"{self.local_budget:g}) does not even cover the published statistics "
                    f"(ε={plan.release_epsilon:g})"
                )
            acct = self._accountant(plan)
            try:
                projected = acct.ensure_within_budget(plan.steps_per_round)
            except BudgetExceeded as e:
                raise PrivacyDeclined(
                    f"declining round {round_}: its {plan.steps_per_round} training steps would bring this "
                    f"facility's privacy loss to ε={(e.projected or 0.0) + plan.release_epsilon:.3f}, above "
                    f"its budget ε={budget + plan.release_epsilon:.3f} (δ={plan.delta:g}); already spent "
                    f"ε={acct.epsilon() + self.release_epsilon:.3f}"
                ) from None
            return Admission(plan, round_, attempt, projected)

    def release_statistics(self, plan: DPPlan, data: Dataset, round_: int) -> SpendReport | None:
        """Publish the noisy sample count and class balance once (pure ε); None if nothing new."""
        with self._lock:
            if self.state.get("release") is not None or plan.release_epsilon <= 0:
                return None
            rng = secure_generator()
            half = plan.release_epsilon / 2.0
            n = float(laplace_release(data.n, 1.0, half, rng))
            pos = float(laplace_release(float(np.sum(data.y == 1)), 1.0, half, rng))
            fraction = min(1.0, max(0.0, pos / n)) if n > 0 else 0.0
            self.state["release"] = {
                "epsilon": plan.release_epsilon,
                "round": round_,
                "sample_count": n,
                "positives": pos,
                "positive_fraction": fraction,
            }
            _write_json(self.path, self.state)
            self._publish()
            log.info(
                "published noisy statistics (Laplace, ε=%.3g): about %.0f records, %.0f%% positive",
                plan.release_epsilon,
                n,
                100 * fraction,
            )
            return SpendReport(
                self.node_id,
                round_,
                0,
                "release",
                plan.release_epsilon,
                0.0,
                details={
                    "statistics": ["sample_count", "positive_count"],
                    "mechanism": "laplace",
                    "sensitivity": 1,
                },
            ).sign(self.key)

    def record(self, adm: Admission) -> SpendReport:
        """Record the round's steps (durably, before the update is sent); returns the signed report."""
        with self._lock:
            plan = adm.plan
            acct = self._accountant(plan)
            acct.record_steps(plan.steps_per_round)
            eps = acct.epsilon()
            self.state["accounting"] = plan.accounting_key()
            self.state["steps"] = acct.steps
            self.state["last_epsilon"] = eps
            self.state["spends"].append(
                {"round": adm.round, "attempt": adm.attempt, "steps": plan.steps_per_round, "epsilon": eps}
            )
            _write_json(self.path, self.state)
            exhausted = acct.would_exceed(plan.steps_per_round)
            self._publish(exhausted)
            return SpendReport(
                self.node_id,
                adm.round,
                adm.attempt,
                "training",
                eps,
                plan.delta,
                steps=plan.steps_per_round,
                exhausted=exhausted,
                details={
                    "mechanism": plan.mechanism,
                    "accountant": plan.accountant,
                    "noise_multiplier": plan.noise_multiplier,
                    "sampling_rate": plan.sampling_rate,
                    "total_steps": acct.steps,
                },
            ).sign(self.key)

    def decline_report(self, plan: DPPlan, round_: int, attempt: int, reason: str) -> SpendReport:
        """Tell the authority this facility is out of budget (no new spend)."""
        with self._lock:
            self._publish(True)
            return SpendReport(
                self.node_id,
                round_,
                attempt,
                "training",
                self.training_epsilon(),
                plan.delta,
                steps=0,
                exhausted=True,
                details={"declined": reason},
            ).sign(self.key)

    def _publish(self, exhausted: bool | None = None) -> None:
        if self._on_change is not None:
            self._on_change(self, exhausted)
