"""Offline aggregation of .npy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hfl.robust.offline import aggregate_files
from hfl.robust.rules import aggregate


def _save(path: Path, arr: np.ndarray) -> str:
    with path.open("wb") as fh:
        np.save(fh, arr)
    return str(path)


def test_bucket_sums_with_counts(tmp_path: Path) -> None:
    sums = np.array([[3.0, 0.0], [0.2, 0.4], [0.5, 0.5], [30.0, 0.0]])
    counts = np.array([3, 1, 2, 2])
    inp = _save(tmp_path / "sums.npy", sums)
    cnt = _save(tmp_path / "counts.npy", counts)
    out = tmp_path / "agg.out"  # written exactly here, no ".npy" appended
    res = aggregate_files("trimmed_mean", 1, inp, str(out), counts_path=cnt, clip_update=1.0)
    expected = aggregate("trimmed_mean", sums, counts, f=1, clip_update=1.0)
    assert res.flagged == expected.flagged == (3,)
    written = np.load(out)
    assert written.tobytes() == expected.update.tobytes()
    assert not (tmp_path / "agg.out.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agg.out", "counts.npy", "sums.npy"]


def test_per_node_updates_default_to_count_one(tmp_path: Path) -> None:
    ups = np.array([[1.0], [2.0], [3.0], [400.0], [5.0]], dtype=np.float32)
    inp = _save(tmp_path / "u.npy", ups)
    res = aggregate_files("median", 2, inp, str(tmp_path / "m.npy"))
    np.testing.assert_array_equal(res.update, [3.0])
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), [3.0])


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros(5), "non-empty"),
        (np.zeros((0, 3)), "non-empty"),
        (np.array([[1.0, np.nan], [1.0, 1.0], [0.0, 0.0]]), "NaN or infinite"),
        (np.array([["a", "b"]]), "numbers"),
    ],
)
def test_bad_input_arrays(tmp_path: Path, arr: np.ndarray, match: str) -> None:
    inp = _save(tmp_path / "in.npy", arr)
    with pytest.raises(ValueError, match=match):
        aggregate_files("median", 0, inp, str(tmp_path / "out.npy"))
    assert not (tmp_path / "out.npy").exists()


def test_rule_and_f_mismatch(tmp_path: Path) -> None:
    inp = _save(tmp_path / "in.npy", np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"2f\+3"):
        aggregate_files("multi_krum", 1, inp, str(tmp_path / "out.npy"))
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        aggregate_files("average", 0, inp, str(tmp_path / "out.npy"))
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    "counts", [np.ones(3), np.array([1, 0, 1, 1]), np.array([1.5, 1, 1, 1]), np.ones((4, 1))]
)
def test_bad_counts(tmp_path: Path, counts: np.ndarray) -> None:
    inp = _save(tmp_path / "in.npy", np.ones((4, 2)))
    cnt = _save(tmp_path / "c.npy", counts)
    with pytest.raises(ValueError, match="counts"):
        aggregate_files("mean", 0, inp, str(tmp_path / "out.npy"), counts_path=cnt)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        aggregate_files("mean", 0, str(tmp_path / "nope.npy"), str(tmp_path / "out.npy"))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="readable"):
        aggregate_files("mean", 0, str(junk), str(tmp_path / "out.npy"))
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        aggregate_files("mean", 0, str(pickled), str(tmp_path / "out.npy"))
    archive = tmp_path / "arch.npz"
    np.savez(archive, a=np.ones((2, 2)))
    with pytest.raises(ValueError, match="npz"):
        aggregate_files("mean", 0, str(archive), str(tmp_path / "out.npy"))
    inp = _save(tmp_path / "in.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match="output folder"):
        aggregate_files("mean", 0, inp, str(tmp_path / "missing" / "out.npy"))
