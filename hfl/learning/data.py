"""Facility data: synthetic patients, the bundled breast-cancer set, and per-facility CSV files.

Feature scaling never needs pooled data (no facility sees another's rows):

* ``synthetic`` data is centred and scaled with fixed clinical reference values written in this file
  (e.g. age -> (age - 50) / 15), so every facility and validator uses the same transform.
* ``synthetic_hard`` data (a harder benchmark task, see :func:`hard_patients`) is simulated already on a
  standard scale and used as it is.
* every other source (``breast_cancer``, ``csv:...``) is standardised with the facility's OWN training
  split mean and standard deviation; its local test split uses those same statistics. A validator
  standardises its validation set with that set's own statistics.

Missing values follow one rule everywhere (:func:`apply_missing_rule`): after scaling, a missing value is
0 (the centre of its column's scaling) and a 0/1 ``<column>_missing`` indicator says it was missing. For
``synthetic`` data the columns are the union of every specialty's fields, and a specialty that does not
collect a field leaves it empty; in a ``csv:`` file every feature column may have empty cells.

Each facility keeps a seeded, stratified share (``test_fraction``, default 25%) of its rows as its local
test set.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

SPECIALTIES = ("hospital", "clinic", "research", "emergency")
DEFAULT_SIZES: dict[str, int] = {"hospital": 1200, "clinic": 600, "research": 500, "emergency": 800}
SOURCES = ("synthetic", "synthetic_hard", "breast_cancer", "csv:PATH")
# The built-in simulated sources: one stream of patients per (seed, shard or facility name, specialty).
SYNTHETIC_SOURCES = ("synthetic", "synthetic_hard")
UNKNOWN_SOURCE_HINT = "synthetic, synthetic_hard, breast_cancer or csv:PATH"

# Domain tags keep the random streams of different uses apart.
_TAG_FACILITY = 1
_TAG_TEST_SPLIT = 2
_TAG_VALIDATOR = 3
_TAG_BC_HOLDOUT = 4
_TAG_SHARDS = 5
BREAST_CANCER_VALIDATION_FRACTION = 0.15


class DataError(ValueError):
    """A data set could not be loaded or is not usable for training."""


@dataclass(frozen=True)
class Dataset:
    """Model-ready rows: ``X`` (n, d) float64 features and ``y`` (n,) int64 labels in {0, 1}."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        X = np.asarray(self.X)
        y = np.asarray(self.y)
        if X.ndim != 2:
            raise DataError(f"features must be a table (n rows x d columns), got shape {X.shape}")
        if X.dtype != np.float64:
            raise DataError(f"features must be float64, got {X.dtype}")
        if y.shape != (X.shape[0],):
            raise DataError(f"need one label per row: {X.shape[0]} rows but label shape {y.shape}")
        if y.dtype != np.int64:
            raise DataError(f"labels must be int64, got {y.dtype}")
        if not np.all(np.isfinite(X)):
            raise DataError("features contain missing (NaN) or infinite values")
        if not np.all((y == 0) | (y == 1)):
            raise DataError("labels must be 0 or 1")
        if not isinstance(self.feature_names, tuple) or len(self.feature_names) != X.shape[1]:
            raise DataError(f"need a tuple of {X.shape[1]} feature names, got {self.feature_names!r}")
        if not all(isinstance(f, str) for f in self.feature_names):
            raise DataError("feature names must be strings")

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.X[idx], self.y[idx], self.feature_names)

    @staticmethod
    def concat(parts: list[Dataset]) -> Dataset:
        """Stack data sets with the same feature names, in order."""
        if not parts:
            raise DataError("nothing to combine: the list of data sets is empty")
        names = parts[0].feature_names
        for p in parts[1:]:
            if p.feature_names != names:
                raise DataError(
                    "the data sets do not have the same feature columns in the same order: "
                    f"{list(names)} vs {list(p.feature_names)}"
                )
        return Dataset(np.vstack([p.X for p in parts]), np.concatenate([p.y for p in parts]), names)


@dataclass(frozen=True)
class FacilityData:
    train: Dataset
    test: Dataset
    specialty: str
    source: str


# ------------------------------------------------------------------------------------------------------
# The missing-value rule: one rule for every source, for `hfl predict` and inside the ONNX graph
# ------------------------------------------------------------------------------------------------------

MISSING_SUFFIX = "_missing"
# Cell texts that mean "no value" (compared ignoring case and surrounding spaces).
MISSING_MARKERS = ("", "na", "n/a", "nan")


def is_missing_marker(text: str) -> bool:
    """True for a cell that means "no value": empty, NA, N/A or NaN (any case)."""
    return text.strip().lower() in MISSING_MARKERS


def model_feature_names(columns: tuple[str, ...], missable: tuple[str, ...]) -> tuple[str, ...]:
    """The model's inputs: every column, then one ``<column>_missing`` indicator per missable column."""
    unknown = [c for c in missable if c not in columns]
    if unknown:
        raise DataError(f"columns that may be missing must be table columns, not {', '.join(unknown)}")
    names = (*columns, *(c + MISSING_SUFFIX for c in missable))
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(f"the column name {clash[0]!r} is used twice (hfl names missing-value indicators so)")
    return names


