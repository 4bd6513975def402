"""Record-level differential privacy: DP-SGD, noise mechanisms, accounting, calibration, budgets."""

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
