"""Experiments stay out of the honest facility: the factory picks a misbehaving subclass only when an
experiment setting (HFL_BYZANTINE, HFL_DROP_RATE, HFL_CRASH_AT_STAGE) is given, and the drop-out rate is
no longer part of the training plan on the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hfl.domain import TrainingPlan
from hfl.learning.data import Dataset, FacilityData
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc.settings import Settings
from services.facility.bench import BenchFacility
from services.facility.faults import (
    FaultyBenchFacility,
    FaultyFacility,
    FaultySecureAggregation,
    drops_out,
    facility_class,
)
from services.facility.secure import SecureAggregation
from services.facility.service import Facility


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(role="facility", state_dir=tmp_path, **kw)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, Facility),
        ({"bench_updates": True}, BenchFacility),
        ({"byzantine": "scale"}, FaultyFacility),
        ({"byzantine": "stall"}, FaultyFacility),
        ({"drop_rate": 0.2}, FaultyFacility),
        ({"crash_at_stage": 3}, FaultyFacility),
        ({"bench_updates": True, "drop_rate": 0.2}, FaultyBenchFacility),
    ],
)
def test_the_factory_picks_a_faulty_facility_only_for_experiments(
    tmp_path: Path, kw: dict[str, Any], expected: type
) -> None:
    assert facility_class(_settings(tmp_path, **kw)) is expected


def test_an_honest_facility_runs_honest_secure_aggregation(tmp_path: Path) -> None:
    honest = Facility(_settings(tmp_path), "f1", None)  # type: ignore[arg-type]
    assert type(honest.secure) is SecureAggregation
    faulty = FaultyFacility(_settings(tmp_path, drop_rate=0.5), "f1", None)  # type: ignore[arg-type]
    assert isinstance(faulty.secure, FaultySecureAggregation) and faulty.secure.drop_rate == 0.5


def _ready(fac: Facility) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    ds = Dataset(x, (x[:, 0] > 0).astype(int), ("a", "b", "c"))
    fac.ready(FacilityData(ds, ds, "hospital", "test"), b"")


def test_only_the_byzantine_facility_attacks(tmp_path: Path) -> None:
    from hfl.learning.models import make_model

    plan = TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=1.0, secure=False)
    model = make_model("logreg", 3, 0)
    params = np.zeros(model.n_params)
    honest = Facility(_settings(tmp_path / "h"), "f1", None)  # type: ignore[arg-type]
    attacker = facility_class(_settings(tmp_path / "b", byzantine="scale", byzantine_scale=10.0))(
        _settings(tmp_path / "b", byzantine="scale", byzantine_scale=10.0),
        "f1",
        None,  # type: ignore[arg-type]
    )
    for fac in (honest, attacker):
        _ready(fac)
    good = honest.local_update(model, params, plan, np.random.default_rng(1))
    bad = attacker.local_update(model, params, plan, np.random.default_rng(1))
    assert np.linalg.norm(good) <= 1.0 + 1e-9
    assert np.linalg.norm(bad) > 5 * np.linalg.norm(good) > 0


def test_label_flip_changes_only_the_byzantine_facilitys_training_set(tmp_path: Path) -> None:
    honest = Facility(_settings(tmp_path / "h"), "f1", None)  # type: ignore[arg-type]
    flipper = FaultyFacility(_settings(tmp_path / "b", byzantine="label_flip"), "f1", None)  # type: ignore[arg-type]
    for fac in (honest, flipper):
        _ready(fac)
    assert np.array_equal(honest.train_set.y, honest.data.train.y)
    assert np.array_equal(flipper.train_set.y, 1 - flipper.data.train.y)


def test_drop_out_roll_follows_the_facilitys_own_rate() -> None:
    assert not any(drops_out(0.0) for _ in range(1000))
    assert all(drops_out(0.999999) for _ in range(100))
    hits = sum(drops_out(0.5) for _ in range(4000))
    assert 1700 < hits < 2300


def test_the_drop_rate_is_not_on_the_wire() -> None:
    assert "drop_rate" not in pb.TrainingPlan.DESCRIPTOR.fields_by_name
    assert not hasattr(TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=1.0), "drop_rate")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_drop_rate_outside_0_to_1_is_refused_at_start(tmp_path: Path, rate: float) -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        _settings(tmp_path, drop_rate=rate)
