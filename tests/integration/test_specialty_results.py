"""Results per specialty from a real demo run, through masked bucket sums (the default) and plain sums:
each equals what the final model scores on the test sets of that specialty's facilities, computed here
directly; the fogs' logs show evaluation went through secure aggregation, never one facility's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hfl.domain import SPECIALTIES
from hfl.learning.data import load_facility_data
from hfl.learning.metrics import histogram_auc, score_bins
from hfl.learning.models import make_model
from hfl.ledger import LedgerStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
N = 12  # three facilities of each specialty


@pytest.mark.parametrize("secagg", [True, False], ids=["masked", "plain"])
def test_results_per_specialty_equal_the_model_on_each_specialtys_test_sets(
    tmp_path: Path, secagg: bool
) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "hfl.cli",
        "demo",
        "--facilities",
        str(N),
        "--rounds",
        "2",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        cmd + ([] if secagg else ["--no-secagg"]), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Results per specialty" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    last = summary["rounds"][-1]
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        params = store.model(store.head().header.model_hash)  # type: ignore[union-attr]
    model = make_model("logreg", params.size - 1)
    by_specialty = {r["specialty"]: r for r in last["specialties"]}
    assert sorted(by_specialty) == sorted(SPECIALTIES)
    for specialty, row in by_specialty.items():
        tests = [
            load_facility_data(
                "synthetic", specialty=specialty, shard=(i, N), seed=0, stream=f"facility-{i + 1:02d}"
            ).test
            for i in range(N)
            if SPECIALTIES[i % 4] == specialty
        ]
        y = np.concatenate([t.y for t in tests]).astype(int)
        proba = np.concatenate([model.predict_proba(params, t.X) for t in tests])
        predicted = (proba >= 0.5).astype(int)
        assert row["facilities"] == 3 and "not_reported" not in row
        assert row["accuracy"] == pytest.approx(float(np.mean(predicted == y)), abs=1e-6)
        bins = score_bins(proba, predicted)
        auc = histogram_auc(
            np.bincount(bins[y == 1], minlength=200), np.bincount(bins[y == 0], minlength=200)
        )
        assert row["clinical"]["auc"] == pytest.approx(auc, abs=1e-6)
        tp = int(np.sum((predicted == 1) & (y == 1)))
        assert row["clinical"]["sensitivity"] == pytest.approx(tp / int(np.sum(y == 1)), abs=1e-6)
    fog_logs = "".join(p.read_text() for p in (out / "logs").glob("fog-*.log"))
    if secagg:  # evaluation buckets (e0, e1, ...) ran the masked protocol; no plain evaluation call
        assert "bucket e0: secure aggregation of" in fog_logs
        assert "evaluation at" not in fog_logs
