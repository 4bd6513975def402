"""A trained model taken out of the ledger: one file a hospital can keep, check and use.

An :class:`ExportedModel` carries the model's parameters with everything needed to use them on new
patients: the feature columns in order, how raw values are scaled, the decision threshold, and where the
parameters came from (round, block hash, model hash). Two file formats:

* ``.npz`` (numpy): hfl's own format, read back by :func:`from_npz` and ``hfl predict``. Loading checks the
  parameters against the recorded model hash, so a file changed after export is refused.
* ``.onnx``: the same model as an ONNX graph (opset 17, float64) for other tools (onnxruntime, hospital
  scoring engines). It takes a ``features`` table (rows x columns, in ``feature_names`` order) and gives a
  ``probability`` per row. Fixed scaling (the synthetic data's clinical reference values) is part of the
  graph; for data sets standardised per site (``breast_cancer``, ``csv:``) the graph expects
  standardised input (see :attr:`ExportedModel.standardise_input`).

Missing values follow the one rule of :func:`hfl.learning.data.apply_missing_rule` in ``hfl predict`` and
inside the ONNX graph alike: a column listed in ``missing_allowed`` may be empty (NaN in the ONNX input);
after scaling its value is 0 and the model's extra ``<column>_missing`` input is 1.

Everything here is pure: bytes in, bytes out. Reading and writing files is the command line's job.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hfl.hashing import hash_vector
from hfl.learning.data import (
    DataError,
    apply_missing_rule,
    column_stats,
    is_missing_marker,
    model_feature_names,
)
from hfl.learning.models import MODEL_KINDS, Model, make_model

FORMAT = "hfl-model/1"
DEFAULT_THRESHOLD = 0.5


class ExportError(ValueError):
    """A model file or an input table that cannot be used; the message says why in plain words."""


@dataclass(frozen=True)
class ExportedModel:
    kind: str
    n_features: int
    hidden: int
    params: np.ndarray
    feature_names: tuple[str, ...]
    round: int
    block_hash: bytes
    model_hash: bytes
    dataset: str
    label: str = "outcome"
    center: np.ndarray | None = None  # raw value -> (value - center) / scale, built into the model
    scale: np.ndarray | None = None
    standardise_input: bool = False  # True: standardise each input table with its own mean and std
    threshold: float = DEFAULT_THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict)
    missing_allowed: tuple[str, ...] = ()  # columns that may be empty; each adds a 0/1 indicator input

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ExportError(f"unknown model kind {self.kind!r}; expected one of {', '.join(MODEL_KINDS)}")
        n_in = len(self.feature_names) + len(self.missing_allowed)
        if n_in != self.n_features:
            raise ExportError(
                f"the model has {self.n_features} inputs but {len(self.feature_names)} feature names and "
                f"{len(self.missing_allowed)} missing-value indicators"
            )
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ExportError("the feature names are not unique")
        try:
            model_feature_names(self.feature_names, self.missing_allowed)
        except DataError as e:
            raise ExportError(str(e)) from None
        try:
            params = self.model().check_params(self.params)
        except ExportError:
            raise
        except ValueError as e:
            raise ExportError(str(e)) from None
        if hash_vector(params) != self.model_hash:
            raise ExportError("the parameters do not match the model hash recorded with them")
        for name in ("center", "scale"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float64)
                d = len(self.feature_names)
                if v.shape != (d,) or not np.all(np.isfinite(v)):
                    raise ExportError(f"the feature {name} must be {d} finite numbers")
                object.__setattr__(self, name, v)
        if (self.center is None) != (self.scale is None):
            raise ExportError("feature scaling needs both a centre and a scale")
        if self.scale is not None and np.any(self.scale == 0):
            raise ExportError("a feature scale of 0 cannot be used")
        if self.center is not None and self.standardise_input:
            raise ExportError("a model has either built-in scaling or per-table standardisation, not both")
        if not (0.0 < self.threshold < 1.0):
            raise ExportError("the decision threshold must be between 0 and 1")
        object.__setattr__(self, "params", params)

    def model(self) -> Model:
        return make_model(self.kind, self.n_features, self.hidden)

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Raw feature table (NaN = missing) -> the model's input: scaling, then the missing-value rule.
        A NaN in a column that may not be missing is refused, naming its row (the header is row 1)."""
        X = np.asarray(X, dtype=np.float64)
        if self.center is not None and self.scale is not None:
            X = (X - self.center) / self.scale
        elif self.standardise_input:
            X = standardise(X)
        try:
            return apply_missing_rule(X, self.feature_names, self.missing_allowed, first_row=2)
        except DataError as e:
            raise ExportError(str(e)) from None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of the outcome for each row of a raw feature table."""
        return self.model().predict_proba(self.params, self.prepare(X))

    def describe(self) -> dict[str, Any]:
        """Everything but the numbers, for the model card and ``hfl predict``'s messages."""
        return {
            "format": FORMAT,
            "kind": self.kind,
            "n_features": self.n_features,
            "hidden": self.hidden,
            "n_params": int(self.params.size),
            "feature_names": list(self.feature_names),
            "round": self.round,
            "block_hash": self.block_hash.hex(),
            "model_hash": self.model_hash.hex(),
            "dataset": self.dataset,
            "label": self.label,
            "scaling": "built in"
            if self.center is not None
            else (
                "each input table standardised with its own mean and standard deviation"
                if self.standardise_input
                else "none"
            ),
            "threshold": self.threshold,
            "missing_allowed": list(self.missing_allowed),
            **({"extra": self.extra} if self.extra else {}),
        }


