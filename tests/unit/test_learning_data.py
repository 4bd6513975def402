from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hfl.learning import data as D
from hfl.learning.data import (
    DEFAULT_SIZES,
    EVENT_RATE,
    MISSING_RATE,
    NOT_COLLECTED,
    SPECIALTIES,
    SYNTHETIC_COLUMNS,
    SYNTHETIC_FEATURE_NAMES,
    SYNTHETIC_MISSABLE,
    DataError,
    Dataset,
    apply_missing_rule,
    csv_dir_files,
    load_facility_data,
    load_validation_data,
    scale_synthetic,
    synthetic_patients,
    synthetic_table,
    unscale_synthetic,
)
from hfl.learning.reference import centralized_reference

# ------------------------------------------------------------------------------------------ Dataset


def test_dataset_validation() -> None:
    X = np.zeros((3, 2))
    y = np.array([0, 1, 1], dtype=np.int64)
    ds = Dataset(X, y, ("a", "b"))
    assert (ds.n, ds.d) == (3, 2)
    with pytest.raises(DataError, match="NaN"):
        Dataset(np.array([[np.nan, 0.0]] * 3), y, ("a", "b"))
    with pytest.raises(DataError, match="0 or 1"):
        Dataset(X, np.array([0, 2, 1], dtype=np.int64), ("a", "b"))
    with pytest.raises(DataError, match="one label per row"):
        Dataset(X, y[:2], ("a", "b"))
    with pytest.raises(DataError, match="float64"):
        Dataset(X.astype(np.float32), y, ("a", "b"))
    with pytest.raises(DataError, match="int64"):
        Dataset(X, y.astype(np.int32), ("a", "b"))
    with pytest.raises(DataError, match="feature names"):
        Dataset(X, y, ("a",))
    with pytest.raises(DataError, match="table"):
        Dataset(np.zeros(3), y, ())
    assert issubclass(DataError, ValueError)


def test_dataset_concat_requires_same_columns() -> None:
    y = np.array([0, 1], dtype=np.int64)
    a = Dataset(np.zeros((2, 2)), y, ("a", "b"))
    b = Dataset(np.ones((2, 2)), y, ("b", "a"))
    assert Dataset.concat([a, a]).n == 4
    with pytest.raises(DataError, match="same feature columns"):
        Dataset.concat([a, b])


# ------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism() -> None:
    a = synthetic_patients(200, "clinic", np.random.default_rng(7))
    b = synthetic_patients(200, "clinic", np.random.default_rng(7))
    c = synthetic_patients(200, "clinic", np.random.default_rng(8))
    assert a.X.shape == (200, 32) and a.feature_names == SYNTHETIC_FEATURE_NAMES
    assert (*SYNTHETIC_COLUMNS, *(f"{c}_missing" for c in SYNTHETIC_MISSABLE)) == SYNTHETIC_FEATURE_NAMES
    assert (len(SYNTHETIC_COLUMNS), len(SYNTHETIC_MISSABLE)) == (17, 15)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)
    raw = synthetic_table(200, "clinic", np.random.default_rng(7))
    np.testing.assert_array_equal(raw.y, a.y)
    d = len(SYNTHETIC_COLUMNS)
    missing = np.isnan(raw.X)
    # present values: the fixed reference scaling, e.g. age -> (age - 50) / 15
    np.testing.assert_allclose(a.X[:, :d][~missing], scale_synthetic(raw.X)[~missing])
    np.testing.assert_allclose(a.X[:, 0], (raw.X[:, 0] - 50.0) / 15.0)
    np.testing.assert_allclose(unscale_synthetic(a.X)[~missing], raw.X[~missing])
    # missing values: 0 after scaling (the reference value), and the indicator is 1
    assert np.all(a.X[:, :d][missing] == 0.0)
    idx = [SYNTHETIC_COLUMNS.index(c) for c in SYNTHETIC_MISSABLE]
    np.testing.assert_array_equal(a.X[:, d:], missing[:, idx].astype(float))


@pytest.fixture(scope="module")
def tables() -> dict[str, np.ndarray]:
    return {s: synthetic_table(6000, s, np.random.default_rng(11)).X for s in SPECIALTIES}


