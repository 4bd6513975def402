"""Two candidate kinds of evidence against a `scale` facility in a federation of only 2 buckets (issue 13's
compose clause: 6 honest facilities and 1 attacker), measured on honest and attacked runs before either
could go into the library. Neither is the library's behaviour.

With 2 buckets the trimmed mean trims nothing, the outlier screen needs 3 buckets, and after round 1 the
adaptive norm bound lets a x10 update through (bench/results/NOTES-quarantine.md, "Two buckets").
Evidence that feeds the quarantine test must be rare for honest buckets: the test's stated error rate
assumes a falsely flagged bucket in at most 0.5 % of bucket-rounds (hfl/robust/reputation.py).

* ``ratio``: the outlier screen's "too large" test extended to 2 buckets: the longer bucket mean is
  flagged when it is more than 2.5 times (the screen's ratio) the shorter one. Recorded per round: the
  ratio of the longer to the shorter mean (buckets that passed the norm bound), and whether the longer
  one holds the attacker.
* ``validators``: each validator also scores every bucket's mean alone (the model before the round plus
  that bucket's mean) on its validation data; a bucket counts as flagged when at least 3 of the 4 (a
  committee's quorum) see it lose more than 0.05 accuracy (the margin they vote with). Recorded per
  bucket: how many of the 4 see such a drop.

In memory with bench/hard_task.py's round loop (the library's bucketing, bound, rules, screen,
validators' accept rule and quarantine test), default options, 30 rounds; the signal is only watched, the
rounds run as the library runs them. A round the committee refuses 10 times in a row ends the run
("stalled"); a real federation keeps drawing new buckets and goes on (it did in `hfl demo --facilities 6
--byzantine 1:scale`). Outcome counts, not timings.

    .venv/bin/python bench/two_bucket_evidence.py    # writes bench/results/two_bucket_evidence.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import hard_task as ht  # noqa: E402

from hfl.robust.rules import DEFAULT_SCREEN_NORM_RATIO  # noqa: E402

TASKS = [("synthetic", "logreg"), ("breast_cancer", "logreg"), ("synthetic_hard", "mlp")]
# (facilities, bucket size): every setting here makes 2 buckets; 12 and 24 facilities in buckets of 3
# (4 and 8 buckets) are added for the validators' check, which is not specific to 2 buckets
TWO_BUCKETS = [(6, 3), (7, 3), (8, 3), (9, 4), (10, 4), (11, 4)]
MORE_BUCKETS = [(12, 3), (24, 3)]
ROUNDS, SEEDS, QUORUM, VOTERS = 30, range(10), 3, 4


def quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    a = np.sort(np.asarray(xs))
    pick = lambda p: round(float(a[min(a.size - 1, int(p * a.size))]), 3)  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(float(a[-1]), 3)}


def totals(rows: list[dict[str, Any]], *keys: str) -> list[int]:
    """Each key summed over the settings' rows."""
    return [sum(int(x[k]) for x in rows) for k in keys]


def one_setting(source: str, model: str, n: int, b: int, attack: str, ratio: bool) -> dict[str, Any]:
    ratios: list[tuple[float, bool]] = []  # (longer / shorter, the longer one holds the attacker)
    votes: list[tuple[int, bool]] = []  # (validators seeing a drop, the bucket holds the attacker)
    stalled: list[int] = []

    def watch(v: dict[str, Any]) -> None:
        keep = [i for i in range(len(v["bucket_ids"])) if i not in set(v["flagged"])]
        means = v["sums"] / v["counts"][:, None]
        bad = set(v["attacker_buckets"])
        if ratio and len(v["bucket_ids"]) == 2 and len(keep) == 2:
            norms = np.linalg.norm(means, axis=1)
            longer = int(np.argmax(norms))
            if norms.min() > 0:
                ratios.append((float(norms.max() / norms.min()), v["bucket_ids"][longer] in bad))
        w, mdl, vals = v["w"], v["model"], v["validators"]
        base = [ht.accuracy(mdl, w, [d]) for d in vals]
        for i in keep:
            alone = w + means[i]
            drops = sum(
                1 for d, a in zip(vals, base, strict=True) if ht.accuracy(mdl, alone, [d]) < a - ht.MARGIN
            )
            votes.append((drops, v["bucket_ids"][i] in bad))

    seeds = SEEDS if n < 12 else range(5)
    for seed in seeds:
        setup = ht.Setup(
            source=source, model=model, facilities=n, byzantine=1 if n < 12 else n // 6, bucket=b
        )
        try:
            ht.run(attack, ht.DEFENDED, seed, rounds=ROUNDS, setup=setup, watch=watch)
        except RuntimeError:
            stalled.append(seed)
    honest_r = [r for r, att in ratios if not att]
    att_r = [r for r, att in ratios if att]
    out: dict[str, Any] = {"seeds": len(seeds), "stalled_seeds": stalled}
    if ratio:
        over = lambda xs: sum(1 for r in xs if r > DEFAULT_SCREEN_NORM_RATIO)  # noqa: E731
        out["ratio"] = {
            "rounds": len(ratios),
            "longer_is_honest": {
                "rounds": len(honest_r),
                "over_2.5": over(honest_r),
                **(quantiles(honest_r) or {}),
            },
            "longer_holds_the_attacker": {
                "rounds": len(att_r),
                "over_2.5": over(att_r),
                **(quantiles(att_r) or {}),
            },
        }
    hv = [d for d, att in votes if not att]
    av = [d for d, att in votes if att]
    out["validators"] = {
        "honest_buckets": len(hv),
        "honest_flagged_by_a_quorum": sum(1 for d in hv if d >= QUORUM),
        "attacker_buckets": len(av),
        "attacker_flagged_by_a_quorum": sum(1 for d in av if d >= QUORUM),
    }
    return out


def main() -> int:
    started, load = time.time(), [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {}
    for source, model in TASKS:
        for n, b in TWO_BUCKETS + MORE_BUCKETS:
            for attack in ("none", "scale"):
                key = f"{source}/{n} facilities/buckets of {b}/{attack}"
                results[key] = one_setting(source, model, n, b, attack, ratio=(n, b) in TWO_BUCKETS)
                print(key, json.dumps(results[key]), flush=True)
    honest_ratio = [v["ratio"]["longer_is_honest"] for v in results.values() if "ratio" in v]
    attacked = [v["ratio"]["longer_holds_the_attacker"] for v in results.values() if "ratio" in v]
    votes = [v["validators"] for v in results.values()]
    doc = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "load_average_at_start": load,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - started),
        "totals": {
            "ratio: rounds where the longer bucket is honest, and of those over 2.5": totals(
                honest_ratio, "rounds", "over_2.5"
            ),
            "ratio: rounds where the longer bucket holds the attacker, and of those over 2.5": totals(
                attacked, "rounds", "over_2.5"
            ),
            "validators: honest buckets, and of those flagged by a quorum": totals(
                votes, "honest_buckets", "honest_flagged_by_a_quorum"
            ),
            "validators: attacker buckets, and of those flagged by a quorum": totals(
                votes, "attacker_buckets", "attacker_flagged_by_a_quorum"
            ),
        },
        "settings": results,
    }
    out = ROOT / "bench" / "results" / "two_bucket_evidence.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["totals"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
