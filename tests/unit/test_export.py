"""Exported models: the file round trip, the ONNX graph against hfl's own predictions, and every refusal
of a patient table (each names the row and column)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hfl.hashing import hash_vector
from hfl.learning.data import (
    SYNTHETIC_CENTER,
    SYNTHETIC_COLUMNS,
    SYNTHETIC_FEATURE_NAMES,
    SYNTHETIC_MISSABLE,
    SYNTHETIC_SCALE,
    prepare_synthetic,
    synthetic_patients,
    synthetic_table,
)
from hfl.learning.export import (
    ExportedModel,
    ExportError,
    from_npz,
    predictions_csv,
    read_patients,
    standardise,
    to_npz,
    to_onnx,
)
from hfl.learning.models import make_model

CENTER, SCALE = SYNTHETIC_CENTER, SYNTHETIC_SCALE


def exported(kind: str = "logreg", *, scaled: bool = True, hidden: int = 5, seed: int = 3) -> ExportedModel:
    d = len(SYNTHETIC_FEATURE_NAMES)  # the model's inputs: 17 columns and 15 missing-value indicators
    model = make_model(kind, d, hidden)
    params = np.random.default_rng(seed).normal(size=model.n_params)
    return ExportedModel(
        kind=kind,
        n_features=d,
        hidden=model.hidden,
        params=params,
        feature_names=SYNTHETIC_COLUMNS,
        missing_allowed=SYNTHETIC_MISSABLE,
        round=7,
        block_hash=b"\x01" * 32,
        model_hash=hash_vector(params),
        dataset="synthetic" if scaled else "csv:x.csv",
        center=CENTER if scaled else None,
        scale=SCALE if scaled else None,
        standardise_input=not scaled,
    )


def raw_patients(n: int = 50, seed: int = 9, *, gaps: float = 0.0) -> np.ndarray:
    """Random raw values; with ``gaps``, that share of the values that may be missing are NaN."""
    rng = np.random.default_rng(seed)
    X = CENTER + SCALE * rng.normal(size=(n, len(CENTER)))
    may = np.array([c in SYNTHETIC_MISSABLE for c in SYNTHETIC_COLUMNS])
    X[(rng.random(X.shape) < gaps) & may] = np.nan
    return X


def test_npz_round_trip_keeps_every_prediction() -> None:
    for kind in ("logreg", "mlp"):
        m = exported(kind)
        back = from_npz(to_npz(m))
        assert back.describe() == m.describe()
        np.testing.assert_array_equal(back.predict_proba(raw_patients()), m.predict_proba(raw_patients()))


def test_a_changed_model_file_is_refused() -> None:
    m = exported()
    buf = io.BytesIO()
    with np.load(io.BytesIO(to_npz(m))) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["params"] = arrays["params"] + 1e-9
    np.savez(buf, **arrays)
    with pytest.raises(ExportError, match="do not match the model hash"):
        from_npz(buf.getvalue())
    with pytest.raises(ExportError, match="not a model file"):
        from_npz(b"PK\x03\x04 not really a zip")


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.parametrize("gaps", [0.0, 0.3])
def test_onnx_gives_the_same_probabilities_as_hfl(kind: str, scaled: bool, gaps: float) -> None:
    ort = pytest.importorskip("onnxruntime")
    m = exported(kind, scaled=scaled)
    X = raw_patients(200, gaps=gaps)
    assert np.isnan(X).any() == (gaps > 0)
    session = ort.InferenceSession(to_onnx(m), providers=["CPUExecutionProvider"])
    # With built-in scaling the graph takes raw values; otherwise the table is standardised first.
    feed = X if scaled else standardise(X)
    (got,) = session.run(["probability"], {"features": feed})
    assert got.shape == (200,)
    np.testing.assert_allclose(got, m.predict_proba(X), rtol=0, atol=1e-6)
    assert np.ptp(got) > 0.1  # the comparison is not between two constant outputs


def test_onnx_on_simulated_sites_with_their_missing_fields() -> None:
    """Simulated patients of every specialty (fields a specialty does not collect are all missing):
    hfl's model input equals the simulator's, and the ONNX graph gives the same probabilities."""
    ort = pytest.importorskip("onnxruntime")
    m = exported("mlp")
    session = ort.InferenceSession(to_onnx(m), providers=["CPUExecutionProvider"])
    for i, s in enumerate(("hospital", "clinic", "research", "emergency")):
        raw = synthetic_table(100, s, np.random.default_rng(i)).X
        assert np.isnan(raw).any()
        np.testing.assert_array_equal(m.prepare(raw), synthetic_patients(100, s, np.random.default_rng(i)).X)
        (got,) = session.run(["probability"], {"features": raw})
        np.testing.assert_allclose(got, m.predict_proba(raw), rtol=0, atol=1e-6)


def test_predict_reads_empty_and_na_cells_like_the_simulator() -> None:
    m = exported()
    raw = synthetic_table(20, "emergency", np.random.default_rng(5)).X
    markers = ["", "NA", "na", " N/A ", "NaN"]
    rows = [
        ["" if np.isnan(v) else repr(float(v)) for v in r]
        if i % 2
        else [markers[(i + j) % len(markers)] if np.isnan(v) else repr(float(v)) for j, v in enumerate(r)]
        for i, r in enumerate(raw)
    ]
    X = read_patients(table(rows), m)
    np.testing.assert_array_equal(np.isnan(X), np.isnan(raw))
    np.testing.assert_array_equal(m.prepare(X), prepare_synthetic(raw))
    out, proba = predictions_csv(m, X)
    assert np.all(np.isfinite(proba)) and len(out.splitlines()) == 21


def table(rows: list[list[str]], header: tuple[str, ...] = SYNTHETIC_COLUMNS) -> str:
    return "\n".join(",".join(r) for r in [list(header), *rows]) + "\n"


GOOD = [f"{c:g}" for c in CENTER]


def test_a_good_table_gives_one_prediction_per_row_in_order() -> None:
    m = exported()
    text = table([GOOD, [f"{c:g}" for c in CENTER + 2 * SCALE]])
    X = read_patients(text, m)
    out, proba = predictions_csv(m, X)
    lines = out.splitlines()
    assert lines[0] == "row,probability_outcome,predicted_outcome"
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "3"]
    assert proba.shape == (2,)
    # columns in another order are matched by name
    order = list(reversed(SYNTHETIC_COLUMNS))
    swapped = table([list(reversed(GOOD))], tuple(order))
    np.testing.assert_array_equal(read_patients(swapped, m), X[:1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        (table([]), "no patients"),
        (table([GOOD], SYNTHETIC_COLUMNS[:-1]), "missing the column 'apob_mg_dl'"),
        (
            table([[*GOOD, "x"]], (*SYNTHETIC_COLUMNS, "patient_id")),
            "'patient_id' that the model does not",
        ),
        (
            table([GOOD], (*SYNTHETIC_COLUMNS, "age_years_missing")),
            "'age_years_missing' that the model does not",
        ),
        (table([GOOD[:-1]]), "row 2 of the table has 16 values but the header has 17 columns"),
        (
            table([GOOD, ["", *GOOD[1:]]]),
            "row 3 of the table has no value in column 'age_years', which may not be empty",
        ),
        (
            table([GOOD, [GOOD[0], "NA", *GOOD[2:]]]),
            "row 3 of the table has no value ('NA') in column 'male', which may not be empty",
        ),
        (
            table([[*GOOD[:3], "high", *GOOD[4:]]]),
            "row 2 of the table, column 'systolic_bp_mmhg': 'high' is not a number",
        ),
        (
            table([[*GOOD[:12], "-inf", *GOOD[13:]]]),
            "row 2 of the table, column 'triage_level': '-inf' is not a usable number",
        ),
        (
            table([[*GOOD[:2], "heavy", *GOOD[3:]]]),
            "row 2 of the table, column 'bmi_kg_m2': 'heavy' is not a number",
        ),
        (table([["nan", *GOOD[1:]]]), "row 2 of the table, column 'age_years': 'nan' is not a usable number"),
        (table([[*GOOD[:-1], "inf"]]), "column 'apob_mg_dl': 'inf' is not a usable number"),
        (table([GOOD], (*SYNTHETIC_COLUMNS[:-1], "age_years")), "column 'age_years' more than once"),
    ],
)
def test_every_bad_table_is_refused_in_one_sentence(text: str, message: str) -> None:
    with pytest.raises(ExportError) as err:
        read_patients(text, exported())
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_nan_where_no_value_may_be_missing_is_refused_by_the_model_itself() -> None:
    X = raw_patients(3)
    X[1, 0] = np.nan  # age
    with pytest.raises(ExportError, match="row 3 has no value in column 'age_years', which may not be empty"):
        exported().predict_proba(X)


def test_a_standardising_model_needs_two_rows() -> None:
    m = exported(scaled=False)
    with pytest.raises(ExportError, match="at least 2 rows"):
        predictions_csv(m, read_patients(table([GOOD]), m))


def test_inconsistent_models_are_refused() -> None:
    m = exported()
    with pytest.raises(ExportError, match="feature names"):
        ExportedModel(**{**_fields(m), "feature_names": m.feature_names[:-1]})
    with pytest.raises(ExportError, match="missing-value indicators"):
        ExportedModel(**{**_fields(m), "missing_allowed": m.missing_allowed[:-1]})
    with pytest.raises(ExportError, match="must be table columns"):
        ExportedModel(**{**_fields(m), "missing_allowed": (*m.missing_allowed[:-1], "weight")})
    with pytest.raises(ExportError, match="model hash"):
        ExportedModel(**{**_fields(m), "model_hash": b"\x00" * 32})
    with pytest.raises(ExportError, match="scale of 0"):
        ExportedModel(**{**_fields(m), "scale": np.zeros(len(SCALE))})
    with pytest.raises(ExportError, match="threshold"):
        ExportedModel(**{**_fields(m), "threshold": 1.0})


def _fields(m: ExportedModel) -> dict[str, object]:
    return {k: getattr(m, k) for k in m.__dataclass_fields__}


def test_the_card_shows_rule_parameters_to_four_digits() -> None:
    from hfl.card import _parameters

    assert _parameters({"f": 1, "clip_update": 1.3830267169740746}) == " (clip_update=1.383, f=1)"
    assert _parameters({}) == ""


def test_the_card_says_what_the_rule_parameters_mean() -> None:
    from hfl.card import _parameter_words

    assert _parameter_words("trimmed_mean", {"f": 0}) == [
        "  - f = 0: in the last round the rule could set no group of sites aside as possibly bad, so the "
        "model was a plain average of the groups"
    ]
    assert _parameter_words("median", {"f": 0})[0].endswith("aside as possibly bad")
    one = _parameter_words("trimmed_mean", {"f": 1, "clip_update": 0.95})
    assert (
        one[0]
        == "  - f = 1: in the last round the rule could set aside up to 1 group of sites as possibly bad"
    )
    assert one[1].startswith("  - clip_update: the longest update one site could send")
    assert _parameter_words("trimmed_mean", {"f": 2})[0].endswith("up to 2 groups of sites as possibly bad")
    assert _parameter_words("mean", {}) == []
