"""Is a sign-flipping facility visible in its bucket's mean once the model has converged?

In-memory (bench/robust_sim.py: the same learning, attack, rule and bucket-draw code as the services).
For the issue-5 scenario (12 facilities, buckets of 3, 2 sign_flip facilities, 10 rounds, trimmed mean)
it ranks, in every round from round 3 on, the buckets by the two statistics the leader could look at:
the length of the bucket mean and its projection on the robust centre (the coordinate-wise median of
the bucket means). If a flipped member left a trace, buckets holding an attacker would sit at one end
of these rankings; with no trace each rank is equally likely (1/B). Writes
bench/results/sign_flip_signal.json.

    .venv/bin/python bench/sign_flip_signal.py --seeds 0 1 2 3 4 5 6 7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import robust_sim  # noqa: E402

from hfl.robust.reputation import QuarantineTest  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--from-round", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sign_flip_signal.json"))
    args = ap.parse_args()
    # per seed: how often each facility sat in the bucket with the shortest projection (the one a
    # "shrunk" test would flag if it flagged one bucket every round)
    flag_counts: dict[int, dict[str, int]] = {}
    norm_ranks: list[int] = []
    proj_ranks: list[int] = []
    n_buckets: set[int] = set()
    n_rounds = 10 - args.from_round + 1

    for seed in args.seeds:
        print(f"seed {seed} ...", flush=True)
        counts_here = flag_counts.setdefault(seed, {})

        def on_round(rnd: int, sums: np.ndarray, counts: np.ndarray, bad: list[bool], members: list) -> None:
            if rnd < args.from_round:
                return
            means = sums / counts[:, None]
            centre = np.median(means, axis=0)
            unit = centre / (np.linalg.norm(centre) or 1.0)
            n_buckets.add(len(bad))
            for stat, ranks in ((np.linalg.norm(means, axis=1), norm_ranks), (means @ unit, proj_ranks)):
                order = np.argsort(-stat, kind="stable")  # rank 0 = largest
                rank = np.empty(len(stat), dtype=int)
                rank[order] = np.arange(len(stat))
                ranks.extend(int(r) for r, b in zip(rank, bad, strict=True) if b)
            for m in members[int(np.argmin(means @ unit))]:
                counts_here[m] = counts_here.get(m, 0) + 1  # noqa: B023 (used within this seed's run)

        robust_sim.run(
            "sign_flip",
            "trimmed_mean",
            1,
            seed=seed,
            rounds=10,
            on_round=on_round,
            reputation={"test": QuarantineTest(alpha=1e-12)},  # quarantine after 30+ rounds: never here
        )

    def share(ranks: list[int]) -> list[float]:
        counts = np.bincount(np.asarray(ranks), minlength=max(n_buckets))
        return [round(float(c) / len(ranks), 3) for c in counts]

    attackers = ("facility-11", "facility-12")  # robust_sim turns the last two Byzantine
    honest = [f"facility-{i:02d}" for i in range(1, 11)]
    att_rate = [c.get(a, 0) / n_rounds for c in flag_counts.values() for a in attackers]
    hon_rate = [c.get(h, 0) / n_rounds for c in flag_counts.values() for h in honest]
    hidden = sum(
        1 for c in flag_counts.values() for a in attackers if c.get(a, 0) <= max(c.get(h, 0) for h in honest)
    )
    result = {
        "scenario": "12 facilities, buckets of 3, 2 sign_flip, trimmed mean f=1, rounds "
        f"{args.from_round}-10, seeds {args.seeds}",
        "buckets_per_round": sorted(n_buckets),
        "attacked_buckets": len(norm_ranks),
        "no_trace_share_per_rank": round(1 / max(n_buckets), 3),
        "norm_rank_share (0 = longest)": share(norm_ranks),
        "projection_rank_share (0 = furthest along the centre)": share(proj_ranks),
        "if the shortest-projection bucket were flagged every round": {
            "attacker_flag_rate_mean": round(float(np.mean(att_rate)), 3),
            "honest_flag_rate_mean": round(float(np.mean(hon_rate)), 3),
            "honest_flag_rate_max": round(float(np.max(hon_rate)), 3),
            "attackers_flagged_no_more_than_some_honest_facility_of_their_run": hidden,
            "attackers": len(att_rate),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