def apply_missing_rule(
    X_scaled: np.ndarray, columns: tuple[str, ...], missable: tuple[str, ...], *, first_row: int = 0
) -> np.ndarray:
    """THE missing-value rule, applied to scaled values: a missing (NaN) value becomes 0, the centre of its
    column's scaling (the fixed public reference value for synthetic data, the column's mean where a site
    standardises its own data), and one 0/1 ``<column>_missing`` indicator per missable column is appended
    (1 = the value was missing).

    A NaN in a column that may not be missing is refused, naming the row (``first_row`` + its index) and
    the column. The ONNX export builds this same rule into its graph.
    """
    X = np.asarray(X_scaled, dtype=np.float64)
    model_feature_names(columns, missable)  # checks the names
    if X.ndim != 2 or X.shape[1] != len(columns):
        raise DataError(f"expected a table with {len(columns)} columns, got shape {X.shape}")
    idx = [columns.index(c) for c in missable]
    isnan = np.isnan(X)
    required = np.ones(len(columns), dtype=bool)
    required[idx] = False
    bad = np.argwhere(isnan & required)
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(
            f"row {row + first_row} has no value in column {columns[col]!r}, which may not be empty"
        )
    return np.hstack([np.where(isnan, 0.0, X), isnan[:, idx].astype(np.float64)])


@dataclass(frozen=True)
class Table:
    """Rows as simulated or read from a file, before scaling: values in their own units, NaN = missing."""

    X: np.ndarray
    y: np.ndarray
    columns: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def subset(self, idx: np.ndarray) -> Table:
        return Table(self.X[idx], self.y[idx], self.columns)


# ------------------------------------------------------------------------------------------------------
# Synthetic patients
# ------------------------------------------------------------------------------------------------------

# Every site's table has these columns (the union of what the specialties record); a site that does not
# collect a field leaves it empty. (name, reference centre, reference scale): fixed clinical reference
# values, not fitted to any data; a missing value is imputed at the centre (0 after scaling).
SYNTHETIC_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("age_years", 50.0, 15.0),
    ("male", 0.5, 0.5),
    ("bmi_kg_m2", 27.0, 5.0),
    ("systolic_bp_mmhg", 125.0, 18.0),
    ("diastolic_bp_mmhg", 78.0, 11.0),
    ("heart_rate_bpm", 76.0, 13.0),
    ("glucose_mg_dl", 110.0, 35.0),
    ("hba1c_percent", 5.8, 1.0),
    ("total_cholesterol_mg_dl", 195.0, 40.0),
    ("hdl_mg_dl", 52.0, 15.0),
    ("smoker", 0.2, 0.4),
    ("creatinine_mg_dl", 1.0, 0.35),
    # emergency centres: triage level (1 = most urgent ... 5 = least) and the vitals taken on arrival
    ("triage_level", 3.0, 1.0),
    ("arrival_heart_rate_bpm", 90.0, 20.0),
    ("arrival_systolic_bp_mmhg", 135.0, 25.0),
    # research centres (and some hospitals): extra biomarkers
    ("hs_crp_mg_l", 3.0, 4.0),
    ("apob_mg_dl", 100.0, 25.0),
)
SYNTHETIC_COLUMNS = tuple(f[0] for f in SYNTHETIC_FEATURES)
# Recorded for every patient everywhere; every other column may be missing.
SYNTHETIC_ALWAYS_RECORDED = ("age_years", "male")
SYNTHETIC_MISSABLE = tuple(c for c in SYNTHETIC_COLUMNS if c not in SYNTHETIC_ALWAYS_RECORDED)
# The model's inputs: the scaled columns, then the missing-value indicators.
SYNTHETIC_FEATURE_NAMES = model_feature_names(SYNTHETIC_COLUMNS, SYNTHETIC_MISSABLE)
SYNTHETIC_CENTER = np.array([f[1] for f in SYNTHETIC_FEATURES])
SYNTHETIC_SCALE = np.array([f[2] for f in SYNTHETIC_FEATURES])


@dataclass(frozen=True)
class _CaseMix:
    age_mean: float
    age_sd: float
    male_p: float
    smoke_p: float
    bmi_shift: float
    sbp_shift: float
    hr_shift: float
    glucose_stress: float  # mean acute (stress) rise in glucose, mg/dL; does not move HbA1c
    ir_shift: float  # shift of latent insulin resistance
    kidney_shift: float  # shift of log creatinine
    acuity_shift: float  # shift of latent acute illness (drives triage level and arrival vitals)


_CASE_MIX: dict[str, _CaseMix] = {
    # older, sicker in-patients
    "hospital": _CaseMix(63.0, 14.0, 0.55, 0.20, 1.0, 5.0, 4.0, 10.0, 0.3, 0.12, 0.3),
    # younger, healthier out-patients
    "clinic": _CaseMix(45.0, 14.0, 0.45, 0.14, -0.5, -3.0, 0.0, 0.0, -0.2, 0.0, -0.5),
    # broad mixed cohort
    "research": _CaseMix(54.0, 18.0, 0.50, 0.18, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.0),
    # acute presentations: high heart rate, blood pressure and stress glucose
    "emergency": _CaseMix(55.0, 19.0, 0.55, 0.28, 0.5, 14.0, 16.0, 30.0, 0.1, 0.08, 1.0),
}