@pytest.fixture(scope="module")
def cohorts(tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values before any are hidden as missing: each specialty's table with the same random draws
    except the missing-value mask (the mask is drawn last)."""
    return {s: D._with_event_rate(6000, s, np.random.default_rng(11))[0] for s in SPECIALTIES}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, float]:
    return {s: float(synthetic_table(6000, s, np.random.default_rng(12)).y.mean()) for s in SPECIALTIES}


def _col(name: str) -> int:
    return SYNTHETIC_COLUMNS.index(name)


def test_synthetic_values_are_clinically_plausible(cohorts: dict[str, np.ndarray]) -> None:
    for X in cohorts.values():
        assert X[:, _col("age_years")].min() >= 18 and X[:, _col("age_years")].max() <= 95
        assert set(np.unique(X[:, _col("male")])) <= {0.0, 1.0}
        assert set(np.unique(X[:, _col("smoker")])) <= {0.0, 1.0}
        assert np.all(X[:, _col("diastolic_bp_mmhg")] < X[:, _col("systolic_bp_mmhg")])
        assert 4.5 < np.median(X[:, _col("hba1c_percent")]) < 6.5
        assert 0.6 < np.median(X[:, _col("creatinine_mg_dl")]) < 1.4


def test_synthetic_correlations(cohorts: dict[str, np.ndarray]) -> None:
    X = cohorts["research"]
    C = np.corrcoef(X.T)

    def r(a: str, b: str) -> float:
        return float(C[_col(a), _col(b)])

    assert r("age_years", "systolic_bp_mmhg") > 0.3
    assert r("age_years", "glucose_mg_dl") > 0.15
    assert r("age_years", "creatinine_mg_dl") > 0.3
    assert r("bmi_kg_m2", "hba1c_percent") > 0.2
    assert r("bmi_kg_m2", "glucose_mg_dl") > 0.2
    assert r("bmi_kg_m2", "systolic_bp_mmhg") > 0.2
    assert r("glucose_mg_dl", "hba1c_percent") > 0.8
    assert r("systolic_bp_mmhg", "diastolic_bp_mmhg") > 0.4
    assert r("bmi_kg_m2", "hdl_mg_dl") < -0.2
    assert r("male", "hdl_mg_dl") < -0.2


def test_specialties_shift_case_mix(cohorts: dict[str, np.ndarray]) -> None:
    def mean(s: str, f: str) -> float:
        return float(cohorts[s][:, _col(f)].mean())

    assert mean("hospital", "age_years") > mean("research", "age_years") > mean("clinic", "age_years") + 5
    assert mean("hospital", "creatinine_mg_dl") > mean("clinic", "creatinine_mg_dl")
    assert mean("emergency", "heart_rate_bpm") > mean("hospital", "heart_rate_bpm") + 8
    assert mean("emergency", "glucose_mg_dl") > mean("research", "glucose_mg_dl") + 20
    assert mean("emergency", "systolic_bp_mmhg") > mean("research", "systolic_bp_mmhg") + 8
    # broader cohort in research than in the clinic
    assert cohorts["research"][:, 0].std() > cohorts["clinic"][:, 0].std()


def test_outcome_prevalence_shifts_by_specialty(outcomes: dict[str, float]) -> None:
    for s in SPECIALTIES:  # binomial spread at n = 6000 is under 0.007
        assert outcomes[s] == pytest.approx(EVENT_RATE[s], abs=0.02), s
    assert outcomes["clinic"] < outcomes["research"] < outcomes["hospital"] < outcomes["emergency"]
    total = sum(DEFAULT_SIZES[s] * outcomes[s] for s in SPECIALTIES) / sum(DEFAULT_SIZES.values())
    assert 0.20 <= total <= 0.32


def test_missing_rates_match_the_table(tables: dict[str, np.ndarray]) -> None:
    for s, X in tables.items():
        rates = np.isnan(X).mean(axis=0)
        for j, name in enumerate(SYNTHETIC_COLUMNS):
            expected = MISSING_RATE[s].get(name, 0.0)
            assert rates[j] == pytest.approx(expected, abs=0.025), (s, name)
        assert not np.isnan(X[:, _col("age_years")]).any() and not np.isnan(X[:, _col("male")]).any()
    # more missing lab values at clinics than at hospitals and research centres
    labs = [_col(c) for c in ("glucose_mg_dl", "hba1c_percent", "hdl_mg_dl", "creatinine_mg_dl")]
    lab_rate = {s: float(np.isnan(X[:, labs]).mean()) for s, X in tables.items()}
    assert lab_rate["clinic"] > lab_rate["hospital"] > lab_rate["research"]
    assert lab_rate["clinic"] > 0.4 and 0.15 < lab_rate["hospital"] < 0.35


def test_specialty_fields_present_only_where_collected(tables: dict[str, np.ndarray]) -> None:
    emergency_only = ("triage_level", "arrival_heart_rate_bpm", "arrival_systolic_bp_mmhg")
    biomarkers = ("hs_crp_mg_l", "apob_mg_dl")
    for s, X in tables.items():
        present = {c: float((~np.isnan(X[:, _col(c)])).mean()) for c in SYNTHETIC_COLUMNS}
        for c in emergency_only:
            assert (present[c] > 0.95) if s == "emergency" else (present[c] == 0.0), (s, c)
        for c in biomarkers:
            if s == "research":
                assert present[c] > 0.8
            elif s == "hospital":
                assert 0.1 < present[c] < 0.4
            else:
                assert present[c] == 0.0 and MISSING_RATE[s][c] == NOT_COLLECTED
    triage = tables["emergency"][:, _col("triage_level")]
    assert set(np.unique(triage[~np.isnan(triage)])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_lab_values_are_missing_less_often_for_sicker_patients() -> None:
    """Missing not at random: labs are ordered more often for patients at higher risk."""
    t = synthetic_table(8000, "clinic", np.random.default_rng(4))
    gap = np.isnan(t.X[:, _col("hba1c_percent")])
    assert t.y[~gap].mean() > t.y[gap].mean() + 0.03


def test_the_missing_rule() -> None:
    cols = ("a", "b", "c")
    X = np.array([[1.0, np.nan, 2.0], [np.nan, 3.0, np.nan]])
    out = apply_missing_rule(X, cols, ("b", "c", "a"))
    np.testing.assert_array_equal(out, [[1.0, 0.0, 2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(DataError, match="row 3 has no value in column 'a', which may not be empty"):
        apply_missing_rule(X, cols, ("b", "c"), first_row=2)
    with pytest.raises(DataError, match="must be table columns"):
        apply_missing_rule(X, cols, ("z",))
    np.testing.assert_array_equal(apply_missing_rule(X[:, 2:][:1], ("c",), ()), [[2.0]])


def test_synthetic_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="specialty"):
        synthetic_patients(10, "dentist", rng)
    with pytest.raises(DataError, match="positive"):
        synthetic_table(0, "clinic", rng)
    with pytest.raises(DataError, match="Generator"):
        synthetic_patients(10, "clinic", 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- facilities


def test_synthetic_facility_split() -> None:
    fd = load_facility_data("synthetic", specialty="hospital", shard=(0, 8), seed=3)
    assert (fd.specialty, fd.source) == ("hospital", "synthetic")
    assert fd.train.n + fd.test.n == DEFAULT_SIZES["hospital"]
    assert fd.test.n == pytest.approx(0.25 * DEFAULT_SIZES["hospital"], abs=2)
    assert abs(fd.train.y.mean() - fd.test.y.mean()) < 0.02  # stratified
    again = load_facility_data("synthetic", specialty="hospital", shard=(0, 8), seed=3)
    np.testing.assert_array_equal(fd.train.X, again.train.X)
    other = load_facility_data("synthetic", specialty="hospital", shard=(4, 8), seed=3)
    assert not np.array_equal(fd.train.X[:5], other.train.X[:5])
    as_list = load_facility_data("synthetic", specialty="hospital", shard=[4, 8], seed=3)  # type: ignore[arg-type]
    np.testing.assert_array_equal(as_list.test.X, other.test.X)
    small = load_facility_data("synthetic", specialty="clinic", n_patients=100, test_fraction=0.5)
    assert (small.train.n, small.test.n) == (50, 50)


def test_breast_cancer_shards_partition_the_pool() -> None:
    pool, val = D._breast_cancer_split(0)
    assert pool.n + val.n == 569
    assert val.n == pytest.approx(0.15 * 569, abs=2)
    assert abs(val.y.mean() - pool.y.mean()) < 0.02
    shards = D._stratified_shards(pool.y, 8, np.random.default_rng([0, 5]))
    allidx = np.concatenate(shards)
    assert len(allidx) == pool.n and len(np.unique(allidx)) == pool.n
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    positives = [int(pool.y[s].sum()) for s in shards]
    assert max(positives) - min(positives) <= 1


def test_breast_cancer_facility() -> None:
    parts = [load_facility_data("breast_cancer", shard=(i, 8), seed=0) for i in range(8)]
    pool, _ = D._breast_cancer_split(0)
    assert sum(p.train.n + p.test.n for p in parts) == pool.n
    fd = parts[0]
    assert fd.train.d == 30
    # standardised with the facility's own training statistics
    np.testing.assert_allclose(fd.train.X.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(fd.train.X.std(axis=0), 1.0, atol=1e-9)
    assert abs(fd.test.X.mean()) > 1e-6  # the test split reuses the train statistics
    val = load_validation_data("breast_cancer", seed=0, index=3)
    assert val is not None and val.n == 569 - pool.n
    val2 = load_validation_data("breast_cancer", seed=0, index=5)
    assert val2 is not None
    np.testing.assert_array_equal(val.X, val2.X)


def test_shard_and_source_validation() -> None:
    with pytest.raises(DataError, match="shard"):
        load_facility_data("breast_cancer", shard=(8, 8))
    with pytest.raises(DataError, match="shard"):
        load_facility_data("breast_cancer", shard=(0, 0))
    with pytest.raises(DataError, match="unknown data source"):
        load_facility_data("mnist")
    with pytest.raises(DataError, match="specialty"):
        load_facility_data("synthetic", specialty="dentist")
    with pytest.raises(DataError, match="test_fraction"):
        load_facility_data("synthetic", test_fraction=1.0)
    with pytest.raises(DataError, match="seed"):
        load_facility_data("synthetic", seed=-1)
    with pytest.raises(DataError, match="too few"):
        load_facility_data("synthetic", n_patients=1)


def test_synthetic_validation_data() -> None:
    v = load_validation_data("synthetic", seed=0, index=0, n_patients=400)
    assert v is not None and v.n == 400 and v.feature_names == SYNTHETIC_FEATURE_NAMES
    v_again = load_validation_data("synthetic", seed=0, index=0, n_patients=400)
    v_other = load_validation_data("synthetic", seed=0, index=1, n_patients=400)
    assert v_again is not None and v_other is not None
    np.testing.assert_array_equal(v.X, v_again.X)
    assert not np.array_equal(v.X, v_other.X)
    # a mix of specialties: ages spread like the pooled cohorts
    ages = unscale_synthetic(v.X)[:, 0]
    assert ages.min() < 30 and ages.max() > 80
    fac = load_facility_data("synthetic", specialty="hospital", seed=0)
    assert not {tuple(row) for row in v.X} & {tuple(row) for row in fac.train.X}


# ------------------------------------------------------------------------------------------- csv


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _site_csv(path: Path, n: int, seed: int, labels: tuple[str, str] = ("0", "1")) -> str:
    rng = np.random.default_rng(seed)
    lines = ["age,bp,outcome"]
    for _ in range(n):
        age = rng.normal(60, 10)
        bp = rng.normal(130, 15)
        y = labels[int(age + rng.normal(0, 5) > 60)]
        lines.append(f"{age:.2f},{bp:.1f},{y}")
    return _write(path, "\n".join(lines) + "\n")


def test_csv_facility(tmp_path: Path) -> None:
    f = _site_csv(tmp_path / "site.csv", 80, 0)
    fd = load_facility_data(f"csv:{f}", label="outcome", specialty="clinic", seed=1)
    assert fd.train.feature_names == ("age", "bp", "age_missing", "bp_missing")
    assert (fd.train.n, fd.test.n) == (60, 20)
    np.testing.assert_allclose(fd.train.X.mean(axis=0), 0.0, atol=1e-9)
    sharded = load_facility_data(f"csv:{f}", label="outcome", shard=(1, 2))
    assert sharded.train.n + sharded.test.n == 40


def test_csv_label_mapping(tmp_path: Path) -> None:
    text = "x,label\n1,no\n2,yes\n3,no\n4,yes\n"
    ds = D.read_labelled_csv(_write(tmp_path / "a.csv", text), "label")
    np.testing.assert_array_equal(ds.y, [0, 1, 0, 1])
    ds = D.read_labelled_csv(_write(tmp_path / "b.csv", "x,label\n1,2\n2,1\n3,2\n"), "label")
    np.testing.assert_array_equal(ds.y, [1, 0, 1])
    ds = D.read_labelled_csv(_write(tmp_path / "c.csv", "label,x\n1,5\n0,6\n1.0,7\n"), "label")
    np.testing.assert_array_equal(ds.y, [1, 0, 1])
    np.testing.assert_array_equal(ds.X[:, 0], [5.0, 6.0, 7.0])
    assert ds.columns == ("x",)


@pytest.mark.parametrize(
    ("text", "label", "match"),
    [
        ("x,y\n1,0\n2,1\n", None, "HFL_LABEL"),
        ("x,y\n1,0\n2,1\n", "outcome", "no label column"),
        ("x,y\n1,0\nabc,1\n", "y", "not a number"),
        ("x,y\n1,0\ninf,1\n", "y", "not a number"),
        ("x,y\n1,0\n2,1\n3,2\n", "y", "exactly two"),
        ("x,y\n1,0\n2\n", "y", "expected 2 values"),
        ("x,y\n", "y", "no data rows"),
        ("", "y", "empty"),
        ("x,y\n1,0\n2,\n", "y", "empty"),
        ("y\n1\n0\n", "y", "no feature columns"),
    ],
)
def test_csv_errors(tmp_path: Path, text: str, label: str | None, match: str) -> None:
    f = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match):
        load_facility_data(f"csv:{f}", label=label)


def test_csv_with_empty_cells_follows_the_missing_rule(tmp_path: Path) -> None:
    text = "age,bp,outcome\n50,120,0\n,140,1\n70,NA,1\n60, n/a ,0\n40,nan,0\n80,130,1\n"
    table = D.read_labelled_csv(_write(tmp_path / "gaps.csv", text), "outcome")
    assert table.columns == ("age", "bp")
    np.testing.assert_array_equal(np.isnan(table.X).sum(axis=0), [1, 3])
    v = load_validation_data(f"csv:{tmp_path / 'gaps.csv'}", label="outcome")
    assert v is not None and v.feature_names == ("age", "bp", "age_missing", "bp_missing")
    # standardised with the values present (mean 60 / 130), missing values at 0 with indicator 1
    np.testing.assert_allclose(
        v.X[:, 0], (np.array([50, 60, 70, 60, 40, 80]) - 60) / np.std([50, 70, 60, 40, 80])
    )
    np.testing.assert_allclose(v.X[:, 1], np.array([-10, 10, 0, 0, 0, 0]) / np.std([120, 140, 130]))
    np.testing.assert_array_equal(v.X[:, 2:], [[0, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 0]])
    # the same as the rule applied by hand
    mu, sd = D.column_stats(table.X)
    np.testing.assert_array_equal(v.X, apply_missing_rule((table.X - mu) / sd, table.columns, table.columns))
    fd = load_facility_data(f"csv:{tmp_path / 'gaps.csv'}", label="outcome", test_fraction=0.34)
    assert fd.train.d == 4 and np.all(np.isfinite(fd.train.X))


def test_csv_dir(tmp_path: Path) -> None:
    _site_csv(tmp_path / "b.csv", 20, 1)
    _site_csv(tmp_path / "a.csv", 20, 2)
    (tmp_path / "notes.txt").write_text("x")
    files = csv_dir_files(str(tmp_path))
    assert files == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert load_validation_data(f"csv:{tmp_path}", label="outcome") is None
    with pytest.raises(DataError, match="folder"):
        load_facility_data(f"csv:{tmp_path}", label="outcome")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no \.csv"):
        csv_dir_files(str(empty))
    with pytest.raises(DataError, match="not a folder"):
        csv_dir_files(str(tmp_path / "a.csv"))
    with pytest.raises(DataError, match="not found"):
        load_facility_data(f"csv:{tmp_path / 'zzz.csv'}", label="outcome")


def test_csv_validation_file(tmp_path: Path) -> None:
    f = _site_csv(tmp_path / "val.csv", 30, 5, labels=("neg", "pos"))
    v = load_validation_data(f"csv:{f}", label="outcome")
    assert v is not None and v.n == 30
    np.testing.assert_allclose(v.X.mean(axis=0), 0.0, atol=1e-9)


# --------------------------------------------------------------------------- centralised reference


def test_centralized_reference_runs_and_validates(tmp_path: Path) -> None:
    facs: list[tuple[str, tuple[int, int] | None, str | None]] = [
        ("hospital", (0, 2), None),
        ("clinic", (1, 2), None),
    ]
    acc = centralized_reference("synthetic", facilities=facs, seed=0, model_kind="logreg", rounds=2)
    assert 0.7 < acc <= 1.0
    with pytest.raises(TypeError, match="unknown training options"):
        centralized_reference("synthetic", facilities=facs, seed=0, model_kind="logreg", bogus=1)
    with pytest.raises(DataError, match="no facilities"):
        centralized_reference("synthetic", facilities=[], seed=0, model_kind="logreg")
    a = _site_csv(tmp_path / "a.csv", 60, 1)
    b = _site_csv(tmp_path / "b.csv", 60, 2)
    csv_facs: list[tuple[str, tuple[int, int] | None, str | None]] = [
        ("hospital", None, a),
        ("clinic", None, b),
    ]
    acc = centralized_reference(
        f"csv:{tmp_path}", facilities=csv_facs, seed=0, model_kind="mlp", label="outcome"
    )
    assert 0.6 < acc <= 1.0