def standardise(X: np.ndarray) -> np.ndarray:
    """Centre each column on its mean and divide by its standard deviation (constant columns: centred),
    as every facility does with its own data for ``breast_cancer`` and ``csv:`` sources. Missing values
    (NaN) are left out of the mean and spread and stay NaN."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] < 2:
        raise ExportError(
            "this model standardises its input table with the table's own mean and spread, "
            "so it needs at least 2 rows"
        )
    mu, sd = column_stats(X)
    return (X - mu) / sd


# ------------------------------------------------------------------------------------------- npz
def to_npz(m: ExportedModel) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "params": m.params,
        "meta": np.frombuffer(json.dumps(m.describe(), sort_keys=True).encode(), dtype=np.uint8),
    }
    if m.center is not None and m.scale is not None:
        arrays["center"], arrays["scale"] = m.center, m.scale
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def from_npz(data: bytes) -> ExportedModel:
    """Read a model written by :func:`to_npz`; refuses anything else or a file changed since."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: np.array(z[k]) for k in z.files}
        meta = json.loads(bytes(arrays["meta"].astype(np.uint8)).decode())
    except Exception:  # any parse failure means "not our file"
        raise ExportError("this is not a model file written by `hfl model export` (.npz)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError("this is not a model file written by `hfl model export` (.npz)")
    try:
        return ExportedModel(
            kind=str(meta["kind"]),
            n_features=int(meta["n_features"]),
            hidden=int(meta["hidden"]),
            params=arrays["params"],
            feature_names=tuple(str(n) for n in meta["feature_names"]),
            round=int(meta["round"]),
            block_hash=bytes.fromhex(meta["block_hash"]),
            model_hash=bytes.fromhex(meta["model_hash"]),
            dataset=str(meta["dataset"]),
            label=str(meta.get("label", "outcome")),
            center=arrays.get("center"),
            scale=arrays.get("scale"),
            standardise_input=meta.get("scaling", "").startswith("each input table"),
            threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)),
            extra=dict(meta.get("extra", {})),
            missing_allowed=tuple(str(n) for n in meta.get("missing_allowed", [])),
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"the model file is damaged ({e})") from None


