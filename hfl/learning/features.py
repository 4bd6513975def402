"""How many input features a data source gives a model, without loading (or scaling) the data.

Services use this to size a model before any facility has loaded its rows.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from hfl.learning.data import (
    HARD_FEATURE_NAMES,
    SYNTHETIC_FEATURE_NAMES,
    UNKNOWN_SOURCE_HINT,
    DataError,
    csv_dir_files,
    model_feature_names,
)

# sklearn.datasets.load_breast_cancer has 30 numeric features (checked by the tests).
BREAST_CANCER_N_FEATURES = 30


def _csv_header(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"csv file not found: {path}")
    with p.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
    if header is None:
        raise DataError(f"{path} is empty; it needs a header row with column names")
    return [h.strip() for h in header]


def n_features_for(source: str, label: str | None = None) -> int:
    """Number of model inputs for ``source``: ``synthetic``, ``synthetic_hard``, ``breast_cancer`` or
    ``csv:PATH``.

    For ``csv:PATH`` the header row is read (of the file, or of the first file in sorted order when
    PATH is a folder); every column except the ``label`` column is a feature and may have missing values,
    so each gives the model two inputs: its value and its ``<column>_missing`` indicator.
    """
    if source == "synthetic":
        return len(SYNTHETIC_FEATURE_NAMES)
    if source == "synthetic_hard":
        return len(HARD_FEATURE_NAMES)
    if source == "breast_cancer":
        return BREAST_CANCER_N_FEATURES
    if not isinstance(source, str) or not source.startswith("csv:"):
        raise DataError(f"unknown data source {source!r}; use {UNKNOWN_SOURCE_HINT}")
    path = source[len("csv:") :]
    if not path:
        raise DataError("a csv source must name a file or folder, e.g. csv:/data/site1.csv")
    if not label:
        raise DataError(
            "a csv data set needs the name of its label column, the outcome to predict "
            "(hfl demo: --label; a service: HFL_LABEL)"
        )
    if os.path.isdir(path):
        path = csv_dir_files(path)[0]
    header = _csv_header(path)
    if label not in header:
        raise DataError(f"{path} has no label column {label!r}; its columns are: {', '.join(header)}")
    if len(set(header)) != len(header):
        raise DataError(f"{path} has repeated column names in its header row")
    columns = tuple(h for h in header if h != label)
    if not columns:
        raise DataError(f"{path} has no feature columns besides the label {label!r}")
    return len(model_feature_names(columns, columns))
