"""Can a screen for quiet attacks be made safe? (issue 13: sign_flip, label_flip, ipm, free_ride).

Not the library's behaviour: an exploration. Three steps.

``record``: runs bench/hard_task.py's round loop with the default defences (the library's bucketing,
bound, rules, validators and quarantine test) and keeps, for every observation reputation makes, the
public data a validator has: each bucket's members, sum and count, and the flags the library gave. Kept
in a pickle per run under ``--store`` (default /tmp/quiet_screen).

``offline``: replays a candidate screen on those records through a fresh ``Reputation`` (the library's
test, the library's flags plus the candidate's). Exact for an honest run as long as the candidate
quarantines nobody (its flags change nothing else), so "would an honest facility be quarantined" is
answered exactly; after the first quarantine it causes, later rounds are an approximation (the real
run would have left that facility out).

``online``: the round loop again, with the candidate's flags fed to reputation as the round happens, so
quarantines take effect (the numbers that count: harm, attackers caught by round 10, honest quarantined).

    .venv/bin/python bench/quiet_screen.py record --tasks synthetic_hard --sizes 12 --attacks none sign_flip
    .venv/bin/python bench/quiet_screen.py offline --out bench/results/quiet_screen.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hard_task  # noqa: E402
from hard_task import DEFENDED, Setup  # noqa: E402

from hfl.bounds import slot_round  # noqa: E402
from hfl.robust.reputation import Reputation  # noqa: E402

TASKS = {"synthetic": "logreg", "synthetic_hard": "mlp"}
SIZES = {12: 2, 24: 4, 48: 8}
ATTACKS = ("none", "scale", "gaussian", "nan", "sign_flip", "label_flip", "ipm", "free_ride", "alie")
QUIET = ("sign_flip", "label_flip", "ipm", "free_ride")
STORE = Path("/tmp/quiet_screen")

# A candidate screen: (bucket ids, sums, counts, library flags, state) -> {bucket id: "screen"}
Screen = Callable[[list[str], np.ndarray, np.ndarray, dict[str, str], dict[str, Any]], dict[str, str]]


def _rec_name(task: str, n: int, attack: str, seed: int) -> str:
    return f"{task}_{n}_{attack}_{seed}.pkl"


class _Tap:
    """Patches bench/hard_task.py's loop: keeps what each round shows, and may add a screen's flags."""

    def __init__(self, screen: Screen | None = None) -> None:
        self.screen = screen
        self.state: dict[str, Any] = {}
        self.last: tuple[np.ndarray, np.ndarray, list[str]] | None = None
        self.obs: list[dict[str, Any]] = []
        self.extra_flags = 0

    def install(self) -> None:
        tap = self
        original = hard_task.lowest_projection

        def lowest(sums: np.ndarray, counts: np.ndarray, bids: list[str], flagged: Any) -> str | None:
            tap.last = (np.array(sums, dtype=np.float64), np.array(counts, dtype=np.float64), list(bids))
            return original(sums, counts, bids, flagged)

        class Rep(Reputation):
            def observe(self, round, buckets, flagged, pools=None):  # type: ignore[no-untyped-def]
                assert tap.last is not None
                sums, counts, bids = tap.last
                flags = dict(flagged)
                tap.obs.append(
                    {
                        "slot": int(round),
                        "bids": bids,
                        "sums": sums,
                        "counts": counts,
                        "groups": {k: list(v) for k, v in buckets.items()},
                        "flags": dict(flagged),
                    }
                )
                if tap.screen is not None:
                    lib = {b: k for b, k in flagged.items() if b in bids}
                    tap.state["members"] = {b: list(v) for b, v in buckets.items()}
                    extra = tap.screen(bids, sums, counts, lib, tap.state)
                    for b, k in extra.items():
                        if b in buckets and b not in flags:
                            flags[b] = k
                            tap.extra_flags += 1
                newly = super().observe(round, buckets, flags, pools)
                for m in sorted(tap.state.pop("quarantine", set())):
                    if m not in self.quarantined:  # a facility-level decision (candidate B)
                        self.quarantine(m)
                        newly.append(m)
                return newly

        hard_task.lowest_projection = lowest
        hard_task.Reputation = Rep  # type: ignore[misc]


def run_tapped(task: str, n: int, attack: str, seed: int, screen: Screen | None) -> tuple[dict, _Tap]:
    saved = (hard_task.lowest_projection, hard_task.Reputation)
    tap = _Tap(screen)
    tap.install()
    try:
        setup = Setup(source=task, model=TASKS[task], facilities=n, byzantine=SIZES[n], bucket=3)
        r = hard_task.run(attack, DEFENDED, seed, rounds=30, setup=setup)
    finally:
        hard_task.lowest_projection, hard_task.Reputation = saved
    return r, tap


def attackers(n: int, attack: str) -> list[str]:
    if attack == "none":
        return []
    return [f"facility-{i + 1:02d}" for i in range(n - SIZES[n], n)]


def cmd_record(args: argparse.Namespace) -> int:
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        for n in args.sizes:
            for seed in args.seeds:
                for attack in args.attacks:
                    path = store / _rec_name(task, n, attack, seed)
                    if path.exists():
                        continue
                    t0 = time.monotonic()
                    r, tap = run_tapped(task, n, attack, seed, None)
                    keep = {k: v for k, v in r.items() if k != "rounds"}
                    keep["curve"] = [x["accuracy_all"] for x in r["rounds"]]
                    path.write_bytes(pickle.dumps({"run": keep, "obs": tap.obs, "bad": attackers(n, attack)}))
                    print(
                        f"{task} {n} {attack} {seed}: acc {r['final_accuracy_all']:.3f} "
                        f"q {r['quarantined_round']} ({time.monotonic() - t0:.0f} s)",
                        flush=True,
                    )
    return 0


# --- candidate screens --------------------------------------------------------------------------------


def projections(sums: np.ndarray, counts: np.ndarray, bids: list[str], lib: dict[str, str]):
    """Projection of each bucket mean (of those the library did not flag) on the coordinate-wise median
    of those means, as the screen computes it; returns (bucket ids, projections) or None."""
    keep = [i for i, b in enumerate(bids) if b not in lib]
    if len(keep) < 3:
        return None
    means = sums[keep] / counts[keep][:, None]
    centre = np.median(means, axis=0)
    cn = float(np.linalg.norm(centre))
    if cn == 0.0:
        return None
    return [bids[i] for i in keep], means @ (centre / cn)


def spread(p: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 · median absolute deviation) of a round's projections."""
    med = float(np.median(p))
    return med, 1.4826 * float(np.median(np.abs(p - med)))