# Label shift: the share of patients with the event differs by specialty (each site's own draw varies
# around it). Within a specialty, patients with and without the event look as the risk equation says.
EVENT_RATE: dict[str, float] = {"hospital": 0.30, "clinic": 0.12, "research": 0.22, "emergency": 0.38}

NOT_COLLECTED = 1.0
# Share of patients with no value, per specialty and column (NOT_COLLECTED: the specialty never records
# it). Columns not listed (age, sex) are always recorded.
MISSING_RATE: dict[str, dict[str, float]] = {
    "hospital": {
        "bmi_kg_m2": 0.05, "systolic_bp_mmhg": 0.02, "diastolic_bp_mmhg": 0.02, "heart_rate_bpm": 0.02,
        "glucose_mg_dl": 0.05, "hba1c_percent": 0.40, "total_cholesterol_mg_dl": 0.35, "hdl_mg_dl": 0.35,
        "smoker": 0.10, "creatinine_mg_dl": 0.05, "triage_level": NOT_COLLECTED,
        "arrival_heart_rate_bpm": NOT_COLLECTED, "arrival_systolic_bp_mmhg": NOT_COLLECTED,
        "hs_crp_mg_l": 0.70, "apob_mg_dl": 0.80,
    },
    "clinic": {
        "bmi_kg_m2": 0.04, "systolic_bp_mmhg": 0.03, "diastolic_bp_mmhg": 0.03, "heart_rate_bpm": 0.05,
        "glucose_mg_dl": 0.30, "hba1c_percent": 0.50, "total_cholesterol_mg_dl": 0.55, "hdl_mg_dl": 0.55,
        "smoker": 0.08, "creatinine_mg_dl": 0.60, "triage_level": NOT_COLLECTED,
        "arrival_heart_rate_bpm": NOT_COLLECTED, "arrival_systolic_bp_mmhg": NOT_COLLECTED,
        "hs_crp_mg_l": NOT_COLLECTED, "apob_mg_dl": NOT_COLLECTED,
    },
    "research": {
        "bmi_kg_m2": 0.01, "systolic_bp_mmhg": 0.01, "diastolic_bp_mmhg": 0.01, "heart_rate_bpm": 0.01,
        "glucose_mg_dl": 0.05, "hba1c_percent": 0.08, "total_cholesterol_mg_dl": 0.05, "hdl_mg_dl": 0.05,
        "smoker": 0.02, "creatinine_mg_dl": 0.05, "triage_level": NOT_COLLECTED,
        "arrival_heart_rate_bpm": NOT_COLLECTED, "arrival_systolic_bp_mmhg": NOT_COLLECTED,
        "hs_crp_mg_l": 0.12, "apob_mg_dl": 0.15,
    },
    "emergency": {
        "bmi_kg_m2": 0.35, "systolic_bp_mmhg": 0.04, "diastolic_bp_mmhg": 0.04, "heart_rate_bpm": 0.04,
        "glucose_mg_dl": 0.08, "hba1c_percent": 0.75, "total_cholesterol_mg_dl": 0.85, "hdl_mg_dl": 0.85,
        "smoker": 0.30, "creatinine_mg_dl": 0.10, "triage_level": 0.0,
        "arrival_heart_rate_bpm": 0.02, "arrival_systolic_bp_mmhg": 0.03,
        "hs_crp_mg_l": NOT_COLLECTED, "apob_mg_dl": NOT_COLLECTED,
    },
}  # fmt: skip
# Lab tests are ordered more often for sicker patients (missing not at random): in the sicker half of a
# site's patients a lab value is missing less often than in the other half, with the same overall rate.
_LABS = (
    "glucose_mg_dl", "hba1c_percent", "total_cholesterol_mg_dl", "hdl_mg_dl", "creatinine_mg_dl",
    "hs_crp_mg_l", "apob_mg_dl",
)  # fmt: skip
_LAB_TILT = 0.4

# Framingham-style risk equation (same for every facility, so only the case mix differs).
_RISK_INTERCEPT = -2.5


def _check_specialty(specialty: str) -> None:
    if specialty not in SPECIALTIES:
        raise DataError(f"unknown specialty {specialty!r}; choose one of {', '.join(SPECIALTIES)}")


