"""Facility data: synthetic patients, the bundled breast-cancer set, and per-facility CSV files.

Feature scaling never needs pooled data (no facility sees another's rows):

* ``synthetic`` data is centred and scaled with fixed clinical reference values written in this file
  (e.g. age -> (age - 50) / 15), so every facility and validator uses the same transform.
* every other source (``breast_cancer``, ``csv:...``) is standardised with the facility's OWN training
  split mean and standard deviation; its local test split uses those same statistics. A validator
  standardises its validation set with that set's own statistics.

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
from typing import Any

import numpy as np

SPECIALTIES = ("hospital", "clinic", "research", "emergency")
DEFAULT_SIZES: dict[str, int] = {"hospital": 1200, "clinic": 600, "research": 500, "emergency": 800}
SOURCES = ("synthetic", "breast_cancer", "csv:PATH")

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
# Synthetic patients
# ------------------------------------------------------------------------------------------------------

# (name, reference centre, reference scale): fixed clinical reference values, not fitted to any data.
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
)
SYNTHETIC_FEATURE_NAMES = tuple(f[0] for f in SYNTHETIC_FEATURES)
_REF_CENTER = np.array([f[1] for f in SYNTHETIC_FEATURES])
_REF_SCALE = np.array([f[2] for f in SYNTHETIC_FEATURES])


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


_CASE_MIX: dict[str, _CaseMix] = {
    # older, sicker in-patients
    "hospital": _CaseMix(63.0, 14.0, 0.55, 0.20, 1.0, 5.0, 4.0, 10.0, 0.3, 0.12),
    # younger, healthier out-patients
    "clinic": _CaseMix(45.0, 14.0, 0.45, 0.14, -0.5, -3.0, 0.0, 0.0, -0.2, 0.0),
    # broad mixed cohort
    "research": _CaseMix(54.0, 18.0, 0.50, 0.18, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05),
    # acute presentations: high heart rate, blood pressure and stress glucose
    "emergency": _CaseMix(55.0, 19.0, 0.55, 0.28, 0.5, 14.0, 16.0, 30.0, 0.1, 0.08),
}

# Framingham-style risk equation (same for every facility, so only the case mix differs).
_RISK_INTERCEPT = -2.5


def _check_specialty(specialty: str) -> None:
    if specialty not in SPECIALTIES:
        raise DataError(f"unknown specialty {specialty!r}; choose one of {', '.join(SPECIALTIES)}")


def _raw_patients(n: int, specialty: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw clinical values (n, 12) in SYNTHETIC_FEATURES order, and the outcome (n,)."""
    m = _CASE_MIX[specialty]
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
    z = (
        _RISK_INTERCEPT
        + 0.5 * a
        + 0.45 * male
        + 0.17 * (sbp - 120.0) / 10.0
        + 0.55 * smoker
        - 0.12 * smoker * a
        + 0.12 * (tc - 200.0) / 20.0
        - 0.22 * (hdl - 50.0) / 10.0
        + 0.35 * (hba1c - 5.7)
        + 0.45 * (hba1c >= 6.5)
        + 0.6 * np.log(creat / 0.9)
        + 0.08 * b
        + 0.10 * (hr - 75.0) / 10.0
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    raw = np.column_stack([age, male, bmi, sbp, dbp, hr, glucose, hba1c, tc, hdl, smoker, creat])
    return raw, y


def scale_synthetic(raw: np.ndarray) -> np.ndarray:
    """Apply the fixed clinical reference centring/scaling to raw synthetic values."""
    return (np.asarray(raw, dtype=np.float64) - _REF_CENTER) / _REF_SCALE


def unscale_synthetic(X: np.ndarray) -> np.ndarray:
    """Back to clinical units (inverse of ``scale_synthetic``)."""
    return np.asarray(X, dtype=np.float64) * _REF_SCALE + _REF_CENTER


def synthetic_patients(n: int, specialty: str, rng: np.random.Generator, *, scaled: bool = True) -> Dataset:
    """``n`` simulated patients of one specialty's case mix (not real people).

    Vitals and labs are correlated the way they are clinically (age raises blood pressure, glucose and
    creatinine; BMI raises glucose, HbA1c and blood pressure; glucose follows HbA1c). The label is a
    major cardiovascular/metabolic event drawn from one Framingham-style logistic risk score shared by
    all specialties, so facilities differ in case mix (non-IID) but not in how risk works.
    ``scaled=True`` (default) returns model-ready features (fixed reference scaling), otherwise
    clinical units.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"the number of patients must be a positive integer, got {n!r}")
    _check_specialty(specialty)
    if not isinstance(rng, np.random.Generator):
        raise DataError("pass an explicitly seeded numpy Generator, e.g. np.random.default_rng(seed)")
    raw, y = _raw_patients(n, specialty, rng)
    X = scale_synthetic(raw) if scaled else raw
    return Dataset(np.ascontiguousarray(X, dtype=np.float64), y, SYNTHETIC_FEATURE_NAMES)


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


def _standardise(train: Dataset, others: list[Dataset]) -> tuple[Dataset, list[Dataset]]:
    """Standardise with ``train``'s own mean/std (constant columns are only centred)."""
    mu = train.X.mean(axis=0)
    sd = train.X.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)

    def f(ds: Dataset) -> Dataset:
        return Dataset((ds.X - mu) / sd, ds.y, ds.feature_names)

    return f(train), [f(o) for o in others]


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
    rows: Dataset, *, test_fraction: float, rng: np.random.Generator, what: str
) -> tuple[Dataset, Dataset]:
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
def _breast_cancer_all() -> Dataset:
    """The 569 bundled Wisconsin diagnostic rows (no download). Callers only take copies (subsets)."""
    from sklearn.datasets import load_breast_cancer

    bunch: Any = load_breast_cancer()
    X = np.asarray(bunch.data, dtype=np.float64)
    # sklearn codes malignant as 0; we predict malignancy (1 = malignant)
    y = (np.asarray(bunch.target) == 0).astype(np.int64)
    names = tuple(str(s).replace(" ", "_") for s in bunch.feature_names)
    return Dataset(X, y, names)