def _robust_z(bids, sums, counts, lib) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Each unflagged bucket's projection in robust spreads from the round's median ({} when undefined)."""
    pr = projections(sums, counts, bids, lib)
    if pr is None:
        return {}
    ids, p = pr
    med, mad = spread(p)
    if mad <= 0.0:
        return {}
    return {b: float((x - med) / mad) for b, x in zip(ids, p, strict=True)}


def round_shortfall(bids, sums, counts, lib) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``_robust_z`` clipped to [-3, 3] (bounded influence: one wild round cannot decide a facility's
    record)."""
    return {b: float(np.clip(z, -3.0, 3.0)) for b, z in _robust_z(bids, sums, counts, lib).items()}


def mad_screen(k: float) -> Screen:
    """Candidate A (idea 1): flag a bucket whose projection on the robust centre lies more than ``k``
    robust spreads (1.4826 · MAD over the round's unflagged buckets) below their median; the flag goes to
    the library's quarantine test as kind "screen"."""

    def screen(bids, sums, counts, lib, state):  # type: ignore[no-untyped-def]
        return {b: "screen" for b, z in _robust_z(bids, sums, counts, lib).items() if z < -k}

    return screen


def record_screen(threshold: float, least_rounds: int) -> Screen:
    """Candidate B (idea 2): evidence per facility across rounds. Each round every member of an unflagged
    bucket is credited with its bucket's clipped shortfall (``round_shortfall``); a facility's record is
    Z = Σ shortfall / √(rounds seen), about N(0, 1) if facilities were interchangeable; one whose Z falls
    below ``threshold`` after at least ``least_rounds`` rounds is quarantined directly (not through the
    sequential test: its flags would repeat round after round, which that test does not allow for)."""

    def screen(bids, sums, counts, lib, state):  # type: ignore[no-untyped-def]
        total = state.setdefault("total", {})
        seen = state.setdefault("seen", {})
        members = state["members"]
        for b, v in round_shortfall(bids, sums, counts, lib).items():
            for m in members[b]:
                total[m] = total.get(m, 0.0) + v
                seen[m] = seen.get(m, 0) + 1
        low = {m for m in total if seen[m] >= least_rounds and total[m] / math.sqrt(seen[m]) < threshold}
        state["quarantine"] = low
        state["z"] = {m: total[m] / math.sqrt(seen[m]) for m in total}
        return {}

    return screen


