"""`hfl model export` and `hfl predict`: take the trained model out of the ledger and use it.

Export checks the whole ledger first (signatures, chain, recomputed aggregates) and refuses a model
from a ledger that does not verify. The model file gets a model card beside it (Markdown and JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hfl.errors import ConfigError

FORMATS = ("npz", "onnx")


def add_arguments(sub: Any) -> None:
    mo = sub.add_parser("model", help="take the trained model out of the ledger")
    mo_sub = mo.add_subparsers(dest="model_command", required=True, parser_class=type(mo))
    ex = mo_sub.add_parser(
        "export", help="check the ledger, then write the model of a round (with its model card)"
    )
    ex.add_argument("path", nargs="?", help="a demo run folder or a ledger.db file (default: runs/latest)")
    ex.add_argument(
        "--leader",
        help="take the ledger from this running leader (HOST:PORT) instead of a file; needs the operator "
        "certificate: the run folder's (PATH or --run) or --cert-dir",
    )
    ex.add_argument("--run", help="the demo run folder (the same as PATH)")
    ex.add_argument(
        "--cert-dir", help="operator certificate folder (key.pem, cert.pem, ca.pem), with --leader"
    )
    ex.add_argument("--round", default="latest", help="a round number, or 'latest' (default)")
    ex.add_argument("--format", choices=FORMATS, default="npz", help="npz (for hfl predict) or onnx")
    ex.add_argument("--out", help="the model file to write (default: <run>/export/model-round-N.<format>)")
    ex.add_argument("--dataset", help="the data set it was trained on, when PATH is a bare ledger.db")
    ex.add_argument("--label", help="the outcome column, for csv: data sets")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="predict the outcome for a table of patients with an exported model")
    pr.add_argument("--model", required=True, help="a .npz file written by `hfl model export`")
    pr.add_argument("--csv", required=True, help="patients, one per row, with the model's columns")
    pr.add_argument("--out", required=True, help="where to write the predictions (CSV)")
    pr.set_defaults(func=cmd_predict)


def _summary(path: Path) -> dict[str, Any] | None:
    folder = path if path.is_dir() else None
    if folder is None:
        return None
    f = folder / "summary.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{f} is not valid JSON") from None
    return data if isinstance(data, dict) else None


def _feature_layout(dataset: str, label: str | None, n_features: int) -> dict[str, Any]:
    """Column names and scaling for a data source, as the facilities prepared it."""

    from hfl.learning import data

    if dataset == "synthetic":
        return {
            "feature_names": data.SYNTHETIC_COLUMNS,
            "missing_allowed": data.SYNTHETIC_MISSABLE,
            "center": data.SYNTHETIC_CENTER,
            "scale": data.SYNTHETIC_SCALE,
            "label": "outcome",
        }
    if dataset == "synthetic_hard":  # simulated on a standard scale, no missing values
        import numpy as np

        d = len(data.HARD_FEATURE_NAMES)
        return {
            "feature_names": data.HARD_FEATURE_NAMES,
            "center": np.zeros(d),
            "scale": np.ones(d),
            "label": "outcome",
        }
    if dataset == "breast_cancer":
        names = data.load_validation_data("breast_cancer")
        cols = names.feature_names if names is not None else ()
        return {"feature_names": tuple(cols), "standardise_input": True, "label": "malignant"}
    if dataset.startswith("csv:"):
        if not label:
            raise ConfigError("give --label, the outcome column of the csv data set")
        path = dataset[4:]
        first = data.csv_dir_files(path)[0] if Path(path).is_dir() else path
        header = data.read_labelled_csv(first, label).columns
        # every csv column may be missing (one indicator each); a model of 1 input per column predates that
        missable = () if n_features == len(header) else header
        return {
            "feature_names": header,
            "missing_allowed": missable,
            "standardise_input": True,
            "label": label,
        }
    raise ConfigError(
        f"unknown data set {dataset!r}: give --dataset {data.UNKNOWN_SOURCE_HINT}"
        if dataset
        else f"this ledger has {n_features} inputs; give --dataset ({data.UNKNOWN_SOURCE_HINT})"
    )


def _run_folder(args: argparse.Namespace) -> str | None:
    """The run folder (or ledger.db) named by PATH or --run; both may be given only if they agree."""
    if args.path and args.run and Path(args.path) != Path(args.run):
        raise ConfigError(f"give the run folder once: {args.path} or --run {args.run}, not both")
    return args.path or args.run


def _pick_round(value: str, last: int) -> int:
    if value == "latest":
        return last
    try:
        r = int(value)
    except ValueError:
        raise ConfigError(f"--round must be a number or 'latest', got {value!r}") from None
    if not 1 <= r <= last:
        raise ConfigError(f"--round must be between 1 and {last} (the ledger's last round)")
    return r


def verified_model(
    store: Any, round_: str, dataset: str, label: str | None, where: str
) -> tuple[Any, list[Any]]:
    """Verify the whole ledger in ``store`` (a run folder's, or a copy fetched from a live leader), then
    return the model of ``round_`` ('latest' or a number) as an ExportedModel with the blocks up to it."""
    from hfl.learning.export import ExportedModel
    from hfl.ledger import LedgerError
    from hfl.round.audit import verify_ledger

    total = len(store)
    if total < 2:
        raise ConfigError(f"{where} holds no trained model yet (only the starting block)")
    print(f"Checking the ledger ({total} blocks) before exporting ...", flush=True)
    try:
        verify_ledger(store)
    except LedgerError as e:
        raise ConfigError(f"the ledger does not verify, so no model is exported from it: {e}") from None
    r = _pick_round(round_, total - 1)
    blocks = [store.block(i) for i in range(r + 1)]
    header = blocks[-1].header
    params = store.model(header.model_hash)
    spec = blocks[0].header.extra.get("model") or {}
    layout = _feature_layout(dataset, label, int(spec.get("n_features", params.size)))
    exported = ExportedModel(
        kind=str(spec.get("kind", "logreg")),
        n_features=int(spec.get("n_features", 0)),
        hidden=int(spec.get("hidden", 0)) if spec.get("kind") == "mlp" else 0,
        params=params,
        round=r,
        block_hash=blocks[-1].hash,
        model_hash=header.model_hash,
        dataset=dataset,
        **layout,
    )
    return exported, blocks


def cmd_export(args: argparse.Namespace) -> int:
    from hfl.card import card_markdown, model_card
    from hfl.cli import ledger_path
    from hfl.learning.export import to_npz, to_onnx
    from hfl.ledger import LedgerError, LedgerStore

    run = _run_folder(args)
    if args.leader:  # a live leader: its whole chain is fetched, then checked here like a run folder's
        from hfl.status import fetch_ledger

        source = Path(run or "runs/latest")  # for the operator certificate, summary.json and the output
        print(f"Fetching the ledger from the leader at {args.leader} ...", flush=True)
        try:
            store = fetch_ledger(args.leader, str(source), args.cert_dir)
        except LedgerError as e:
            raise ConfigError(f"the leader at {args.leader} sent a ledger that cannot be used: {e}") from None
        where = f"the ledger of the leader at {args.leader}"
        default_dir = source if source.is_dir() else Path(".")
    else:
        source = Path(run or "runs/latest")
        path = ledger_path(str(source))
        store = LedgerStore(path)
        where = str(path)
        default_dir = source if source.is_dir() else path.parent
    summary = _summary(source)
    config = (summary or {}).get("config") or {}
    dataset = args.dataset or config.get("dataset") or ""
    label = args.label or config.get("label")
    with store:
        exported, blocks = verified_model(store, args.round, dataset, label, where)
    r = exported.round
    out = Path(args.out) if args.out else default_dir / "export" / f"model-round-{r}.{args.format}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(to_npz(exported) if args.format == "npz" else to_onnx(exported))
    card = model_card(exported, blocks, summary)
    out.with_suffix(".card.json").write_text(json.dumps(card, indent=2))
    out.with_suffix(".card.md").write_text(card_markdown(card))
    print(f"Wrote the model of round {r} to {out}")
    print(f"Model card: {out.with_suffix('.card.md')} (and .card.json)")
    patients = "PATIENTS.csv"
    if dataset == "synthetic":  # a few simulated patients in the model's columns, to try it on
        example = out.parent / "example-patients.csv"
        example.write_text(_example_patients(exported.feature_names))
        patients = str(example)
    if args.format == "npz":
        print(f"Use it: hfl predict --model {out} --csv {patients} --out predictions.csv")
    return 0


def _example_patients(names: tuple[str, ...], n: int = 5) -> str:
    """``n`` simulated patients per specialty; a value the site did not record is an empty cell."""
    import numpy as np

    from hfl.learning.data import SPECIALTIES, synthetic_table

    rows = np.vstack([synthetic_table(n, s, np.random.default_rng(i)).X for i, s in enumerate(SPECIALTIES)])
    cells = (",".join("" if np.isnan(v) else f"{v:.4g}" for v in row) for row in rows)
    return "\n".join([",".join(names), *cells]) + "\n"


def cmd_predict(args: argparse.Namespace) -> int:
    from hfl.learning.export import ExportError, from_npz, predictions_csv, read_patients

    model_file, table = Path(args.model), Path(args.csv)
    for f, what in ((model_file, "model file"), (table, "patient table")):
        if not f.is_file():
            raise ConfigError(f"the {what} {f} does not exist")
    if model_file.suffix == ".onnx":
        raise ConfigError(
            "predict needs the .npz file that hfl model export writes; an .onnx file is for other tools, "
            "such as onnxruntime"
        )
    try:
        model = from_npz(model_file.read_bytes())
        text = table.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{table} is not a text (CSV) file") from None
    except ExportError as e:
        raise ConfigError(f"{model_file}: {e}") from None
    try:
        X = read_patients(text, model, source=table.name)
        csv_text, proba = predictions_csv(model, X)
    except ExportError as e:
        raise ConfigError(str(e)) from None
    Path(args.out).write_text(csv_text)
    positive = int((proba >= model.threshold).sum())
    print(
        f"Predicted {len(proba)} patients with the model of round {model.round}: {positive} above the "
        f"threshold {model.threshold:g}. Written to {args.out}"
    )
    return 0
