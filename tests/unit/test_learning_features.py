"""n_features_for: model input size per data source, consistent with what load_facility_data returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfl.learning.data import DataError, load_facility_data
from hfl.learning.features import n_features_for


def _write(path: Path, header: list[str], rows: int = 12) -> None:
    lines = [",".join(header)]
    for i in range(rows):
        vals = [str(i % 2) if h == "outcome" else str(float(i * (j + 1))) for j, h in enumerate(header)]
        lines.append(",".join(vals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("source", ["synthetic", "synthetic_hard", "breast_cancer"])
def test_builtin_sources_match_loaded_data(source: str) -> None:
    fd = load_facility_data(source, shard=(0, 4) if source == "breast_cancer" else None, n_patients=None)
    assert n_features_for(source) == fd.train.d
    # synthetic: 17 columns (the union of every specialty's fields) + 15 missing-value indicators;
    # synthetic_hard: 24 markers, never missing
    assert n_features_for(source) == {"synthetic": 32, "synthetic_hard": 24, "breast_cancer": 30}[source]


def test_csv_file_counts_all_columns_but_label_and_their_missing_indicators(tmp_path: Path) -> None:
    f = tmp_path / "site.csv"
    _write(f, ["age", "outcome", "bp", "glucose"])
    assert n_features_for(f"csv:{f}", label="outcome") == 6
    assert load_facility_data(f"csv:{f}", label="outcome").train.d == 6


def test_csv_directory_uses_first_file_in_sorted_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.csv", ["x1", "x2", "outcome"])
    _write(tmp_path / "a.csv", ["x1", "x2", "x3", "x4", "outcome"])
    assert n_features_for(f"csv:{tmp_path}", label="outcome") == 8


def test_header_with_byte_order_mark_and_spaces(tmp_path: Path) -> None:
    f = tmp_path / "bom.csv"
    f.write_text("\ufeff outcome , a , b\n1,2,3\n", encoding="utf-8")
    assert n_features_for(f"csv:{f}", label="outcome") == 4


@pytest.mark.parametrize(
    ("header", "label", "message"),
    [
        (["a", "b"], "outcome", "no label column"),
        (["a", "b", "outcome"], None, "--label"),
        (["outcome"], "outcome", "no feature columns"),
        (["a", "a", "outcome"], "outcome", "repeated"),
        (["a", "a_missing", "outcome"], "outcome", "used twice"),
    ],
)
def test_csv_errors(tmp_path: Path, header: list[str], label: str | None, message: str) -> None:
    f = tmp_path / "bad.csv"
    _write(f, header)
    with pytest.raises(DataError, match=message):
        n_features_for(f"csv:{f}", label=label)


def test_missing_empty_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        n_features_for(f"csv:{tmp_path / 'nope.csv'}", label="outcome")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        n_features_for(f"csv:{empty}", label="outcome")
    folder = tmp_path / "none"
    folder.mkdir()
    with pytest.raises(DataError, match=r"no \.csv files"):
        n_features_for(f"csv:{folder}", label="outcome")
    with pytest.raises(DataError, match="name a file"):
        n_features_for("csv:", label="outcome")
    with pytest.raises(DataError, match="unknown data source"):
        n_features_for("mnist")