def _candidates(n: int, m: _CaseMix, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Complete clinical values (n, 17) in SYNTHETIC_FEATURES order, the outcome and the risk score."""
    age = np.clip(rng.normal(m.age_mean, m.age_sd, n), 18.0, 95.0)
    a = (age - 50.0) / 10.0  # decades from 50
    male = (rng.random(n) < m.male_p).astype(np.float64)
    smoker = (rng.random(n) < np.clip(m.smoke_p * np.exp(-0.15 * a), 0.0, 0.9)).astype(np.float64)
    bmi = np.clip(27.0 + m.bmi_shift + 0.5 * a - 0.15 * a * a + rng.normal(0.0, 4.5, n), 16.0, 55.0)
    b = (bmi - 27.0) / 5.0
    # latent insulin resistance drives HbA1c (and, through it, fasting glucose)
    ir = 0.55 * b + 0.3 * a + m.ir_shift + rng.normal(0.0, 1.0, n)
    hba1c = np.clip(5.45 + 0.3 * ir + 1.2 * np.maximum(ir - 1.0, 0.0) + rng.normal(0.0, 0.25, n), 4.2, 14.0)
    stress = rng.gamma(2.0, m.glucose_stress / 2.0, n) if m.glucose_stress > 0 else np.zeros(n)
    glucose = np.clip(28.7 * hba1c - 46.7 + stress + rng.normal(0.0, 12.0, n), 55.0, 500.0)  # ADAG eAG
    sbp = np.clip(
        118.0 + 5.0 * a + 4.0 * b + 3.0 * male + 1.5 * ir + m.sbp_shift + rng.normal(0.0, 13.0, n),
        85.0,
        230.0,
    )
    dbp = np.clip(
        0.35 * sbp + 36.0 + 1.5 * b - 1.5 * np.maximum(a - 1.0, 0.0) + rng.normal(0.0, 7.0, n), 45.0, 130.0
    )
    dbp = np.minimum(dbp, sbp - 15.0)
    hr = np.clip(74.0 + 2.0 * b + 4.0 * smoker - 0.5 * a + m.hr_shift + rng.normal(0.0, 10.0, n), 40.0, 180.0)
    tc = np.clip(195.0 + 4.0 * a + 5.0 * b - 6.0 * male + rng.normal(0.0, 35.0, n), 110.0, 350.0)
    hdl = np.clip(
        56.0 - 9.0 * male - 4.0 * b - 4.0 * smoker - 1.5 * ir + rng.normal(0.0, 11.0, n), 20.0, 110.0
    )
    log_cr = (
        math.log(0.8)
        + 0.2 * male
        + 0.045 * a
        + 0.004 * (sbp - 120.0)
        + 0.08 * np.maximum(ir - 1.0, 0.0)
        + m.kidney_shift
        + rng.normal(0.0, 0.17, n)
    )
    creat = np.clip(np.exp(log_cr), 0.4, 8.0)
    # latent acute illness: triage level (ESI 1 most urgent .. 5) and the vitals measured on arrival
    acuity = 0.2 * a + 0.2 * ir + m.acuity_shift + rng.normal(0.0, 1.0, n)
    triage = np.clip(np.rint(3.4 - 0.8 * acuity + rng.normal(0.0, 0.5, n)), 1.0, 5.0)
    arrival_hr = np.clip(hr + 4.0 + 7.0 * acuity + rng.normal(0.0, 6.0, n), 35.0, 200.0)
    arrival_sbp = np.clip(sbp + 4.0 + 5.0 * acuity + rng.normal(0.0, 10.0, n), 70.0, 250.0)
    # latent inflammation (hs-CRP) and atherogenic particles (apolipoprotein B)
    infl = 0.3 * b + 0.4 * smoker + 0.3 * acuity + rng.normal(0.0, 1.0, n)
    crp = np.clip(np.exp(math.log(1.6) + 0.8 * infl), 0.1, 60.0)
    apob = np.clip(35.0 + 0.45 * (tc - hdl) + rng.normal(0.0, 12.0, n), 30.0, 250.0)
    z = (
        _RISK_INTERCEPT
        + 0.5 * a
        + 0.45 * male
        + 0.17 * (sbp - 120.0) / 10.0
        + 0.55 * smoker
        - 0.12 * smoker * a
        + 0.08 * (tc - 200.0) / 20.0
        - 0.22 * (hdl - 50.0) / 10.0
        + 0.35 * (hba1c - 5.7)
        + 0.45 * (hba1c >= 6.5)
        + 0.6 * np.log(creat / 0.9)
        + 0.08 * b
        + 0.10 * (hr - 75.0) / 10.0
        + 0.35 * acuity
        + 0.25 * infl
        + 0.10 * (apob - 100.0) / 20.0
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    common = [age, male, bmi, sbp, dbp, hr, glucose, hba1c, tc, hdl, smoker, creat]
    raw = np.column_stack([*common, triage, arrival_hr, arrival_sbp, crp, apob])
    return raw, y, z


def _with_event_rate(
    n: int, specialty: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` complete patients whose number with the event is Binomial(n, EVENT_RATE[specialty]): draw
    candidates from the case mix and keep the first positives and negatives needed (label shift)."""
    m = _CASE_MIX[specialty]
    n_pos = int(rng.binomial(n, EVENT_RATE[specialty]))
    need = (n - n_pos, n_pos)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    counts = [0, 0]
    while counts[0] < need[0] or counts[1] < need[1]:
        part = _candidates(2 * n + 64, m, rng)
        parts.append(part)
        counts[1] += int(part[1].sum())
        counts[0] += len(part[1]) - int(part[1].sum())
    raw = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    z = np.concatenate([p[2] for p in parts])
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[: need[c]] for c in (0, 1)]))
    return raw[keep], y[keep], z[keep]


def _missing_mask(z: np.ndarray, specialty: str, rng: np.random.Generator) -> np.ndarray:
    """Which values are missing (n, 17), at MISSING_RATE; lab values less often in the sicker half."""
    n = len(z)
    sicker = z > np.median(z)
    mask = np.zeros((n, len(SYNTHETIC_COLUMNS)), dtype=bool)
    u = rng.random(mask.shape)
    for name, rate in MISSING_RATE[specialty].items():
        j = SYNTHETIC_COLUMNS.index(name)
        p = np.full(n, rate)
        if name in _LABS and 0.0 < rate < 1.0:
            tilt = _LAB_TILT * min(1.0, (1.0 - rate) / rate)
            p = np.where(sicker, rate * (1.0 - tilt), rate * (1.0 + tilt))
        mask[:, j] = u[:, j] < p
    return mask


