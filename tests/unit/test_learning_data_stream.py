"""Facilities without a shard (scaled containers) get their own synthetic patients from their node id."""

from __future__ import annotations

import numpy as np
import pytest

from hfl.learning.data import DataError, load_facility_data


def test_different_node_ids_give_different_patients() -> None:
    a = load_facility_data("synthetic", n_patients=200, stream="facility-a1b2c3")
    b = load_facility_data("synthetic", n_patients=200, stream="facility-d4e5f6")
    assert not np.array_equal(a.train.X, b.train.X)


def test_the_same_node_id_gives_the_same_patients() -> None:
    a = load_facility_data("synthetic", n_patients=200, stream="facility-a1b2c3")
    again = load_facility_data("synthetic", n_patients=200, stream="facility-a1b2c3")
    assert np.array_equal(a.train.X, again.train.X) and np.array_equal(a.test.y, again.test.y)


def test_a_shard_wins_over_the_stream_and_no_stream_keeps_the_old_data() -> None:
    plain = load_facility_data("synthetic", n_patients=200)
    shard0 = load_facility_data("synthetic", n_patients=200, shard=(0, 4), stream="facility-x")
    assert np.array_equal(plain.train.X, shard0.train.X)


def test_stream_must_be_text() -> None:
    with pytest.raises(DataError, match="stream must be a string"):
        load_facility_data("synthetic", n_patients=200, stream=7)  # type: ignore[arg-type]
