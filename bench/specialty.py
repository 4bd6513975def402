"""AUC and accuracy per specialty (issue 15): synthetic and breast_cancer, with and without DP at ε = 1,
against the centralised reference.

For each data set and setting it runs a real `hfl demo` (separate processes, mutual TLS, secure
aggregation; 12 facilities, 3 of each specialty, a fixed seed), exports the final model from the run
folder with hfl's own export (which verifies the ledger first), and evaluates it on every facility's
held-out test set, loaded exactly as the facility loads it (hfl.learning.data.load_facility_data with the
same seed and shard). Results are grouped by specialty (only groups of at least 3 facilities are
reported, as the federation itself does) and pooled. The centralised reference is the same model trained
on the pooled training data of the same facilities with the same budget as
hfl.learning.reference.centralized_reference (its pooled accuracy is recomputed here and checked against that
function), evaluated on the same test sets.

    .venv/bin/python bench/specialty.py            # -> bench/results/specialty.json and NOTES-results.md
    .venv/bin/python bench/specialty.py --datasets synthetic --rounds 3 --facilities 4 --out /tmp/s.json \
        --notes /tmp/notes.md                                # a quick try

AUC is computed two ways: from the facilities' summed score histograms (hfl.learning.metrics, what the
federation reports) and, when scikit-learn is installed, exactly with roc_auc_score on the pooled
predictions. Accuracy is at the 0.5 threshold. The DP runs' ε is what the authority recorded for the
worst-off facility (dp_accounting), re-computed here from the leader's plan with the same accountant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.cli import main as hfl_main  # noqa: E402
from hfl.domain import SPECIALTIES, Metrics  # noqa: E402
from hfl.learning.data import Dataset, FacilityData, load_facility_data  # noqa: E402
from hfl.learning.export import from_npz  # noqa: E402
from hfl.learning.metrics import clinical_metrics, evaluate_counts  # noqa: E402
from hfl.learning.models import Model, make_model  # noqa: E402
from hfl.learning.reference import centralized_reference  # noqa: E402
from hfl.learning.train import DEFAULT_TRAIN, TrainConfig, train_local  # noqa: E402

MIN_GROUP = 3  # facilities a specialty needs before its results are reported
SETTINGS = {"no_dp": [], "dp_eps1": ["--dp-epsilon", "1"]}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return [round(x, 2) for x in os.getloadavg()]


def run_demo(dataset: str, setting: str, args: argparse.Namespace, folder: Path) -> tuple[Path, float]:
    run = folder / f"{dataset}-{setting}"
    cmd = [
        sys.executable, "-m", "hfl.cli", "demo", "--dataset", dataset, "--facilities", str(args.facilities),
        "--rounds", str(args.rounds), "--seed", str(args.seed), "--out", str(run), *SETTINGS[setting],
    ]  # fmt: skip
    print(f"== {' '.join(cmd[3:])}", flush=True)
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"hfl demo failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return run, wall


def export_final(run: Path) -> tuple[Any, Path]:
    """The last round's model, through `hfl model export` (which checks the whole ledger first)."""
    out = run / "export" / "final.npz"
    if hfl_main(["model", "export", str(run), "--round", "latest", "--out", str(out)]) != 0:
        raise SystemExit(f"hfl model export refused the run in {run}")
    return from_npz(out.read_bytes()), out


def facilities_of(summary: dict[str, Any], dataset: str, seed: int) -> list[tuple[str, str, FacilityData]]:
    """(node id, specialty, data) of every facility of the run, loaded as the facility itself loads it."""
    rows = summary["facilities"]
    n = len(rows)
    return [
        (
            f["node_id"],
            f["specialty"],
            load_facility_data(dataset, specialty=f["specialty"], shard=(i, n), seed=seed),
        )
        for i, f in enumerate(rows)
    ]


def centralised_params(
    kind: str, hidden: int, trains: Sequence[Dataset], rounds: int, seed: int
) -> tuple[Model, np.ndarray]:
    """One model trained on all training data pooled, with the federation's budget (rounds x epochs),
    as hfl.learning.reference.centralized_reference trains it."""
    pooled = Dataset.concat(list(trains))
    model = make_model(kind, pooled.d, hidden)
    budget = TrainConfig(
        lr=DEFAULT_TRAIN.lr, epochs=DEFAULT_TRAIN.epochs * rounds, batch_size=DEFAULT_TRAIN.batch_size
    )
    params = train_local(model, model.init_params(0), pooled, budget, np.random.default_rng([seed, 99]))
    return model, params