# ------------------------------------------------------------------------------------------- onnx
def to_onnx(m: ExportedModel) -> bytes:
    """The model as an ONNX graph: ``features`` (n x columns, float64, NaN = missing) -> ``probability``
    (n,). The graph scales the columns (when the model has built-in scaling), then applies the
    missing-value rule: IsNaN marks the gaps, Where puts 0 in them, and the gaps of the columns in
    ``missing_allowed`` are appended as 0/1 inputs (Gather, Cast, Concat)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package: pip install 'onnx>=1.16' (or use --format npz)"
        ) from None
    d = m.n_features
    n_cols = len(m.feature_names)
    nodes: list[Any] = []
    inits: dict[str, np.ndarray] = {}
    x = "features"
    if m.center is not None and m.scale is not None:
        inits["center"], inits["scale"] = m.center, m.scale
        nodes += [helper.make_node("Sub", [x, "center"], ["centred"])]
        nodes += [helper.make_node("Div", ["centred", "scale"], ["scaled"])]
        x = "scaled"
    if m.missing_allowed:
        inits["zero"] = np.array(0.0)
        inits["may_be_missing"] = np.array(
            [m.feature_names.index(c) for c in m.missing_allowed], dtype=np.int64
        )
        nodes += [
            helper.make_node("IsNaN", [x], ["is_missing"]),
            helper.make_node("Where", ["is_missing", "zero", x], ["filled"]),
            helper.make_node("Gather", ["is_missing", "may_be_missing"], ["gaps"], axis=1),
            helper.make_node("Cast", ["gaps"], ["indicators"], to=TensorProto.DOUBLE),
            helper.make_node("Concat", ["filled", "indicators"], ["inputs"], axis=1),
        ]
        x = "inputs"
    p = m.params
    if m.kind == "logreg":
        inits["w"], inits["b"] = p[:-1].reshape(d, 1), p[-1:].copy()
        nodes += [helper.make_node("MatMul", [x, "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"])]
    else:
        W1, b1, w2, b2 = m.model()._unpack(p)
        inits |= {"W1T": W1.T.copy(), "b1": b1.copy(), "w2": w2.reshape(-1, 1).copy(), "b2": np.array([b2])}
        nodes += [
            helper.make_node("MatMul", [x, "W1T"], ["xw1"]),
            helper.make_node("Add", ["xw1", "b1"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["hidden"]),
            helper.make_node("MatMul", ["hidden", "w2"], ["hw2"]),
            helper.make_node("Add", ["hw2", "b2"], ["z"]),
        ]
    inits["flat"] = np.array([-1], dtype=np.int64)
    nodes += [
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"hfl_{m.kind}_round_{m.round}",
        [helper.make_tensor_value_info("features", TensorProto.DOUBLE, ["rows", n_cols])],
        [helper.make_tensor_value_info("probability", TensorProto.DOUBLE, ["rows"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hfl")
    model.ir_version = 8  # readable by onnxruntime 1.13 and later
    meta = m.describe()
    keys = ("feature_names", "missing_allowed", "round", "block_hash", "model_hash", "dataset", "scaling")
    for k in (*keys, "threshold"):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(meta[k])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# ------------------------------------------------------------------------------------- input tables
def read_patients(text: str, m: ExportedModel, source: str = "the table") -> np.ndarray:
    """Parse a CSV table of patients (a header row, then one row per patient) into the model's feature
    order, NaN for a missing value. A cell that is empty or says NA, N/A or NaN is a missing value, accepted
    in the columns of ``m.missing_allowed``. Refuses, naming the row and column: missing or extra columns,
    a missing value in any other column, values that are not numbers, infinite values. Rows are numbered
    as in a spreadsheet (the header is row 1)."""
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    if not rows or not any(c.strip() for c in rows[0]):
        raise ExportError(f"{source} is empty; it needs a header row with the column names")
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise ExportError(f"{source} has the column {repeated[0]!r} more than once")
    missing = [n for n in m.feature_names if n not in header]
    if missing:
        raise ExportError(
            f"{source} is missing the column{'s' if len(missing) > 1 else ''} {_names(missing)} "
            "that the model needs"
        )
    extra = [h for h in header if h not in m.feature_names]
    if extra:
        raise ExportError(
            f"{source} has the column{'s' if len(extra) > 1 else ''} {_names(extra)} that the model does "
            f"not use; remove {'them' if len(extra) > 1 else 'it'} (the model reads exactly: "
            f"{', '.join(m.feature_names)})"
        )
    order = [header.index(n) for n in m.feature_names]
    data = rows[1:]
    while data and not any(c.strip() for c in data[-1]):
        data.pop()  # trailing blank lines
    if not data:
        raise ExportError(f"{source} has a header row but no patients")
    X = np.empty((len(data), len(m.feature_names)))
    may_be_missing = [n in m.missing_allowed for n in m.feature_names]
    for i, row in enumerate(data):
        line = i + 2
        if len(row) != len(header):
            raise ExportError(
                f"row {line} of {source} has {len(row)} values but the header has {len(header)} columns"
            )
        for j, k in enumerate(order):
            X[i, j] = _number(row[k], line, m.feature_names[j], source, may_be_missing[j])
    return X


def _names(names: Sequence[str]) -> str:
    shown = [repr(n[:40]) for n in names[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(shown) + more


def _number(cell: str, line: int, column: str, source: str, may_be_missing: bool) -> float:
    text = cell.strip()
    if is_missing_marker(text) and (may_be_missing or text.lower() != "nan"):
        if may_be_missing:
            return math.nan
        shown = f" ({text[:10]!r})" if text else ""
        raise ExportError(
            f"row {line} of {source} has no value{shown} in column {column!r}, which may not be empty"
        )
    try:
        value = float(text)
    except ValueError:
        raise ExportError(
            f"row {line} of {source}, column {column!r}: {text[:40]!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise ExportError(
            f"row {line} of {source}, column {column!r}: {text[:40]!r} is not a usable number"
            + (" (this column may not be missing)" if math.isnan(value) else "")
        )
    return value


def predictions_csv(m: ExportedModel, X: np.ndarray) -> tuple[str, np.ndarray]:
    """The predictions table (row, probability, label) for a raw feature table, and the probabilities.
    ``row`` is the patient's row in the input table (the header is row 1)."""
    proba = m.predict_proba(X)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["row", f"probability_{m.label}", f"predicted_{m.label}"])
    for i, p in enumerate(proba):
        w.writerow([i + 2, f"{p:.6f}", int(p >= m.threshold)])
    return out.getvalue(), proba
