"""`hfl model export` and `hfl predict` on a real demo run: the ledger is checked first, the files are
usable, the model card tells the truth about the run, and a tampered ledger exports nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hfl.cli import main
from hfl.learning.data import SYNTHETIC_COLUMNS, synthetic_table
from hfl.learning.export import from_npz
from hfl.ledger import LedgerStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    cmd = [sys.executable, "-m", "hfl.cli", "demo", "--facilities", "4", "--rounds", "2", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def patients_csv(path: Path, n: int = 40) -> np.ndarray:
    """Simulated emergency patients; a value not recorded is an empty cell (NaN in the returned table)."""
    raw = synthetic_table(n, "emergency", np.random.default_rng(11)).X
    assert np.isnan(raw).any()
    lines = [",".join(SYNTHETIC_COLUMNS)] + [
        ",".join("" if np.isnan(v) else f"{v:.6f}" for v in r) for r in raw
    ]
    path.write_text("\n".join(lines) + "\n")
    return np.array([[float(f"{v:.6f}") for v in row] for row in raw])


def test_export_predict_and_the_model_card(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "export", str(run)]) == 0
    model_file = run / "export" / "model-round-2.npz"
    model = from_npz(model_file.read_bytes())
    with LedgerStore(run / "state" / "leader" / "ledger.db") as store:
        head = store.block(2)
        np.testing.assert_array_equal(model.params, store.model(head.header.model_hash))
    card = json.loads(model_file.with_suffix(".card.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert card["provenance"]["block_hash"] == head.hash.hex()
    assert card["training"]["rounds"] == 2
    assert card["training"]["specialties"] == {"hospital": 1, "clinic": 1, "research": 1, "emergency": 1}
    assert card["evaluation"]["accuracy"] == summary["rounds"][-1]["accuracy"]
    assert card["privacy"] == {"differential_privacy": False}
    assert "## Limitations" in model_file.with_suffix(".card.md").read_text()

    example = run / "export" / "example-patients.csv"  # written for synthetic data, to try the model on
    assert (
        main(["predict", "--model", str(model_file), "--csv", str(example), "--out", str(tmp_path / "e.csv")])
        == 0
    )
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 21

    X = patients_csv(tmp_path / "patients.csv")
    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_file),
                "--csv",
                str(tmp_path / "patients.csv"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = out.read_text().splitlines()[1:]
    got = np.array([float(r.split(",")[1]) for r in rows])
    np.testing.assert_allclose(got, model.predict_proba(X), atol=1e-6)

    ort = pytest.importorskip("onnxruntime")
    assert (
        main(
            [
                "model",
                "export",
                str(run),
                "--format",
                "onnx",
                "--round",
                "1",
                "--out",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    (p,) = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"features": X}
    )
    with LedgerStore(run / "state" / "leader" / "ledger.db") as store:
        first = from_npz(model_file.read_bytes())  # same layout; the round-1 parameters from the ledger:
        params = store.model(store.block(1).header.model_hash)
    np.testing.assert_allclose(p, first.model().predict_proba(params, first.prepare(X)), rtol=0, atol=1e-6)

    capsys.readouterr()
    assert main(["model", "export", str(run), "--round", "9"]) == 2
    assert "--round must be between 1 and 2" in capsys.readouterr().err


def test_a_tampered_ledger_exports_nothing(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export", "logs"))
    db = copy / "state" / "leader" / "ledger.db"
    with sqlite3.connect(db) as conn:
        header = json.loads(conn.execute("SELECT header FROM blocks WHERE round = 1").fetchone()[0])
        header["rule"] = "mean"
        changed = conn.execute(
            "UPDATE blocks SET header = ? WHERE round = 1", (json.dumps(header, sort_keys=True),)
        ).rowcount
    assert changed == 1
    capsys.readouterr()
    assert main(["model", "export", str(copy)]) == 2
    assert "the ledger does not verify, so no model is exported" in capsys.readouterr().err
    assert not (copy / "export").exists()


def test_predict_refuses_what_it_cannot_use(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patients_csv(tmp_path / "p.csv", 3)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    cases = [
        (["--model", str(tmp_path / "none.npz"), "--csv", str(tmp_path / "p.csv")], "does not exist"),
        (["--model", str(tmp_path / "m.onnx"), "--csv", str(tmp_path / "p.csv")], "needs the .npz file"),
        (["--model", str(tmp_path / "junk.npz"), "--csv", str(tmp_path / "p.csv")], "not a model file"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["predict", *argv, "--out", str(tmp_path / "o.csv")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_the_federation_reports_clinical_metrics_that_scikit_learn_agrees_with(run: Path) -> None:
    """The last round's pooled AUC (from summed score histograms) against scikit-learn on the pooled test
    predictions of the same model; the counts against the pooled confusion matrix, exactly."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from hfl.domain import SPECIALTIES
    from hfl.learning.data import load_facility_data

    summary = json.loads((run / "summary.json").read_text())
    clinical = summary["rounds"][-1]["clinical"]
    with LedgerStore(run / "state" / "leader" / "ledger.db") as store:
        params = store.model(store.head().header.model_hash)  # type: ignore[union-attr]
    model = from_npz((run / "export" / "model-round-2.npz").read_bytes()).model()
    tests = [
        load_facility_data(
            "synthetic", specialty=SPECIALTIES[i % 4], shard=(i, 4), seed=0, stream=f"facility-{i + 1:02d}"
        ).test
        for i in range(4)
    ]
    y = np.concatenate([t.y for t in tests])
    proba = np.concatenate([model.predict_proba(params, t.X) for t in tests])
    assert abs(clinical["auc"] - roc_auc_score(y, proba)) < 0.01
    tn, fp, fn, tp = confusion_matrix(y, (proba >= 0.5).astype(int), labels=[0, 1]).ravel()
    assert clinical["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-6)
    assert clinical["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-6)
    assert clinical["baseline_accuracy"] == pytest.approx(max(y.mean(), 1 - y.mean()), abs=1e-6)
    assert summary["final_accuracy"] == pytest.approx(float(np.mean((proba >= 0.5) == y)), abs=1e-6)
