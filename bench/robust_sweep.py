"""Robustness experiments with REAL federations (`hfl demo`, one after the other).

For the demo scenario of issue 5 (12 facilities, buckets of 3, 2 Byzantine facilities, 10 rounds):
an honest run and every attack, each with the default robust rule and with plain federated averaging
(``plain_mean``: ``--rule mean --no-defences``, i.e. no norm bound, outlier screen, quarantine or
validation-score check; ``mean`` alone keeps those defences); then the quarantine checks (scale,
sign_flip, nan with the default rule) over more seeds. Writes
bench/results/robust_sweep.json after every run (so an interrupted sweep keeps what it has) and prints a
markdown table at the end. About 20–30 s per federation on 2 shared cores; the full sweep is ~30 runs.

    .venv/bin/python bench/robust_sweep.py                 # everything (~15 min)
    .venv/bin/python bench/robust_sweep.py --quick         # seed 0 only, no quarantine seeds
    .venv/bin/python bench/robust_sweep.py --attacks scale nan --rules trimmed_mean
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.robust.attacks import ATTACKS as ALL_ATTACKS  # noqa: E402
from hfl.robust.rules import DEFAULT_RULE, default_f  # noqa: E402
from hfl.schedule import bucket_sizes  # noqa: E402

ATTACKS = tuple(a for a in ALL_ATTACKS if a != "none")
QUARANTINE_ATTACKS = ("scale", "sign_flip", "nan")
PLAIN = "plain_mean"  # not a rule: --rule mean --no-defences
FACILITIES, BUCKET, BYZANTINE, ROUNDS = 12, 3, 2, 10


def run_demo(attack: str, rule: str, f: int, seed: int, out: Path, rounds: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "hfl.cli",
        "demo",
        "--facilities",
        str(FACILITIES),
        "--bucket-size",
        str(BUCKET),
        "--rule",
        "mean" if rule == PLAIN else rule,
        *(["--no-defences"] if rule == PLAIN else []),
        "--f",
        str(f),
        "--rounds",
        str(rounds),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    if attack != "none":
        cmd += ["--byzantine", f"{BYZANTINE}:{attack}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    summary_path = out / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
        return {
            "attack": attack,
            "rule": rule,
            "f": f,
            "seed": seed,
            "error": proc.stderr[-2000:] or proc.stdout[-2000:],
            "wall_s": round(wall, 1),
        }
    summary = json.loads(summary_path.read_text())
    byz = set(summary["config"].get("byzantine", {}))
    first_q: dict[str, int] = {}
    for r in summary["rounds"]:
        for q in r.get("quarantined", []):
            first_q.setdefault(q, r["round"])
    caught = {q: rnd for q, rnd in first_q.items() if q in byz}
    return {
        "attack": attack,
        "rule": rule,
        "f": f,
        "seed": seed,
        "final_accuracy": summary.get("final_accuracy"),
        "centralized_accuracy": summary.get("centralized_accuracy"),
        "committed_rounds": summary.get("committed_rounds"),
        "accuracy_per_round": [r.get("accuracy") for r in summary["rounds"]],
        "flagged_per_round": [len(r.get("flagged_buckets", [])) for r in summary["rounds"]],
        "byzantine": sorted(byz),
        "quarantined_round": first_q,
        "all_byzantine_quarantined_by": max(caught.values()) if byz and set(caught) == byz else None,
        "false_quarantines": sorted(set(first_q) - byz),
        "wall_s": round(wall, 1),
    }


def table(results: list[dict[str, Any]], rules: list[str]) -> str:
    main = [r for r in results if r["seed"] == 0]
    honest = {r["rule"]: r.get("final_accuracy") for r in main if r["attack"] == "none"}
    head = (
        "| attack | "
        + " | ".join(f"{r} acc (Δ vs honest)" for r in rules)
        + " | both attackers quarantined by round (default rule) | false quarantines |"
    )
    lines = [head, "|" + "---|" * (len(rules) + 3)]
    for attack in ("none", *ATTACKS):
        cells = []
        for rule in rules:
            row = next((r for r in main if r["attack"] == attack and r["rule"] == rule), None)
            if row is None or row.get("final_accuracy") is None:
                cells.append("error" if row else "-")
                continue
            acc = row["final_accuracy"]
            base = honest.get(rule)
            delta = "" if base is None or attack == "none" else f" ({100 * (acc - base):+.1f})"
            cells.append(f"{acc:.4f}{delta}")
        drow = next((r for r in main if r["attack"] == attack and r["rule"] == rules[0]), None)
        q = "-" if drow is None or attack == "none" else str(drow.get("all_byzantine_quarantined_by") or "no")
        fq = "-" if drow is None else (", ".join(drow.get("false_quarantines", [])) or "none")
        lines.append(f"| {attack} | " + " | ".join(cells) + f" | {q} | {fq} |")
    return "\n".join(lines)


def quarantine_table(results: list[dict[str, Any]], rule: str) -> str:
    lines = [
        "| attack | seed | both quarantined by round | quarantined (round) | false quarantines | final acc |",
        "|---|---|---|---|---|---|",
    ]
    rows = [r for r in results if r["rule"] == rule and r["attack"] in (*QUARANTINE_ATTACKS, "none")]
    for r in sorted(rows, key=lambda r: (r["attack"], r["seed"])):
        if "error" in r:
            lines.append(f"| {r['attack']} | {r['seed']} | error | | | |")
            continue
        q = ", ".join(f"{k} ({v})" for k, v in sorted(r["quarantined_round"].items())) or "none"
        lines.append(
            f"| {r['attack']} | {r['seed']} | {r['all_byzantine_quarantined_by'] or 'no'} | {q} | "
            f"{', '.join(r['false_quarantines']) or 'none'} | {r['final_accuracy']:.4f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    ap.add_argument(
        "--rules",
        nargs="+",
        default=[DEFAULT_RULE, PLAIN],
        help=f"rules to compare (the first also runs the quarantine checks); {PLAIN}: mean, no defences",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="seeds for the quarantine checks (seed 0 also runs every attack)",
    )
    ap.add_argument("--quick", action="store_true", help="seed 0 only")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "robust_sweep.json"))
    args = ap.parse_args()
    n_buckets = len(bucket_sizes(FACILITIES, BUCKET))
    f_of = {r: default_f(n_buckets, "mean" if r == PLAIN else r) for r in args.rules}
    plan = [(a, r, 0) for a in ("none", *args.attacks) for r in args.rules]
    if not args.quick:
        checked = [x for x in QUARANTINE_ATTACKS if x in args.attacks]
        plan += [(a, args.rules[0], s) for a in (*checked, "none") for s in args.seeds if s != 0]
    results: list[dict[str, Any]] = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hfl-robust-") as tmp:
        for k, (attack, rule, seed) in enumerate(plan, 1):
            print(f"[{k}/{len(plan)}] {attack} with {rule} (f={f_of[rule]}), seed {seed} ...", flush=True)
            res = run_demo(attack, rule, f_of[rule], seed, Path(tmp) / f"{attack}-{rule}-{seed}", args.rounds)
            results.append(res)
            msg = (
                res.get("error", "")[-300:]
                if "error" in res
                else (
                    f"accuracy {res['final_accuracy']}, quarantined {res['quarantined_round']}, "
                    f"{res['wall_s']} s"
                )
            )
            print("    " + msg, flush=True)
            out_path.write_text(
                json.dumps(
                    {
                        "scenario": {
                            "facilities": FACILITIES,
                            "bucket_size": BUCKET,
                            "byzantine": BYZANTINE,
                            "rounds": args.rounds,
                            "f": f_of,
                        },
                        "note": "real federations (hfl demo) on one machine with 2 shared cores; "
                        "wall times are under contention",
                        "results": results,
                    },
                    indent=2,
                )
            )
    print()
    print(table(results, args.rules))
    print()
    print(quarantine_table(results, args.rules[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