CANDIDATES: dict[str, Screen] = {
    "A_mad3": mad_screen(3.0),
    "B_record45": record_screen(-4.5, 5),
}


def cmd_online(args: argparse.Namespace) -> int:
    out = Path(args.out)
    doc: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    runs: dict[str, Any] = doc.get("runs", {})
    load_start = doc.get("load_average_at_start", [round(x, 2) for x in os.getloadavg()])
    for cand in args.candidates:
        for task in args.tasks:
            for n in args.sizes:
                for seed in args.seeds:
                    for attack in args.attacks:
                        k = f"{cand}/{task}/{n}/{attack}/{seed}"
                        if k in runs:
                            continue
                        t0 = time.monotonic()
                        r, tap = run_tapped(task, n, attack, seed, CANDIDATES[cand])
                        runs[k] = {
                            "accuracy": r["final_accuracy_all"],
                            "quarantined_round": r["quarantined_round"],
                            "attackers_quarantined": r["attackers_quarantined"],
                            "honest_quarantined": r["honest_quarantined"],
                            "extra_flags": tap.extra_flags,
                        }
                        doc |= {
                            "what": "bench/quiet_screen.py online: the in-memory round loop of "
                            "bench/hard_task.py with the default defences plus a candidate quiet-attack "
                            "screen (NOT the library's behaviour); buckets of 3, 30 rounds",
                            "candidates": {c: (CANDIDATES[c].__doc__ or "") for c in CANDIDATES},
                            "load_average_at_start": load_start,
                            "load_average_now": [round(x, 2) for x in os.getloadavg()],
                            "runs": runs,
                        }
                        out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
                        print(f"{k}: {runs[k]} ({time.monotonic() - t0:.0f} s)", flush=True)
    return 0


SPECIALTY = ("hospital", "clinic", "research", "emergency")  # facility i has SPECIALTIES[i % 4] (hard_task)


def _role(fid: str, bad: set[str]) -> str:
    return "attacker" if fid in bad else SPECIALTY[(int(fid.split("-")[1]) - 1) % 4]


