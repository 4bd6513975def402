"""In-memory copy of the demo's round loop (no gRPC) for tuning the outlier screen and reputation quickly.

It uses the same code as the services: hfl.learning for data and training, hfl.robust for attacks, rules
and reputation, hfl.schedule for the bucket draw. What differs from a real federation: bucket draws use
a seed derived from (seed, round) instead of the ledger head, so the draws differ from a real run with the
same seed (the statistics are the same). Results are for tuning only; bench/robust_sweep.py confirms
them with real federations.

    .venv/bin/python bench/robust_sim.py --attack scale --rule trimmed_mean --f 1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hfl.learning.data import SPECIALTIES, FacilityData, load_facility_data
from hfl.learning.models import evaluate, make_model
from hfl.learning.train import DEFAULT_CLIP_UPDATE, DEFAULT_TRAIN, clip_update, train_local
from hfl.robust.attacks import ATTACKS as ALL_ATTACKS
from hfl.robust.attacks import apply_attack, flip_labels
from hfl.robust.reputation import Reputation, with_refused
from hfl.robust.rules import aggregate, get_rule
from hfl.schedule import assign_buckets

ATTACKS = tuple(a for a in ALL_ATTACKS if a != "none")


@dataclass
class Facility:
    node_id: str
    index: int
    data: FacilityData
    attack: str = "none"
    peers: list[Any] = field(default_factory=list)


def make_facilities(n: int, n_byz: int, attack: str, seed: int) -> list[Facility]:
    out = []
    for i in range(n):
        data = load_facility_data("synthetic", specialty=SPECIALTIES[i % 4], shard=(i, n), seed=seed)
        out.append(Facility(f"facility-{i + 1:02d}", i, data))
    for k in range(n_byz):  # the last facilities turn Byzantine, as in hfl demo
        fac = out[n - 1 - k]
        fac.attack = attack
        if attack == "label_flip":
            tr = fac.data.train
            flipped = type(tr)(tr.X, flip_labels(tr.y), tr.feature_names)
            fac.data = FacilityData(flipped, fac.data.test, fac.data.specialty, fac.data.source)
        if attack in ("alie", "ipm"):
            m = max(n, 5)
            fac.peers = [
                load_facility_data("synthetic", specialty=SPECIALTIES[j % 4], shard=(j, m), seed=seed).train
                for j in range(m)
                if j != fac.index
            ][:4]
    return out


def facility_rng(seed: int, node_id: str, rnd: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{node_id}/{rnd}/0".encode())
    return np.random.default_rng(int.from_bytes(digest.digest()[:8], "big"))


def run(
    attack: str,
    rule: str,
    f: int,
    *,
    seed: int = 0,
    rounds: int = 10,
    n: int = 12,
    n_byz: int = 2,
    bucket_size: int = 3,
    params: dict[str, Any] | None = None,
    reputation: dict[str, Any] | None = None,
    trace: bool = False,
    on_round: Any = None,
) -> dict[str, Any]:
    facs = make_facilities(n, n_byz if attack != "none" else 0, attack, seed)
    model = make_model("logreg", facs[0].data.train.d)
    w = model.init_params(seed)
    cfg = DEFAULT_TRAIN
    C = DEFAULT_CLIP_UPDATE
    rep = Reputation(**(reputation or {}))
    rows = []
    for rnd in range(1, rounds + 1):
        active = [x for x in facs if x.node_id not in rep.quarantined]
        by_id = {x.node_id: x for x in active}
        bseed = hashlib.sha256(f"sim/{seed}/{rnd}".encode()).digest()
        plans = assign_buckets([x.node_id for x in active], ["fog-1", "fog-2"], bucket_size, bseed)
        sums, counts, bids = [], [], []
        refused: list[str] = []
        stats_members = []
        for p in plans:
            total = np.zeros_like(w)
            cnt = 0
            mem = []
            for m in p.members:
                fac = by_id[m]
                rng = facility_rng(seed, m, rnd)
                new = train_local(model, w, fac.data.train, cfg, rng)
                delta = clip_update(new - w, C)
                if fac.attack not in ("none", "label_flip"):
                    peers = None
                    if fac.attack in ("alie", "ipm"):
                        rows_ = [clip_update(train_local(model, w, d, cfg, rng) - w, C) for d in fac.peers]
                        rows_.append(delta)
                        peers = np.stack(rows_)
                    delta = apply_attack(fac.attack, delta, rng=rng, peers=peers)
                if not np.all(np.isfinite(delta)):
                    refused.append(m)  # the fog refuses it: INVALID_ARGUMENT
                    continue
                total += delta
                cnt += 1
                mem.append(m)
            if cnt:
                sums.append(total)
                counts.append(cnt)
                bids.append(p.bucket_id)
                stats_members.append(mem)
        S = np.stack(sums)
        if on_round is not None:
            bad = [any(by_id[m].attack != "none" for m in ms) for ms in stats_members]
            on_round(rnd, S, np.asarray(counts), bad, stats_members)
        res = aggregate(rule, S, np.asarray(counts), f=f, clip_update=C, params=params)
        w = w + res.update
        flags = {bids[i]: k for i, k in res.flag_kinds.items()}
        buckets = {p.bucket_id: list(p.members) for p in plans}  # what the authority issued
        buckets, flags = with_refused(buckets, flags, refused)
        newly = rep.observe(rnd, buckets, flags)
        # evaluation on this round's members' test sets (as the leader does)
        correct = total_n = 0
        for x in active:
            ev = evaluate(model, w, x.data.test)
            correct += ev.correct
            total_n += ev.total
        row: dict[str, Any] = {
            "round": rnd,
            "accuracy": correct / total_n,
            "flagged": sorted(flags),
            "newly_quarantined": newly,
            "bad_buckets": sorted(
                b for b, ms in buckets.items() if any(by_id[m].attack not in ("none",) for m in ms)
            ),
        }
        if trace:
            row["details"] = {k: v for k, v in res.details.items() if k.startswith("screen")}
            row["members"] = buckets
        rows.append(row)
    bad = {x.node_id for x in facs if x.attack != "none"}
    q = {fid: rep.quarantined_since(fid) for fid in sorted(rep.quarantined)}
    return {
        "attack": attack,
        "rule": rule,
        "f": f,
        "seed": seed,
        "final_accuracy": rows[-1]["accuracy"],
        "quarantined": q,
        "false_quarantines": sorted(set(q) - bad),
        "caught": sorted(set(q) & bad),
        "rounds": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attack", nargs="+", default=["none", *ATTACKS])
    ap.add_argument("--rule", nargs="+", default=["trimmed_mean", "mean"])
    ap.add_argument("--f", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args()
    for a in args.attack:
        for r in args.rule:
            for s in args.seeds:
                f = args.f if get_rule(r).tolerates_bad_buckets else 0
                out = run(a, r, f, seed=s, rounds=args.rounds, trace=args.trace)
                flagged = [len(x["flagged"]) for x in out["rounds"]]
                print(
                    f"{a:10s} {r:13s} seed {s}: acc {out['final_accuracy']:.4f} caught {out['caught']} "
                    f"false {out['false_quarantines']} flags/round {flagged}"
                )
                if args.trace:
                    print(json.dumps(out["rounds"], indent=1)[:4000])


if __name__ == "__main__":
    main()
