"""How fast a faulty validator leaves the committee: the authority's committee draw and vote weights alone.

The same code the authority runs (hfl.robust.reputation.Reputation.observe_votes for the weights,
hfl.schedule.select_committee for the reputation-weighted draw, hfl.schedule.round_seed for the seed),
in memory: a pool of validators, one of them faulty, a committee drawn per epoch, every honest proposal
certified. ``reject_all`` votes against every proposal, ``silent`` never votes. (``accept_all`` only
differs from an honest validator when a bad model is proposed, so it is not simulated here: in a
federation where every proposal is good it cannot be told apart, and it cannot commit a bad model alone
because a quorum needs 2f+1 votes.) Counts, not timings: the machine's load does not matter.

Writes bench/results/rotation_sim.json.

    .venv/bin/python bench/rotation_sim.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfl.hashing import sha256  # noqa: E402
from hfl.robust.reputation import Reputation  # noqa: E402
from hfl.schedule import round_seed, select_committee  # noqa: E402


def one_run(mode: str, seed: int, *, pool_size: int, size: int, epochs: int, epoch_rounds: int) -> list[bool]:
    """Per epoch: was the faulty validator on the committee?"""
    pool = [f"validator-{i}" for i in range(1, pool_size + 1)]
    bad = pool[-1]
    rep = Reputation()
    base = sha256(b"hfl/bench/rotation", str(seed).encode())
    served: list[bool] = []
    rnd = 0
    for epoch in range(epochs):
        weights = {v: round(rep.weight(v), 6) for v in pool}  # as the authority records them
        committee = select_committee(pool, size, round_seed(base, epoch, 0xFFFF), weights)
        served.append(bad in committee)
        for _ in range(epoch_rounds):
            rnd += 1
            votes: dict[str, bool | None] = dict.fromkeys(committee, True)
            if bad in committee:
                if mode == "reject_all":
                    votes[bad] = False
                else:
                    del votes[bad]
            rep.observe_votes(rnd, committee, votes, True)
    return served


def summarise(runs: list[list[bool]], after: int) -> dict[str, object]:
    epochs = len(runs[0])
    per_epoch = [round(sum(r[e] for r in runs) / len(runs), 4) for e in range(epochs)]
    caught = []
    for r in runs:
        first = next((i for i, x in enumerate(r) if x), None)
        if first is not None and first + after < epochs:
            caught.append(not any(r[first + 1 : first + 1 + after]))
    return {
        "share_on_committee_per_epoch": per_epoch,
        f"share_out_for_the_{after}_epochs_after_first_service": round(sum(caught) / max(1, len(caught)), 4),
        "runs_with_a_first_service": len(caught),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--epoch-rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rotation_sim.json"))
    args = ap.parse_args()
    results = []
    for pool_size, size in ((7, 4), (10, 4), (10, 7)):
        for mode in ("reject_all", "silent"):
            runs = [
                one_run(
                    mode,
                    s,
                    pool_size=pool_size,
                    size=size,
                    epochs=args.epochs,
                    epoch_rounds=args.epoch_rounds,
                )
                for s in range(args.runs)
            ]
            row = {"validators": pool_size, "committee": size, "mode": mode, **summarise(runs, 3)}
            results.append(row)
            print(json.dumps(row))
    Path(args.out).write_text(
        json.dumps(
            {
                "what": "faulty validator on the committee per epoch; weights: hfl.robust.reputation "
                "defaults, reputation-weighted draw of hfl.schedule.select_committee",
                "runs": args.runs,
                "epochs": args.epochs,
                "epoch_rounds": args.epoch_rounds,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
