"""Offline aggregation of .npy files (used by the ``hfl aggregate`` command)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hfl.robust.rules import AggregateResult, aggregate, check_rule


def _load(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file not found: {path}")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} file {path} is not a readable .npy array ({exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{what} file {path} must hold a single .npy array, not an .npz archive")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} file {path} must hold numbers, found dtype {arr.dtype}")
    return arr


def aggregate_files(
    rule: str,
    f: int,
    in_path: str,
    out_path: str,
    *,
    counts_path: str | None = None,
    clip_update: float | None = None,
) -> AggregateResult:
    """Aggregate the (n, d) array in ``in_path`` with ``rule`` and write the (d,) result to ``out_path``.

    Rows are bucket sums with member counts from ``counts_path`` ((n,) .npy), or, without counts,
    per-node updates (count 1 each). Raises ValueError on bad shapes, NaN/infinite values, or a rule
    that cannot tolerate ``f`` with n rows. The output is written atomically, exactly at ``out_path``.
    """
    sums = _load(in_path, "input")
    if sums.ndim != 2 or sums.shape[0] == 0 or sums.shape[1] == 0:
        raise ValueError(f"input {in_path} must be a non-empty (n, d) array, got shape {sums.shape}")
    sums = sums.astype(np.float64)
    bad_rows = np.flatnonzero(~np.all(np.isfinite(sums), axis=1))
    if bad_rows.size:
        raise ValueError(f"input {in_path} has NaN or infinite values in row(s) {bad_rows.tolist()[:10]}")
    n = sums.shape[0]
    if counts_path is None:
        counts = np.ones(n)
    else:
        raw = _load(counts_path, "counts")
        if raw.ndim != 1 or raw.shape[0] != n:
            raise ValueError(
                f"counts {counts_path} must have shape ({n},) to match the input, got {raw.shape}"
            )
        counts = raw.astype(np.float64)
        if not np.all(np.isfinite(counts)) or np.any(counts < 1) or np.any(counts != np.floor(counts)):
            raise ValueError(f"counts {counts_path} must be whole numbers ≥ 1")
    check_rule(rule, n, f)
    result = aggregate(rule, sums, counts, f=f, clip_update=clip_update)

    out = Path(out_path)
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"output folder does not exist: {directory}")
    fd, tmp = tempfile.mkstemp(prefix=".aggregate-", suffix=".npy", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, result.update, allow_pickle=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result