def scores(model: Model, params: np.ndarray, tests: Sequence[Dataset]) -> dict[str, Any]:
    """Accuracy and AUC over these test sets, from the summed counts facilities report (and exactly, with
    scikit-learn, when it is installed)."""
    total = Metrics()
    for t in tests:
        total = total + evaluate_counts(model, params, t)
    c = clinical_metrics(total)
    out: dict[str, Any] = {
        "patients": total.total,
        "accuracy": round(total.accuracy, 4),
        "auc": None if c is None or math.isnan(c.auc) else round(c.auc, 4),
        "sensitivity": None if c is None or math.isnan(c.sensitivity) else round(c.sensitivity, 4),
        "specificity": None if c is None or math.isnan(c.specificity) else round(c.specificity, 4),
        "prevalence": None if c is None else round(c.prevalence, 4),
    }
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return out
    y = np.concatenate([t.y for t in tests])
    p = np.concatenate([model.predict_proba(params, t.X) for t in tests])
    out["auc_sklearn"] = round(float(roc_auc_score(y, p)), 4) if 0 < y.sum() < len(y) else None
    return out


def by_specialty(
    model: Model, params: np.ndarray, facs: list[tuple[str, str, FacilityData]]
) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for s in SPECIALTIES:
        members = [fd.test for _, spec, fd in facs if spec == s]
        if len(members) < MIN_GROUP:
            groups[s] = {"facilities": len(members), "not_reported": f"fewer than {MIN_GROUP} facilities"}
            continue
        groups[s] = {"facilities": len(members), **scores(model, params, members)}
    groups["pooled"] = {"facilities": len(facs), **scores(model, params, [fd.test for _, _, fd in facs])}
    return groups


def achieved_epsilon(summary: dict[str, Any]) -> dict[str, Any] | None:
    """ε spent by the worst-off facility as the authority recorded it, and re-computed from the plan."""
    dp = summary.get("dp")
    if not isinstance(dp, dict):
        return None
    from hfl.privacy.federation import DPPlan

    plan = DPPlan.from_dict(dp)
    committed = summary["committed_rounds"]
    spent = [r["epsilon"] for r in summary["rounds"] if r.get("committed") and r.get("epsilon") is not None]
    # Every attempt trains and spends, including rounds the validators refused and were trained again.
    trainings = sum(1 for r in summary["rounds"] if r.get("participants"))
    recomputed = plan.epsilon_after_rounds(trainings) + plan.release_epsilon
    return {
        "trainings": trainings,
        "committed_rounds": committed,
        "planned_trainings_incl_spare": plan.rounds,
        "epsilon_recorded_worst_facility": max(spent) if spent else None,
        "epsilon_recomputed_from_plan": round(recomputed, 6),
        "delta": plan.delta,
        "budget": plan.epsilon_budget,
        "mechanism": plan.mechanism,
        "accountant": plan.accountant,
        "noise_multiplier": round(plan.noise_multiplier, 4),
        "sampling_rate": plan.sampling_rate,
        "steps_per_round": plan.steps_per_round,
        "within_budget": bool(spent) and max(spent) <= 1.0 + 1e-9 and recomputed <= 1.0 + 1e-9,
    }