def synthetic_table(n: int, specialty: str, rng: np.random.Generator) -> Table:
    """``n`` simulated patients of one specialty (not real people), in clinical units, NaN = missing.

    Vitals and labs are correlated the way they are clinically (age raises blood pressure, glucose and
    creatinine; BMI raises glucose, HbA1c and blood pressure; glucose follows HbA1c). The label is a
    major cardiovascular/metabolic event drawn from one Framingham-style logistic risk score shared by
    all specialties; specialties differ in case mix (non-IID), in their event rate (EVENT_RATE, label
    shift), and in which fields they record and how often a value is missing (MISSING_RATE).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"the number of patients must be a positive integer, got {n!r}")
    _check_specialty(specialty)
    if not isinstance(rng, np.random.Generator):
        raise DataError("pass an explicitly seeded numpy Generator, e.g. np.random.default_rng(seed)")
    raw, y, z = _with_event_rate(n, specialty, rng)
    raw[_missing_mask(z, specialty, rng)] = np.nan
    return Table(np.ascontiguousarray(raw), y, SYNTHETIC_COLUMNS)


def scale_synthetic(raw: np.ndarray) -> np.ndarray:
    """Apply the fixed clinical reference centring/scaling to raw synthetic values (NaN stays NaN)."""
    return (np.asarray(raw, dtype=np.float64) - SYNTHETIC_CENTER) / SYNTHETIC_SCALE


def unscale_synthetic(X: np.ndarray) -> np.ndarray:
    """Model features (or scaled columns) back to clinical units, one column per SYNTHETIC_COLUMNS
    (inverse of ``scale_synthetic``; an imputed value comes back as the reference centre)."""
    d = len(SYNTHETIC_COLUMNS)
    return np.asarray(X, dtype=np.float64)[:, :d] * SYNTHETIC_SCALE + SYNTHETIC_CENTER


def prepare_synthetic(raw: np.ndarray, *, first_row: int = 0) -> np.ndarray:
    """Raw synthetic columns (NaN = missing) -> model features: fixed scaling, then the missing rule."""
    return apply_missing_rule(
        scale_synthetic(raw), SYNTHETIC_COLUMNS, SYNTHETIC_MISSABLE, first_row=first_row
    )


def synthetic_patients(n: int, specialty: str, rng: np.random.Generator) -> Dataset:
    """``n`` simulated patients of one specialty as model-ready features (see :func:`synthetic_table`):
    the 17 columns scaled with the fixed reference values, missing values at 0, then 15 indicators."""
    t = synthetic_table(n, specialty, rng)
    return Dataset(prepare_synthetic(t.X), t.y, SYNTHETIC_FEATURE_NAMES)


# ------------------------------------------------------------------------------------------------------
# The harder synthetic task (``synthetic_hard``): quiet attacks need a model that keeps learning
# ------------------------------------------------------------------------------------------------------

# On ``synthetic`` data the models reach their best accuracy in one or two rounds, so an attack that
# only slows learning down (sign_flip, alie, ipm, free_ride) cannot be told from noise. Here the outcome
# depends on products of markers and on a wave along one direction, which a linear model cannot
# represent and the 16-unit mlp learns over tens of rounds; 10 % of the labels are flipped.
HARD_N_FEATURES = 24
HARD_FEATURE_NAMES = tuple(f"marker_{i + 1:02d}" for i in range(HARD_N_FEATURES))
HARD_LABEL_NOISE = 0.10
HARD_PAIRS = 4  # outcome terms x[2k] * x[2k+1], k < HARD_PAIRS
# Label shift as for ``synthetic``: the share of patients with the outcome differs by specialty.
HARD_EVENT_RATE: dict[str, float] = {"hospital": 0.50, "clinic": 0.35, "research": 0.45, "emergency": 0.60}
HARD_SHIFT = 0.6  # case mix: each specialty's markers are centred at its own point (non-IID)
_HARD_TASK_SEED = 13  # fixes the outcome rule and the specialties' centres; the same for every run


@dataclass(frozen=True)
class _HardTask:
    pair_weights: np.ndarray  # (HARD_PAIRS,)
    wave: np.ndarray  # (d,) unit vector
    linear: np.ndarray  # (d,) unit vector
    centres: dict[str, np.ndarray]  # specialty -> (d,)


@functools.lru_cache(maxsize=1)
def _hard_task() -> _HardTask:
    """The outcome rule and case mixes: fixed numbers (drawn once from a constant seed), like the risk
    equation of ``synthetic``; they do not depend on the experiment seed."""
    r = np.random.default_rng(_HARD_TASK_SEED)
    d = HARD_N_FEATURES
    pair = r.choice([-1.0, 1.0], HARD_PAIRS) * r.uniform(0.7, 1.3, HARD_PAIRS)
    wave = r.normal(0.0, 1.0, d)
    linear = r.normal(0.0, 1.0, d)
    centres = {s: HARD_SHIFT * r.normal(0.0, 1.0, d) * (r.random(d) < 0.5) for s in SPECIALTIES}
    return _HardTask(pair, wave / np.linalg.norm(wave), linear / np.linalg.norm(linear), centres)


def _hard_candidates(n: int, specialty: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    task = _hard_task()
    X = task.centres[specialty] + rng.normal(0.0, 1.0, (n, HARD_N_FEATURES))
    score = np.sin(2.0 * (X @ task.wave)) + 0.5 * (X @ task.linear)
    for k in range(HARD_PAIRS):
        score += task.pair_weights[k] * X[:, 2 * k] * X[:, 2 * k + 1]
    y = (score > 0).astype(np.int64)
    noisy = rng.random(n) < HARD_LABEL_NOISE
    return X, np.where(noisy, 1 - y, y)


def hard_patients(n: int, specialty: str, rng: np.random.Generator) -> Dataset:
    """``n`` simulated patients of the harder task: HARD_N_FEATURES markers on a standard scale (no
    missing values) and an outcome given by a fixed non-linear rule (products of marker pairs, a wave
    along one direction, a small linear part) with HARD_LABEL_NOISE of the labels flipped. Specialties
    differ in case mix (each centres its markers at its own point) and in how common the outcome is
    (Binomial(n, HARD_EVENT_RATE[specialty]) patients have it; within a class, patients look as the rule
    says). Deterministic given ``rng``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"the number of patients must be a positive integer, got {n!r}")
    _check_specialty(specialty)
    if not isinstance(rng, np.random.Generator):
        raise DataError("pass an explicitly seeded numpy Generator, e.g. np.random.default_rng(seed)")
    n_pos = int(rng.binomial(n, HARD_EVENT_RATE[specialty]))
    need = (n - n_pos, n_pos)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    counts = [0, 0]
    while counts[0] < need[0] or counts[1] < need[1]:
        X, y = _hard_candidates(2 * n + 64, specialty, rng)
        xs.append(X)
        ys.append(y)
        counts[1] += int(y.sum())
        counts[0] += len(y) - int(y.sum())
    X, y = np.vstack(xs), np.concatenate(ys)
    keep = np.sort(np.concatenate([np.flatnonzero(y == c)[: need[c]] for c in (0, 1)]))
    return Dataset(np.ascontiguousarray(X[keep]), y[keep], HARD_FEATURE_NAMES)


