"""bench/hard_task.py's in-memory round loop, which the issue-13 benchmarks build on: a ``watch``
callback sees every aggregation without changing the run, and ``Setup.draws`` changes only the bucket
draw."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(draws: str = "", watch: Any = None) -> dict[str, Any]:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    ht = importlib.import_module("hard_task")
    setup = ht.Setup(source="synthetic", model="logreg", facilities=9, byzantine=1, draws=draws)
    return ht.run("scale", ht.DEFENDED, 0, rounds=2, setup=setup, watch=watch)


def test_watch_sees_each_aggregation_and_changes_nothing() -> None:
    seen: list[dict[str, Any]] = []
    watched = _run(watch=seen.append)
    assert watched["rounds"] == _run()["rounds"]
    assert [v["round"] for v in seen] == [1, 2]  # no round was refused here
    for v, row in zip(seen, watched["rounds"], strict=True):
        assert v["sums"].shape == (len(v["bucket_ids"]), v["w"].size)
        assert sorted(v["members"]) == sorted(v["bucket_ids"])
        assert [len(v["members"][b]) for b in v["bucket_ids"]] == v["counts"].tolist()
        assert v["attacker_buckets"] == row["attacker_buckets"]
        assert sorted(v["bucket_ids"][i] for i in v["flagged"]) == sorted(row["flagged"])


def test_draws_change_the_buckets_and_nothing_else() -> None:
    def round_one(draws: str) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        _run(draws, watch=seen.append)
        return seen[0]

    first, again, other = round_one(""), round_one(""), round_one("/a")
    assert again["members"] == first["members"]  # the same draw repeats exactly
    groups = [sorted(sorted(m) for m in r["members"].values()) for r in (first, other)]
    assert groups[0] != groups[1]  # another draw groups the facilities differently...
    # ...but the same facilities send the same updates: only their grouping differs
    assert np.allclose(first["sums"].sum(axis=0), other["sums"].sum(axis=0))