def one_run(dataset: str, setting: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    load_before = loadavg()
    run, wall = run_demo(dataset, setting, args, folder)
    summary = json.loads((run / "summary.json").read_text())
    exported, model_file = export_final(run)
    model, params = exported.model(), exported.params
    facs = facilities_of(summary, dataset, args.seed)
    d = facs[0][2].train.d
    if d != exported.n_features:
        raise SystemExit(f"the data has {d} columns but the exported model {exported.n_features}")
    result = by_specialty(model, params, facs)
    # What the federation itself reported per specialty (masked evaluation sums): must equal the direct
    # evaluation above, which only a benchmark with every site's test data can do.
    committed = [r for r in summary["rounds"] if r.get("committed")]
    reported = {r["specialty"]: r for r in (committed[-1].get("specialties") or [])} if committed else {}
    for s_name, row in result.items():
        fed = reported.get(s_name)
        if fed is None or "accuracy" not in row:
            continue
        row["federation_reported_accuracy"] = fed.get("accuracy")
        row["federation_reported_auc"] = (fed.get("clinical") or {}).get("auc")
        row["federation_matches"] = (
            fed.get("accuracy") is not None
            and abs(fed["accuracy"] - row["accuracy"]) < 1e-4
            and (row["auc"] is None or abs((fed.get("clinical") or {}).get("auc", -1) - row["auc"]) < 1e-4)
        )
    accs = [r["accuracy"] for r in committed]
    return {
        "dataset": dataset,
        "setting": setting,
        "features": d,
        "model": exported.kind,
        "round": exported.round,
        "block_hash": exported.block_hash.hex(),
        "by_specialty": result,
        "federation_reported_final_accuracy": summary.get("final_accuracy"),
        "pooled_accuracy_matches_federation": summary.get("final_accuracy") is not None
        and abs(result["pooled"]["accuracy"] - summary["final_accuracy"]) < 1e-4,
        "accuracy_last_rounds": accs[-5:],
        "epsilon": achieved_epsilon(summary),
        "demo_wall_time_s": round(wall, 1),
        "load_avg_before": load_before,
        "load_avg_after": loadavg(),
        "run_folder": str(run),
        "model_file": str(model_file),
    }


def reference(
    dataset: str, args: argparse.Namespace, facs: list[tuple[str, str, FacilityData]]
) -> dict[str, Any]:
    model, params = centralised_params("logreg", 16, [fd.train for _, _, fd in facs], args.rounds, args.seed)
    result = by_specialty(model, params, facs)
    n = len(facs)
    check = centralized_reference(
        dataset,
        facilities=[(spec, (i, n), None) for i, (_, spec, _) in enumerate(facs)],
        seed=args.seed,
        model_kind="logreg",
        rounds=args.rounds,
    )
    return {"by_specialty": result, "centralized_reference_pooled_accuracy": round(check, 4)}


def notes(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        "# Results per specialty (issue 15)",
        "",
        f"`bench/specialty.py`: real `hfl demo` runs (mutual TLS, secure aggregation, defaults otherwise), "
        f"{c['facilities']} facilities ({c['facilities'] // 4} per specialty), {c['rounds']} rounds, seed "
        f"{c['seed']}, logistic regression. The final model is exported from each run folder with "
        "`hfl model export` (ledger verified) and evaluated on the facilities' own held-out test patients. "
        "*Centralised*: the same model trained on all training data pooled (the federation's budget), on "
        "the same test patients. AUC from the summed score histograms (what the federation reports); "
        "scikit-learn's exact AUC is in the JSON (`auc_sklearn`).",
        "",
        "| data | specialty | n test | setting | AUC | accuracy | centralised AUC | centralised accuracy "
        "| facilities | ε achieved |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, block in results["datasets"].items():
        ref = block["centralised"]["by_specialty"]
        for s in [*SPECIALTIES, "pooled"]:
            for setting, r in block["runs"].items():
                g = r["by_specialty"][s]
                if "not_reported" in g:
                    lines.append(
                        f"| {dataset} | {s} | - | {setting} | not reported ({g['not_reported']}) |||||"
                    )
                    continue
                eps = r["epsilon"]["epsilon_recorded_worst_facility"] if r["epsilon"] else None
                lines.append(
                    f"| {dataset} | {s} | {g['patients']} | {setting} | {g['auc']} | {g['accuracy']} | "
                    f"{ref[s].get('auc')} | {ref[s].get('accuracy')} | {g['facilities']} | "
                    f"{'-' if eps is None else f'{eps:.3f}'} |"
                )
    checks = [
        g["federation_matches"]
        for block in results["datasets"].values()
        for r in block["runs"].values()
        for g in r["by_specialty"].values()
        if "federation_matches" in g
    ]
    lines += [
        "",
        f"The federation's own results per specialty (from masked evaluation sums, in "
        f"`summary.json`) equal this direct evaluation in {sum(checks)} of {len(checks)} rows "
        "(accuracy and histogram AUC within 1e-4).",
    ]
    lines += ["", "Reading it:", *_observations(results)]
    lines += [
        "",
        f"Wall time {results['wall_time_s']} s on {results['machine']} (load average before/after: "
        f"{results['load_avg_before']} / {results['load_avg_after']}; the machine is shared, 2 cores).",
        "",
    ]
    return "\n".join(lines)


def _observations(results: dict[str, Any]) -> list[str]:
    """Plain facts computed from the results, for the notes."""
    out = []
    for dataset, block in results["datasets"].items():
        ref = block["centralised"]["by_specialty"]
        for setting, r in block["runs"].items():
            gaps = [
                r["by_specialty"][s]["auc"] - ref[s]["auc"]
                for s in SPECIALTIES
                if "auc" in r["by_specialty"][s] and r["by_specialty"][s]["auc"] is not None
            ]
            hist_vs_exact = [
                abs(g["auc"] - g["auc_sklearn"])
                for g in r["by_specialty"].values()
                if g.get("auc") is not None and g.get("auc_sklearn") is not None
            ]
            eps = r["epsilon"]
            out.append(
                f"- {dataset}, {setting}: AUC minus centralised AUC per specialty from {min(gaps):+.4f} to "
                f"{max(gaps):+.4f}; histogram AUC within {max(hist_vs_exact):.4f} of scikit-learn's exact "
                "AUC; "
                f"pooled accuracy equals the federation's reported final accuracy: "
                f"{r['pooled_accuracy_matches_federation']}; accuracy over the last rounds "
                f"{r['accuracy_last_rounds']}"
                + (
                    f"; ε = {eps['epsilon_recorded_worst_facility']} recorded for the worst-off facility "
                    f"after {eps['trainings']} trainings for {eps['committed_rounds']} committed rounds "
                    f"(recomputed from the plan: {eps['epsilon_recomputed_from_plan']}, noise multiplier "
                    f"{eps['noise_multiplier']}, δ = {eps['delta']}, {eps['accountant'].upper()}), within "
                    f"the budget of 1: {eps['within_budget']}"
                    if eps
                    else ""
                )
                + "."
            )
        central = block["centralised"]
        out.append(
            f"- {dataset}, centralised: pooled accuracy {central['by_specialty']['pooled']['accuracy']} "
            "(hfl.learning.reference.centralized_reference gives "
            f"{central['centralized_reference_pooled_accuracy']})."
        )
    out.append(
        "- breast_cancer has no specialties of its own: each facility gets a random stratified shard and a "
        "specialty label, and each specialty has only about 30 test patients, so differences between its "
        "rows are noise (one patient is 0.033 of accuracy). The synthetic data's specialties differ in case "
        "mix, so there the rows differ for real (hospital and emergency are harder than clinic)."
    )
    out.append(
        "- The budget keeps spare trainings for rounds the validators refuse and train again "
        "(HFL_DP_SPARE_ROUNDS, 10 % and at least 2: 22 for 20 rounds); a run with a refused round spends "
        "one training more than the committed rounds, still within the budget."
    )
    out.append(
        "- The histogram AUC can fall below scikit-learn's exact AUC when the model's probabilities are "
        "saturated: patients with and without the outcome then share the top bin (0.995 to 1) of the 200 "
        "and count as ties (half). The exact AUC is `auc_sklearn` in the JSON."
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="synthetic,breast_cancer")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--facilities", type=int, default=12)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one demo may take")
    p.add_argument("--runs", help="folder for the run folders (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "specialty.json"))
    p.add_argument("--notes", default=str(ROOT / "bench" / "results" / "NOTES-results.md"))
    p.add_argument("--notes-only", action="store_true", help="only rewrite the notes from the --out file")
    args = p.parse_args(argv)
    if args.notes_only:
        Path(args.notes).write_text(notes(json.loads(Path(args.out).read_text())))
        return 0
    started = time.monotonic()
    load_before = loadavg()
    results: dict[str, Any] = {
        "config": {k: getattr(args, k) for k in ("facilities", "rounds", "seed", "datasets", "settings")},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="hfl-specialty-") as tmp:
        folder = Path(args.runs) if args.runs else Path(tmp)
        for dataset in args.datasets.split(","):
            runs = {s: one_run(dataset, s, args, folder) for s in args.settings.split(",")}
            first = json.loads((Path(next(iter(runs.values()))["run_folder"]) / "summary.json").read_text())
            facs = facilities_of(first, dataset, args.seed)
            results["datasets"][dataset] = {"runs": runs, "centralised": reference(dataset, args, facs)}
            print(json.dumps({s: r["by_specialty"]["pooled"] for s, r in runs.items()}), flush=True)
    results |= {
        "wall_time_s": round(time.monotonic() - started, 1),
        "load_avg_before": load_before,
        "load_avg_after": loadavg(),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.notes).write_text(notes(results))
    print(f"Wrote {args.out} and {args.notes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