def simulated_patients(source: str, n: int, specialty: str, rng: np.random.Generator) -> Dataset:
    """Model-ready simulated patients of a built-in source (one of SYNTHETIC_SOURCES)."""
    if source == "synthetic":
        return synthetic_patients(n, specialty, rng)
    if source == "synthetic_hard":
        return hard_patients(n, specialty, rng)
    raise DataError(f"{source!r} is not a simulated source; use one of {', '.join(SYNTHETIC_SOURCES)}")


# ------------------------------------------------------------------------------------------------------
# Splitting and standardisation
# ------------------------------------------------------------------------------------------------------


def _stratified_holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out); each class contributes round(fraction * its count) held-out rows."""
    kept: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = round(fraction * len(idx))
        held.append(idx[:k])
        kept.append(idx[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _stratified_shards(y: np.ndarray, n_shards: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint shards with per-class counts that differ by at most one between shards."""
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    offset = 0
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        for j, i in enumerate(idx):
            shards[(offset + j) % n_shards].append(int(i))
        offset = (offset + len(idx)) % n_shards  # balance totals across shards
    return [np.sort(np.array(s, dtype=np.int64)) for s in shards]


def column_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of the values present (NaN = missing is skipped); a
    constant column gets scale 1 (it is only centred) and a column with no value at all gets (0, 1)."""
    X = np.asarray(X, dtype=np.float64)
    if not np.isnan(X).any():
        mu, sd = X.mean(axis=0), X.std(axis=0)
    else:
        present = ~np.isnan(X)
        count = present.sum(axis=0)
        filled = np.where(present, X, 0.0)
        mu = filled.sum(axis=0) / np.maximum(count, 1)
        sd = np.sqrt(np.where(present, (X - mu) ** 2, 0.0).sum(axis=0) / np.maximum(count, 1))
    return mu, np.where(sd > 1e-12, sd, 1.0)


def _site_prepare(train: Table, others: list[Table], missable: tuple[str, ...]) -> list[Dataset]:
    """Standardise with ``train``'s own statistics, then apply the missing-value rule: [train, *others]."""
    mu, sd = column_stats(train.X)
    names = model_feature_names(train.columns, missable)
    return [
        Dataset(apply_missing_rule((t.X - mu) / sd, t.columns, missable), t.y, names)
        for t in [train, *others]
    ]


_Rows = TypeVar("_Rows", Dataset, Table)


def _check_seed(seed: int, what: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"the {what} must be a non-negative integer, got {seed!r}")


def _check_shard(shard: tuple[int, int] | None) -> None:
    if shard is None:
        return
    ok = (
        isinstance(shard, tuple)
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    )
    if not ok or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise DataError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")


def _split_facility(
    rows: _Rows, *, test_fraction: float, rng: np.random.Generator, what: str
) -> tuple[_Rows, _Rows]:
    tr_idx, te_idx = _stratified_holdout(rows.y, test_fraction, rng)
    if len(tr_idx) == 0 or len(te_idx) == 0:
        raise DataError(
            f"{what} has only {rows.n} rows: too few to keep both a training set and a "
            f"{test_fraction:.0%} test set"
        )
    return rows.subset(tr_idx), rows.subset(te_idx)


