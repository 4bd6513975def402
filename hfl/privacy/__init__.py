"""Record-level differential privacy: DP-SGD, noise mechanisms, accounting, calibration, budgets.

The names below load their module on first use: the accountant pulls in dp-accounting and SciPy (about
70 MB and a second of start-up), which a fog, a validator or a service with privacy off never needs,
and the service settings import this package for its mechanism and accountant names."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfl.privacy.accountant import PrivacyAccountant, compute_epsilon
    from hfl.privacy.budget import BudgetExceeded, LedgerEntry, PrivacyLedger, PrivacyLedgerError
    from hfl.privacy.calibrate import calibrate_noise_multiplier, describe
    from hfl.privacy.dpsgd import DPSGD, DPConfig
    from hfl.privacy.mechanisms import (
        clip_rows,
        gaussian_noise,
        laplace_noise,
        laplace_release,
        secure_generator,
    )

_WHERE = {
    "PrivacyAccountant": "accountant",
    "compute_epsilon": "accountant",
    "BudgetExceeded": "budget",
    "LedgerEntry": "budget",
    "PrivacyLedger": "budget",
    "PrivacyLedgerError": "budget",
    "calibrate_noise_multiplier": "calibrate",
    "describe": "calibrate",
    "DPSGD": "dpsgd",
    "DPConfig": "dpsgd",
    "clip_rows": "mechanisms",
    "gaussian_noise": "mechanisms",
    "laplace_noise": "mechanisms",
    "laplace_release": "mechanisms",
    "secure_generator": "mechanisms",
}

__all__ = [
    "DPSGD",
    "BudgetExceeded",
    "DPConfig",
    "LedgerEntry",
    "PrivacyAccountant",
    "PrivacyLedger",
    "PrivacyLedgerError",
    "calibrate_noise_multiplier",
    "clip_rows",
    "compute_epsilon",
    "describe",
    "gaussian_noise",
    "laplace_noise",
    "laplace_release",
    "secure_generator",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hfl.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hfl.privacy.{module}"), name)