def _breast_cancer_split(seed: int) -> tuple[Dataset, Dataset]:
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


def read_labelled_csv(path: str, label: str | None) -> Dataset:
    """Read one CSV file (header row, numeric feature columns, a label column with two values).

    Labels that are already 0/1 are kept; any other two distinct values are mapped in sorted order
    (numeric order if both are numbers) to 0 and 1. Features are returned unscaled.
    """
    if not label:
        raise DataError("a csv data set needs the name of its label column (the outcome to predict)")
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
                v = _parse_float(row[i].strip())
                if v is None:
                    raise DataError(
                        f"{path} line {line_no}, column {header[i]!r}: {row[i]!r} is missing or not a number "
                        "(all feature columns must be numeric, with no empty cells)"
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
    return Dataset(np.array(rows, dtype=np.float64), y, names)


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
    if source in ("synthetic", "breast_cancer"):
        return
    if isinstance(source, str) and source.startswith("csv:"):
        _csv_path(source)
        return
    raise DataError(f"unknown data source {source!r}; use synthetic, breast_cancer or csv:PATH")


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
    * ``breast_cancer``: 15% of the bundled set is held out for validators (seeded, stratified), and the
      rest is cut into ``shard=(i, n)`` stratified shards (the whole rest if ``shard`` is None).
    * ``csv:FILE``: one facility's file; ``label`` names the outcome column. ``shard`` optionally cuts
      the file into stratified shards as for breast_cancer.

    ``stream`` (e.g. the facility's node id) is used only for synthetic data when ``shard`` is None: it
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
        shard_index = _stream_index(stream) if stream and source == "synthetic" else 0
    split_rng = _facility_rng(seed, shard_index, specialty, _TAG_TEST_SPLIT)

    if source == "synthetic":
        n = DEFAULT_SIZES[specialty] if n_patients is None else n_patients
        rows = synthetic_patients(n, specialty, _facility_rng(seed, shard_index, specialty, _TAG_FACILITY))
        train, test = _split_facility(rows, test_fraction=test_fraction, rng=split_rng, what="this facility")
        return FacilityData(train, test, specialty, source)

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
        what = path
    if shard is not None:
        i, k = shard
        if rows.n < k:
            raise DataError(f"{what} has only {rows.n} rows, too few for {k} shards")
        rows = rows.subset(_stratified_shards(rows.y, k, np.random.default_rng([seed, _TAG_SHARDS]))[i])
        what = f"shard {i} of {k} of {what}"
    train, test = _split_facility(rows, test_fraction=test_fraction, rng=split_rng, what=what)
    train, (test,) = _standardise(train, [test])
    return FacilityData(train, test, specialty, source)


def load_validation_data(
    source: str, *, seed: int = 0, index: int = 0, label: str | None = None, n_patients: int = 1500
) -> Dataset | None:
    """A validator's evaluation set.

    ``synthetic``: the validator's own simulated patients, an even mix of all specialties from a stream
    separate from every facility's. ``breast_cancer``: the 15% held out from all facilities (the same
    for every validator). ``csv:FILE``: that file, standardised with its own statistics. Returns None
    when the csv source is a folder (the per-facility layout, with no validation file).
    """
    _check_source(source)
    _check_seed(seed)
    _check_seed(index, "validator index")
    if source == "synthetic":
        if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < len(SPECIALTIES):
            raise DataError(f"a validator needs at least {len(SPECIALTIES)} patients, got {n_patients!r}")
        rng = np.random.default_rng([seed, index, _TAG_VALIDATOR])
        sizes = [
            n_patients // len(SPECIALTIES) + (1 if j < n_patients % len(SPECIALTIES) else 0)
            for j in range(len(SPECIALTIES))
        ]
        parts = [synthetic_patients(m, s, rng) for m, s in zip(sizes, SPECIALTIES, strict=True)]
        mixed = Dataset.concat(parts)
        return mixed.subset(rng.permutation(mixed.n))
    if source == "breast_cancer":
        _, val = _breast_cancer_split(seed)
        return _standardise(val, [])[0]
    path = _csv_path(source)
    if os.path.isdir(path):
        return None
    return _standardise(read_labelled_csv(path, label), [])[0]


def csv_dir_files(path: str) -> list[str]:
    """Sorted paths of the *.csv files in a folder (one facility per file)."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{path} is not a folder")
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() == ".csv")
    if not files:
        raise DataError(f"the folder {path} contains no .csv files")
    return files


def centralized_reference(
    source: str,
    *,
    facilities: list[tuple[str, tuple[int, int] | None, str | None]],
    seed: int,
    model_kind: str,
    label: str | None = None,
    **train_kwargs: Any,
) -> float:
    """Accuracy of one model trained on the pooled training splits of exactly these facilities.

    Each facility is (specialty, shard, csv file or None) and is loaded as that facility would load it.
    The model is evaluated on the pooled local test sets. Training budget matches the federation:
    ``rounds`` (default 10) x ``cfg.epochs`` passes over the pooled data with the same learning rate and
    batch size. Accepted ``train_kwargs``: ``cfg`` (TrainConfig, default DEFAULT_TRAIN), ``rounds``,
    ``hidden`` (mlp width, default 16), ``init_seed`` (default 0), ``n_patients`` and ``test_fraction``
    (passed to load_facility_data).
    """
    from hfl.learning.models import evaluate, make_model
    from hfl.learning.train import DEFAULT_TRAIN, TrainConfig, train_local

    allowed = {"cfg", "rounds", "hidden", "init_seed", "n_patients", "test_fraction"}
    unknown = set(train_kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    cfg: TrainConfig = train_kwargs.get("cfg", DEFAULT_TRAIN)
    rounds = train_kwargs.get("rounds", 10)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DataError(f"rounds must be a positive integer, got {rounds!r}")
    if not facilities:
        raise DataError("no facilities given for the centralised reference")
    load_kw: dict[str, Any] = {
        k: train_kwargs[k] for k in ("n_patients", "test_fraction") if k in train_kwargs
    }
    trains: list[Dataset] = []
    tests: list[Dataset] = []
    for specialty, shard, csv_file in facilities:
        src = source if csv_file is None else f"csv:{csv_file}"
        fd = load_facility_data(src, specialty=specialty, shard=shard, seed=seed, label=label, **load_kw)
        trains.append(fd.train)
        tests.append(fd.test)
    pooled_train = Dataset.concat(trains)
    pooled_test = Dataset.concat(tests)
    model = make_model(model_kind, pooled_train.d, train_kwargs.get("hidden", 16))
    params = model.init_params(train_kwargs.get("init_seed", 0))
    budget = TrainConfig(lr=cfg.lr, epochs=cfg.epochs * rounds, batch_size=cfg.batch_size)
    params = train_local(model, params, pooled_train, budget, np.random.default_rng([seed, 99]))
    return evaluate(model, params, pooled_test).accuracy