# ------------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _breast_cancer_all() -> Table:
    """The 569 bundled Wisconsin diagnostic rows (no download). Callers only take copies (subsets)."""
    from sklearn.datasets import load_breast_cancer

    bunch: Any = load_breast_cancer()
    X = np.asarray(bunch.data, dtype=np.float64)
    # sklearn codes malignant as 0; we predict malignancy (1 = malignant)
    y = (np.asarray(bunch.target) == 0).astype(np.int64)
    names = tuple(str(s).replace(" ", "_") for s in bunch.feature_names)
    return Table(X, y, names)


def _breast_cancer_split(seed: int) -> tuple[Table, Table]:
    """(pool for facilities, validators' held-out 15%), fixed for a given seed."""
    full = _breast_cancer_all()
    rng = np.random.default_rng([seed, _TAG_BC_HOLDOUT])
    pool_idx, val_idx = _stratified_holdout(full.y, BREAST_CANCER_VALIDATION_FRACTION, rng)
    return full.subset(pool_idx), full.subset(val_idx)


def _parse_float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_labelled_csv(path: str, label: str | None) -> Table:
    """Read one CSV file (header row, numeric feature columns, a label column with two values).

    Labels that are already 0/1 are kept; any other two distinct values are mapped in sorted order
    (numeric order if both are numbers) to 0 and 1. Features are returned unscaled; an empty cell or
    NA, N/A, NaN (see MISSING_MARKERS) is a missing value (NaN). Every feature column may be missing.
    """
    if not label:
        raise DataError(
            "a csv data set needs the name of its label column, the outcome to predict "
            "(hfl demo: --label; a service: HFL_LABEL)"
        )
    p = Path(path)
    if not p.is_file():
        raise DataError(f"csv file not found: {path}")
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty; it needs a header row with column names")
        header = [h.strip() for h in header]
        if label not in header:
            raise DataError(f"{path} has no label column {label!r}; its columns are: {', '.join(header)}")
        if len(set(header)) != len(header):
            raise DataError(f"{path} has repeated column names in its header row")
        li = header.index(label)
        feat_cols = [i for i in range(len(header)) if i != li]
        if not feat_cols:
            raise DataError(f"{path} has no feature columns besides the label {label!r}")
        rows: list[list[float]] = []
        labels: list[str] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path} line {line_no}: expected {len(header)} values, found {len(row)}")
            vals: list[float] = []
            for i in feat_cols:
                if is_missing_marker(row[i]):
                    vals.append(math.nan)
                    continue
                v = _parse_float(row[i].strip())
                if v is None:
                    raise DataError(
                        f"{path} line {line_no}, column {header[i]!r}: {row[i]!r} is not a number "
                        "(feature columns must be numeric; leave a missing value empty or write NA)"
                    )
                vals.append(v)
            lab = row[li].strip()
            if not lab:
                raise DataError(f"{path} line {line_no}: the label {label!r} is empty")
            rows.append(vals)
            labels.append(lab)
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    y = _map_labels(labels, path, label)
    names = tuple(header[i] for i in feat_cols)
    return Table(np.array(rows, dtype=np.float64), y, names)


def _map_labels(labels: list[str], path: str, label: str) -> np.ndarray:
    nums = [_parse_float(s) for s in labels]
    distinct_text = sorted(set(labels))
    if all(v is not None for v in nums):
        vals = np.array(nums, dtype=np.float64)
        distinct = np.unique(vals)
        if np.all(np.isin(distinct, (0.0, 1.0))):
            return vals.astype(np.int64)
        if len(distinct) == 2:
            return (vals == distinct[1]).astype(np.int64)
    elif len(distinct_text) == 2:
        return np.array([s == distinct_text[1] for s in labels], dtype=np.int64)
    shown = ", ".join(repr(s) for s in distinct_text[:6]) + (" ..." if len(distinct_text) > 6 else "")
    raise DataError(
        f"{path}: the label column {label!r} must hold exactly two distinct values (a yes/no outcome), "
        f"found {len(distinct_text)}: {shown}"
    )


def _csv_path(source: str) -> str:
    path = source[len("csv:") :]
    if not path:
        raise DataError("a csv source must name a file or folder, e.g. csv:/data/site1.csv")
    return path


def _check_source(source: str) -> None:
    if source in (*SYNTHETIC_SOURCES, "breast_cancer"):
        return
    if isinstance(source, str) and source.startswith("csv:"):
        _csv_path(source)
        return
    raise DataError(f"unknown data source {source!r}; use {UNKNOWN_SOURCE_HINT}")


def _facility_rng(seed: int, shard_index: int, specialty: str, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, shard_index, SPECIALTIES.index(specialty), tag])