def cmd_offline(args: argparse.Namespace) -> int:
    """What the recorded runs say about the two candidates' statistics (no re-run)."""
    import re

    table: dict[str, Any] = {}
    for path in sorted(Path(args.store).glob("*.pkl")):
        found = re.match(r"^(synthetic(?:_hard)?)_(\d+)_(.+)_(\d+)$", path.stem)
        if not found:
            continue
        task, n, attack, _seed = found.groups()
        d = pickle.loads(path.read_bytes())
        bad = set(d["bad"])
        total: dict[str, float] = {}
        seen: dict[str, int] = {}
        per_round: dict[str, list[float]] = {}
        worst_honest, z10, z30 = 0.0, {}, {}
        flags = {"honest_buckets": 0, "honest_flagged": 0, "attacker_buckets": 0, "attacker_flagged": 0}
        for o in d["obs"]:
            lib = {b: k for b, k in o["flags"].items() if b in o["bids"]}
            short = round_shortfall(o["bids"], o["sums"], o["counts"], lib)
            hit = mad_screen(3.0)(o["bids"], o["sums"], o["counts"], lib, {})
            for b, v in short.items():
                who = "attacker" if bad & set(o["groups"][b]) else "honest"
                flags[f"{who}_buckets"] += 1
                flags[f"{who}_flagged"] += int(b in hit)
                for m in o["groups"][b]:
                    total[m] = total.get(m, 0.0) + v
                    seen[m] = seen.get(m, 0) + 1
                    per_round.setdefault(m, []).append(v)
            z = {m: total[m] / math.sqrt(seen[m]) for m in total if seen[m] >= 5}
            worst_honest = min([worst_honest, *(v for m, v in z.items() if m not in bad)])
            rnd = slot_round(o["slot"])
            if rnd <= 10:
                z10 = {m: round(z[m], 2) for m in bad if m in z}
            z30 = {m: round(z[m], 2) for m in bad if m in z}
        row = table.setdefault(
            f"{task}/{n}/{attack}",
            {
                "runs": 0,
                "shortfall_by_role": {},
                "worst_honest_record_z": 0.0,
                "attacker_record_z_round_10": [],
                "attacker_record_z_round_30": [],
                "candidate_A_flags": dict.fromkeys(flags, 0),
            },
        )
        row["runs"] += 1
        row["worst_honest_record_z"] = round(min(row["worst_honest_record_z"], worst_honest), 2)
        row["attacker_record_z_round_10"] += sorted(z10.values())
        row["attacker_record_z_round_30"] += sorted(z30.values())
        for k, v in flags.items():
            row["candidate_A_flags"][k] += v
        for m, vs in per_round.items():
            row["shortfall_by_role"].setdefault(_role(m, bad), []).append(float(np.mean(vs)))
    for row in table.values():
        row["shortfall_by_role"] = {
            r: {"mean": round(float(np.mean(v)), 2), "lowest": round(min(v), 2), "highest": round(max(v), 2)}
            for r, v in sorted(row["shortfall_by_role"].items())
        }
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc["offline"] = {
        "what": "from the recorded runs with the default defences (bench/quiet_screen.py record): "
        "per facility, its buckets' shortfall (projection on the robust centre in robust spreads "
        "from the round's median, "
        "clipped to [-3, 3]) averaged over its 30 rounds, by role; the record statistic Z of candidate B "
        "(sum of shortfalls / sqrt(rounds), from 5 rounds on): the lowest any honest facility reached in "
        "any round, and each attacker's at rounds 10 and 30; candidate A's flags (k = 3) on honest buckets "
        "and on buckets holding an attacker",
        "table": table,
    }
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Issue 13's clauses for each candidate, from the online runs (plain mean's harm from
    robust_grid.json)."""
    out = Path(args.out)
    doc = json.loads(out.read_text())
    grid = json.loads((ROOT / "bench" / "results" / "robust_grid.json").read_text())["runs"]
    runs = doc["runs"]
    summary: dict[str, Any] = {}
    for k in sorted(runs):
        cand, task, n, attack, seed = k.split("/")
        if attack == "none":
            continue
        honest = runs.get(f"{cand}/{task}/{n}/none/{seed}")
        if honest is None:
            continue
        r = runs[k]
        row = summary.setdefault(
            f"{cand}/{task}/{n}/{attack}",
            {
                "seeds": 0,
                "harm_points": [],
                "plain_harm_points": [],
                "all_attackers_by_round_10": 0,
                "all_attackers_by_round_30": 0,
                "attackers_caught_by_round_30": [],
                "honest_quarantined": [],
            },
        )
        row["seeds"] += 1
        row["harm_points"].append(round(100 * (honest["accuracy"] - r["accuracy"]), 2))
        g_h = grid.get(f"{task}/{n}/none/defended/{seed}")
        g_p = grid.get(f"{task}/{n}/{attack}/plain_mean/{seed}")
        if g_h and g_p:
            row["plain_harm_points"].append(round(100 * (g_h["accuracy"] - g_p["accuracy"]), 2))
        q = r["quarantined_round"]
        caught = [a for a in r["attackers_quarantined"]]
        row["attackers_caught_by_round_30"].append(len(caught))
        if len(caught) == SIZES[int(n)]:
            row["all_attackers_by_round_30"] += 1
            if all(q[a] <= 10 for a in caught):
                row["all_attackers_by_round_10"] += 1
        row["honest_quarantined"] += r["honest_quarantined"]
    honest_runs = {k: v["honest_quarantined"] for k, v in runs.items() if v["honest_quarantined"]}
    doc["summary"] = {"per_attack": summary, "runs_quarantining_an_honest_facility": honest_runs}
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    for k, v in summary.items():
        print(
            k,
            {
                x: v[x]
                for x in (
                    "harm_points",
                    "plain_harm_points",
                    "all_attackers_by_round_10",
                    "attackers_caught_by_round_30",
                    "honest_quarantined",
                )
            },
        )
    print("runs quarantining an honest facility:", honest_runs)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    rec.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), choices=list(SIZES))
    rec.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    rec.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    rec.add_argument("--store", default=str(STORE))
    onl = sub.add_parser("online")
    onl.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    onl.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    onl.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), choices=list(SIZES))
    onl.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    onl.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    onl.add_argument("--out", default=str(ROOT / "bench" / "results" / "quiet_screen.json"))
    off = sub.add_parser("offline")
    off.add_argument("--store", default=str(STORE))
    off.add_argument("--out", default=str(ROOT / "bench" / "results" / "quiet_screen.json"))
    summ = sub.add_parser("summary")
    summ.add_argument("--out", default=str(ROOT / "bench" / "results" / "quiet_screen.json"))
    args = ap.parse_args()
    if args.cmd == "summary":
        return cmd_summary(args)
    if args.cmd == "offline":
        return cmd_offline(args)
    if args.cmd == "online":
        return cmd_online(args)
    if args.cmd == "record":
        return cmd_record(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
