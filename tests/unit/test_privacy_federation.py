"""DP plumbing: the leader's plan (calibration, wire format), the facility's admission and persistence,
signed spend reports and the authority's privacy book."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from hfl.crypto.signing import SigningKey
from hfl.domain import TrainingPlan
from hfl.errors import AlreadyDone, InvalidInput, NotAllowed, Unauthenticated
from hfl.learning.data import Dataset
from hfl.learning.models import make_model
from hfl.privacy import compute_epsilon
from hfl.privacy.dpsgd import DPSGD
from hfl.privacy.facility import FacilityPrivacy, PrivacyDeclined
from hfl.privacy.federation import DPPlan, dp_local_update, ledger_entry, plan_dp, spend_slot
from hfl.privacy.report import SpendReport
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc import serde
from services.authority.privacy import PrivacyBook
from services.facility.privacy import publish_metrics


@pytest.fixture(scope="module")
def plan() -> DPPlan:
    return plan_dp(epsilon=1.0, delta=1e-5, rounds=4, sampling_rate=0.5, local_epochs=1.0)


# ---------------------------------------------------------------------------------------------- leader
def test_plan_spends_the_training_budget_within_one_percent(plan: DPPlan) -> None:
    assert plan.steps_per_round == 2 and plan.release_epsilon == pytest.approx(0.05)
    eps = compute_epsilon("gaussian", plan.noise_multiplier, 0.5, 2 * 4, 1e-5, "rdp")
    assert 0.99 * plan.training_budget <= eps <= plan.training_budget
    assert plan.epsilon_after_rounds(4) == pytest.approx(eps)


def _on_the_wire(dp: DPPlan | None) -> TrainingPlan:
    sent = TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=1.0, dp=dp)
    return serde.plan_from_proto(pb.TrainingPlan.FromString(serde.plan_to_proto(sent).SerializeToString()))


def test_plan_round_trips_through_json_and_the_wire(plan: DPPlan) -> None:
    wire = json.loads(json.dumps(plan.to_dict()))
    assert DPPlan.from_dict(wire) == plan
    assert _on_the_wire(plan).dp == plan and _on_the_wire(None).dp is None


@pytest.mark.parametrize(
    "bad",
    [
        {"mechanism": "uniform"},
        {"noise_multiplier": 0.0},
        {"sampling_rate": 1.5},
        {"steps_per_round": 0},
        {"release_epsilon": 5.0},
        {"delta": "1e-5"},
        {"accountant": "moments"},
    ],
)
def test_bad_plans_are_refused_in_plain_words(plan: DPPlan, bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        DPPlan.from_dict({**plan.to_dict(), **bad})
    msg = serde.plan_to_proto(TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=1.0, dp=plan))
    try:
        for k, v in bad.items():
            setattr(msg.dp, k, v)
    except TypeError:
        return  # a value of the wrong type cannot even be put on the wire
    with pytest.raises(InvalidInput, match="privacy settings"):
        serde.plan_from_proto(msg)


def test_laplace_with_rdp_and_sampling_points_to_pld() -> None:
    with pytest.raises(ValueError, match="pld"):
        plan_dp(epsilon=1.0, delta=1e-5, rounds=2, mechanism="laplace", accountant="rdp", sampling_rate=0.25)


def test_spend_slots_keep_attempts_apart() -> None:
    assert spend_slot(3, 0) < spend_slot(3, 1) < spend_slot(4, 0)
    with pytest.raises(ValueError):
        spend_slot(1, 1000)


def test_a_spend_is_recorded_under_its_attempt_and_a_release_under_slot_zero() -> None:
    training = SpendReport("f", 3, 1, "training", 0.3, 1e-5, steps=7, details={"noise": 1.1})
    assert ledger_entry(training) == (
        spend_slot(3, 1),
        {"noise": 1.1, "round": 3, "attempt": 1, "steps": 7},
    )
    release = SpendReport("f", 3, 1, "release", 0.05, 0.0, details={"round": 99})
    assert ledger_entry(release) == (0, {"round": 3, "attempt": 1, "steps": 0})  # the report's own wins
    with pytest.raises(ValueError, match="retried"):
        ledger_entry(SpendReport("f", 3, 1000, "training", 0.3, 1e-5))


def test_dp_local_update_takes_fixed_steps_and_respects_update_clip(
    plan: DPPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    data = Dataset(X, (X[:, 0] > 0).astype(np.int64), ("a", "b", "c"))
    model = make_model("logreg", 3, 16)
    w = model.init_params(0)
    steps = []
    real = DPSGD.batch_indices
    monkeypatch.setattr(DPSGD, "batch_indices", lambda self, n, r: steps.append(n) or real(self, n, r))
    delta = dp_local_update(model, w, data, plan, lr=0.5, max_update_norm=100.0, rng=np.random.default_rng(1))
    assert len(steps) == plan.steps_per_round  # the plan's steps, whatever the data size
    assert np.linalg.norm(delta) > 0.01
    clipped = dp_local_update(
        model, w, data, plan, lr=0.5, max_update_norm=0.01, rng=np.random.default_rng(1)
    )
    assert clipped.shape == w.shape and np.linalg.norm(clipped) <= 0.01 + 1e-12


# ---------------------------------------------------------------------------------------------- facility
def _book(tmp_path: Path, budget: float = 0.0) -> FacilityPrivacy:
    return FacilityPrivacy(tmp_path, "facility-01", SigningKey.generate(), local_budget=budget)


def test_facility_spends_round_by_round_then_declines(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path)
    for r in range(1, 5):
        report = book.record(book.admit(plan, r, 0))
        assert report.kind == "training" and report.steps == 2
        assert report.epsilon_total == pytest.approx(plan.epsilon_after_rounds(r))
        assert report.exhausted == (r == 4)
    with pytest.raises(PrivacyDeclined, match=r"declining round 5.*above its budget"):
        book.admit(plan, 5, 0)


def test_retried_attempt_spends_again_but_a_duplicate_is_refused(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path)
    book.record(book.admit(plan, 1, 0))
    with pytest.raises(AlreadyDone):
        book.admit(plan, 1, 0)
    book.record(book.admit(plan, 1, 1))
    assert book.steps == 4


def test_spend_survives_a_restart(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path)
    book.record(book.admit(plan, 1, 0))
    book.record(book.admit(plan, 2, 0))
    again = _book(tmp_path)
    assert again.steps == 4
    assert again.training_epsilon() == pytest.approx(plan.epsilon_after_rounds(2))
    again.record(again.admit(plan, 3, 0))
    again.record(again.admit(plan, 4, 0))
    with pytest.raises(PrivacyDeclined):
        _book(tmp_path).admit(plan, 5, 0)


def test_unreadable_record_stops_the_facility(tmp_path: Path) -> None:
    (tmp_path / "privacy.json").write_text("{not json")
    with pytest.raises(ValueError, match="restore it from a backup"):
        _book(tmp_path)


def test_local_budget_is_stricter(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path, budget=plan.release_epsilon + plan.epsilon_after_rounds(1) * 1.01)
    assert book.record(book.admit(plan, 1, 0)).exhausted
    with pytest.raises(PrivacyDeclined, match="declining round 2"):
        book.admit(plan, 2, 0)
    (tmp_path / "tiny").mkdir()
    with pytest.raises(PrivacyDeclined, match="published statistics"):
        _book(tmp_path / "tiny", budget=0.01).admit(plan, 1, 0)


def test_changed_privacy_settings_are_declined(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path)
    book.record(book.admit(plan, 1, 0))
    other = DPPlan.from_dict({**plan.to_dict(), "noise_multiplier": plan.noise_multiplier * 2})
    with pytest.raises(PrivacyDeclined, match="changed its privacy settings"):
        book.admit(other, 2, 0)


def test_statistics_are_released_once(tmp_path: Path, plan: DPPlan) -> None:
    book = _book(tmp_path)
    data = Dataset(np.zeros((200, 2)), np.array([1] * 50 + [0] * 150), ("a", "b"))
    first = book.release_statistics(plan, data, 1)
    assert first is not None and first.kind == "release" and first.delta == 0.0
    assert first.epsilon_total == pytest.approx(plan.release_epsilon)
    assert book.release_statistics(plan, data, 2) is None
    assert _book(tmp_path).release_epsilon == pytest.approx(plan.release_epsilon)  # persisted


def test_a_record_written_before_the_move_to_the_library_is_read(tmp_path: Path, plan: DPPlan) -> None:
    """privacy.json as services/facility/privacy.py wrote it: same file, same keys."""
    old = {
        "accounting": plan.accounting_key(),
        "last_epsilon": plan.epsilon_after_rounds(1),
        "release": None,
        "spends": [{"attempt": 0, "epsilon": plan.epsilon_after_rounds(1), "round": 1, "steps": 2}],
        "steps": 2,
    }
    (tmp_path / "privacy.json").write_text(json.dumps(old, indent=1, sort_keys=True))
    book = _book(tmp_path)
    assert book.steps == 2 and book.training_epsilon() == pytest.approx(plan.epsilon_after_rounds(1))
    with pytest.raises(AlreadyDone):
        book.admit(plan, 1, 0)
    book.record(book.admit(plan, 2, 0))
    assert json.loads((tmp_path / "privacy.json").read_text())["steps"] == 4


def test_facility_metrics_follow_the_record(tmp_path: Path, plan: DPPlan) -> None:
    seen: list[bool | None] = []
    book = FacilityPrivacy(
        tmp_path, "facility-m", SigningKey.generate(), on_change=lambda b, exhausted: seen.append(exhausted)
    )
    assert seen == [None]  # at start
    book.record(book.admit(plan, 1, 0))
    assert seen == [None, False]
    publish_metrics(book, True)
    assert REGISTRY.get_sample_value("hfl_privacy_exhausted", {"facility": "facility-m"}) == 1.0


# ---------------------------------------------------------------------------------------------- authority
def test_authority_records_only_signed_reports_of_registered_facilities(tmp_path: Path, plan: DPPlan) -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    book = PrivacyBook(tmp_path / "privacy.db")
    report = SpendReport("facility-01", 1, 0, "training", 0.3, 1e-5, steps=2).sign(key)
    with pytest.raises(Unauthenticated):
        book.record(report, other.public_bytes, "facility")
    with pytest.raises(NotAllowed):
        book.record(report, key.public_bytes, "validator")
    with pytest.raises(NotAllowed):
        book.record(report, None, None)
    forged = SpendReport("facility-01", 1, 0, "training", 0.1, 1e-5, steps=2, signature=report.signature)
    with pytest.raises(Unauthenticated):
        book.record(forged, key.public_bytes, "facility")
    assert book.record(report, key.public_bytes, "facility") == pytest.approx(0.3)
    book.record(
        SpendReport("facility-01", 0, 0, "release", 0.05, 0.0).sign(key), key.public_bytes, "facility"
    )
    with pytest.raises(InvalidInput, match="only grow"):
        book.record(
            SpendReport("facility-01", 2, 0, "training", 0.2, 1e-5).sign(key), key.public_bytes, "facility"
        )
    book.record(
        SpendReport("facility-01", 2, 0, "training", 0.5, 1e-5, exhausted=True).sign(key),
        key.public_bytes,
        "facility",
    )
    assert book.exhausted == {"facility-01"} and book.max_spent() == pytest.approx(0.55)
    book.close()
    again = PrivacyBook(tmp_path / "privacy.db")
    assert again.spent() == {"facility-01": pytest.approx(0.55)} and again.exhausted == {"facility-01"}
    again.close()


def test_authority_budget_marks_exhausted(tmp_path: Path) -> None:
    key = SigningKey.generate()
    book = PrivacyBook(tmp_path / "privacy.db", budget=1.0)
    book.record(SpendReport("f", 1, 0, "training", 1.0, 1e-5).sign(key), key.public_bytes, "facility")
    assert book.exhausted == {"f"}
    book.close()


def test_a_federation_without_an_end_says_how_long_the_budget_lasts() -> None:
    """HFL_ROUNDS=0 (compose runs rounds forever) needs HFL_DP_ROUNDS; refused at start-up otherwise."""
    from hfl.errors import ConfigError
    from hfl.rpc.settings import load_settings
    from services.leader.privacy import dp_plan_from_settings, dp_rounds

    with pytest.raises(ConfigError, match="set HFL_DP_ROUNDS"):
        load_settings(role="leader", rounds=0, dp_epsilon=1.0)
    assert dp_rounds(load_settings(role="leader", rounds=0, dp_epsilon=1.0, dp_rounds=40)) == 40
    assert dp_rounds(load_settings(role="leader", rounds=7, dp_epsilon=1.0)) == 7
    with pytest.raises(ConfigError, match="HFL_DP_ROUNDS must be a positive number of rounds"):
        load_settings(role="leader", rounds=7, dp_epsilon=1.0, dp_rounds=-1)
    plan = dp_plan_from_settings(load_settings(role="leader", rounds=0, dp_epsilon=1.0, dp_rounds=20))
    assert plan is not None and plan.rounds == 22  # 20 planned, 2 spare for retried rounds
    exact = load_settings(role="leader", rounds=0, dp_epsilon=1.0, dp_rounds=20, dp_spare_rounds=0)
    assert dp_plan_from_settings(exact).rounds == 20  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="HFL_DP_SPARE_ROUNDS"):
        dp_plan_from_settings(load_settings(role="leader", rounds=5, dp_epsilon=1.0, dp_spare_rounds=-1))


def test_spare_rounds_leave_room_for_retries() -> None:
    """A refused round trains again and spends again: the budget keeps 10 % (at least 2) spare trainings,
    so the planned rounds still fit after a few retries, and more noise is the price."""
    from hfl.privacy.federation import spare_rounds

    assert [spare_rounds(r) for r in (1, 5, 20, 21, 50, 100)] == [2, 2, 2, 3, 5, 10]
    assert spare_rounds(20, 0) == 0 and spare_rounds(20, 7) == 7
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="spare rounds"):
            spare_rounds(20, bad)  # type: ignore[arg-type]
    base = plan_dp(epsilon=1.0, delta=1e-5, rounds=20)
    spared = plan_dp(epsilon=1.0, delta=1e-5, rounds=20 + spare_rounds(20))
    assert spared.noise_multiplier > base.noise_multiplier
    assert spared.epsilon_after_rounds(22) <= spared.training_budget + 1e-9
    assert base.epsilon_after_rounds(22) > base.training_budget  # what a retry did to the old plan