def _stream_index(name: str) -> int:
    """A stable stream number for a facility name, far above any shard index (which is < 2**32)."""
    return 2**32 + int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def load_facility_data(
    source: str,
    *,
    specialty: str = "hospital",
    shard: tuple[int, int] | None = None,
    seed: int = 0,
    label: str | None = None,
    n_patients: int | None = None,
    test_fraction: float = 0.25,
    stream: str = "",
) -> FacilityData:
    """One facility's training data and its local test set.

    * ``synthetic``: the facility's own simulated patients of ``specialty`` (``n_patients``, default
      ``DEFAULT_SIZES[specialty]``), drawn from a stream fixed by (seed, shard index, specialty).
    * ``synthetic_hard``: the same for the harder task (:func:`hard_patients`).
    * ``breast_cancer``: 15% of the bundled set is held out for validators (seeded, stratified), and the
      rest is cut into ``shard=(i, n)`` stratified shards (the whole rest if ``shard`` is None).
    * ``csv:FILE``: one facility's file; ``label`` names the outcome column. ``shard`` optionally cuts
      the file into stratified shards as for breast_cancer.

    ``stream`` (e.g. the facility's node id) is used only for simulated data when ``shard`` is None: it
    picks the random stream instead of shard index 0, so facilities started without a shard (scaled
    containers) get different patients. The same name always gives the same data.

    ``label`` is only used for csv, ``n_patients`` only for synthetic. The local test split is
    stratified and seeded; non-synthetic features are standardised with the training split's own
    statistics.
    """
    _check_source(source)
    _check_specialty(specialty)
    if isinstance(shard, list):  # e.g. read back from JSON
        shard = (shard[0], shard[1]) if len(shard) == 2 else shard
    _check_shard(shard)
    _check_seed(seed)
    if not isinstance(test_fraction, float | int) or not 0.0 < float(test_fraction) < 1.0:
        raise DataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    test_fraction = float(test_fraction)
    if not isinstance(stream, str):
        raise DataError(f"stream must be a string (e.g. the facility's node id), got {stream!r}")
    if shard is not None:
        shard_index = shard[0]
    else:
        shard_index = _stream_index(stream) if stream and source in SYNTHETIC_SOURCES else 0
    split_rng = _facility_rng(seed, shard_index, specialty, _TAG_TEST_SPLIT)

    if source in SYNTHETIC_SOURCES:
        n = DEFAULT_SIZES[specialty] if n_patients is None else n_patients
        rng = _facility_rng(seed, shard_index, specialty, _TAG_FACILITY)
        syn = simulated_patients(source, n, specialty, rng)
        train, test = _split_facility(syn, test_fraction=test_fraction, rng=split_rng, what="this facility")
        return FacilityData(train, test, specialty, source)

    missable: tuple[str, ...] = ()
    if source == "breast_cancer":
        rows, _ = _breast_cancer_split(seed)
        what = "the breast_cancer data"
    else:
        path = _csv_path(source)
        if os.path.isdir(path):
            raise DataError(
                f"{path} is a folder; give each facility one file (csv:{os.path.join(path, 'FILE.csv')})"
            )
        rows = read_labelled_csv(path, label)
        missable = rows.columns  # every column of a csv file may have missing values
        what = path
    if shard is not None:
        i, k = shard
        if rows.n < k:
            raise DataError(f"{what} has only {rows.n} rows, too few for {k} shards")
        rows = rows.subset(_stratified_shards(rows.y, k, np.random.default_rng([seed, _TAG_SHARDS]))[i])
        what = f"shard {i} of {k} of {what}"
    tr_rows, te_rows = _split_facility(rows, test_fraction=test_fraction, rng=split_rng, what=what)
    train, test = _site_prepare(tr_rows, [te_rows], missable)
    return FacilityData(train, test, specialty, source)


def load_validation_data(
    source: str, *, seed: int = 0, index: int = 0, label: str | None = None, n_patients: int = 1500
) -> Dataset | None:
    """A validator's evaluation set.

    ``synthetic`` (and ``synthetic_hard``): the validator's own simulated patients, an even mix of all
    specialties from a stream separate from every facility's. ``breast_cancer``: the 15% held out from
    all facilities (the same for every validator). ``csv:FILE``: that file, standardised with its own
    statistics. Returns None when the csv source is a folder (the per-facility layout, with no
    validation file).
    """
    _check_source(source)
    _check_seed(seed)
    _check_seed(index, "validator index")
    if source in SYNTHETIC_SOURCES:
        if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < len(SPECIALTIES):
            raise DataError(f"a validator needs at least {len(SPECIALTIES)} patients, got {n_patients!r}")
        rng = np.random.default_rng([seed, index, _TAG_VALIDATOR])
        sizes = [
            n_patients // len(SPECIALTIES) + (1 if j < n_patients % len(SPECIALTIES) else 0)
            for j in range(len(SPECIALTIES))
        ]
        parts = [simulated_patients(source, m, s, rng) for m, s in zip(sizes, SPECIALTIES, strict=True)]
        mixed = Dataset.concat(parts)
        return mixed.subset(rng.permutation(mixed.n))
    if source == "breast_cancer":
        _, val = _breast_cancer_split(seed)
        return _site_prepare(val, [], ())[0]
    path = _csv_path(source)
    if os.path.isdir(path):
        return None
    table = read_labelled_csv(path, label)
    return _site_prepare(table, [], table.columns)[0]


def csv_dir_files(path: str) -> list[str]:
    """Sorted paths of the *.csv files in a folder (one facility per file)."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{path} is not a folder")
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".csv")
    if not files:
        raise DataError(f"the folder {path} contains no .csv files")
    return files
