"""Evaluation through masked bucket sums: buckets grouped by specialty, the evaluation vector carried
exactly by secure aggregation, and results per specialty only for groups of at least three."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.domain import SPECIALTIES, BucketEvaluation, Metrics, RoundConfig
from hfl.errors import InvalidInput
from hfl.learning.metrics import (
    BINS,
    EVAL_CLIP,
    EVAL_VECTOR_LEN,
    clinical_metrics,
    metrics_from_vector,
    metrics_to_vector,
    specialty_results,
)
from hfl.rpc import serde
from hfl.schedule import MIN_SECURE_BUCKET, MIXED, assign_eval_buckets
from hfl.secagg.simulate import run_bucket_in_memory


def facility_metrics(rng: np.random.Generator, n: int) -> Metrics:
    """Consistent evaluation sums of a facility with ``n`` test patients (random but self-consistent)."""
    y = rng.integers(0, 2, n)
    proba = rng.random(n)
    predicted = (proba >= 0.5).astype(int)
    bins = np.clip((proba * BINS).astype(int), 0, BINS - 1)
    return Metrics(
        correct=int(np.sum(predicted == y)),
        total=n,
        loss_sum=float(rng.random() * n),
        tp=int(np.sum((predicted == 1) & (y == 1))),
        fp=int(np.sum((predicted == 1) & (y == 0))),
        tn=int(np.sum((predicted == 0) & (y == 0))),
        fn=int(np.sum((predicted == 0) & (y == 1))),
        brier_sum=float(np.sum((proba - y) ** 2)),
        positive_scores=tuple(int(c) for c in np.bincount(bins[y == 1], minlength=BINS)),
        negative_scores=tuple(int(c) for c in np.bincount(bins[y == 0], minlength=BINS)),
    )


# ---------------------------------------------------------------- evaluation buckets
specialty_maps = st.dictionaries(
    st.from_regex(r"f[0-9]{1,3}", fullmatch=True), st.sampled_from(SPECIALTIES), min_size=3, max_size=60
)


@settings(max_examples=200, deadline=None)
@given(specialty_maps, st.integers(1, 3), st.integers(3, 9), st.binary(min_size=32, max_size=32))
def test_eval_buckets_cover_everyone_once_in_groups_of_three(
    specialties: dict[str, str], n_fogs: int, bucket_size: int, seed: bytes
) -> None:
    fogs = [f"fog-{i}" for i in range(n_fogs)]
    plans = assign_eval_buckets(specialties, fogs, bucket_size, seed)
    members = [m for p in plans for m in p.members]
    assert sorted(members) == sorted(specialties)  # everyone, exactly once
    assert all(len(p.members) >= MIN_SECURE_BUCKET for p in plans)
    assert all(p.fog_id in fogs for p in plans)
    assert len({p.bucket_id for p in plans}) == len(plans)
    counts = Counter(specialties.values())
    for p in plans:
        if p.group != MIXED:  # a specialty's own bucket holds only that specialty
            assert {specialties[m] for m in p.members} == {p.group}
            assert counts[p.group] >= MIN_SECURE_BUCKET
    for s, n in counts.items():  # a specialty of fewer than three never gets a bucket of its own
        if n < MIN_SECURE_BUCKET:
            assert all(p.group != s for p in plans)
    assert plans == assign_eval_buckets(dict(reversed(list(specialties.items()))), fogs, bucket_size, seed)


def test_small_specialties_are_pooled_and_a_lone_leftover_joins_the_largest_bucket() -> None:
    seed = b"s" * 32
    twelve = {f"f{i:02d}": SPECIALTIES[i % 4] for i in range(12)}  # three of each
    plans = assign_eval_buckets(twelve, ["fog-1", "fog-2"], 4, seed)
    assert sorted(p.group for p in plans) == sorted(SPECIALTIES)
    eight = {f"f{i:02d}": SPECIALTIES[i % 4] for i in range(8)}  # two of each: all pooled
    plans = assign_eval_buckets(eight, ["fog-1"], 4, seed)
    assert [p.group for p in plans] == [MIXED, MIXED] and sum(len(p.members) for p in plans) == 8
    four_and_one = {**{f"h{i}": "hospital" for i in range(4)}, "c0": "clinic"}
    (only,) = assign_eval_buckets(four_and_one, ["fog-1"], 4, seed)
    assert only.group == MIXED and len(only.members) == 5  # one clinic alone would be a group of one


def test_the_authority_signs_evaluation_views_that_check_out() -> None:
    from hfl.crypto.signing import SigningKey
    from hfl.domain import Bucket

    key = SigningKey.generate()
    config = RoundConfig(
        round=3,
        attempt=0,
        seed=b"s" * 32,
        ledger_head=b"h" * 32,
        epoch=0,
        buckets=(Bucket("b0", "fog-1", ("a", "b", "c"), 2),),
        committee=(),
        quorum=1,
        facilities=(),
        fogs=(),
        eval_buckets=(Bucket("e0", "fog-2", ("a", "b", "c"), 2, "hospital"),),
    ).sign(key)
    view = config.bucket_view("e0").sign(key)
    back = serde.config_from_proto(serde.config_to_proto(view))
    back.verify(key.public_bytes)
    assert back.buckets == () and back.eval_buckets == config.eval_buckets
    assert back.is_bucket_view_of(config) and back.view_bucket() == config.eval_buckets[0]
    training_view = serde.config_from_proto(serde.config_to_proto(config.bucket_view("b0")))
    assert training_view.eval_buckets == () and training_view.is_bucket_view_of(config)
    with pytest.raises(KeyError):
        config.bucket_view("e9")


# ---------------------------------------------------------------- the evaluation vector
def test_metrics_survive_the_vector_round_trip_and_vectors_add_up() -> None:
    rng = np.random.default_rng(1)
    parts = [facility_metrics(rng, n) for n in (0, 1, 57, 400)]
    for m in parts:
        back = metrics_from_vector(metrics_to_vector(m))
        assert back.total == m.total and back.correct == m.correct
        assert back.loss_sum == pytest.approx(m.loss_sum) and back.positive_scores == m.positive_scores
    total = Metrics()
    for m in parts:
        total = total + m
    summed = metrics_from_vector(sum(metrics_to_vector(m) for m in parts))
    assert summed == Metrics(**{**total.__dict__, "loss_sum": summed.loss_sum, "brier_sum": summed.brier_sum})
    assert summed.loss_sum == pytest.approx(total.loss_sum) and summed.brier_sum == pytest.approx(
        total.brier_sum
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v.__setitem__(1, v[1] + 0.5), "not whole numbers"),  # half a patient
        (lambda v: v.__setitem__(0, v[1] + 1), "right than were seen"),  # more correct than seen
        (lambda v: v.__setitem__(10, np.nan), "finite"),
    ],
)
def test_a_garbled_sum_is_refused(change: object, message: str) -> None:
    v = metrics_to_vector(facility_metrics(np.random.default_rng(2), 50))
    change(v)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        metrics_from_vector(v)
    with pytest.raises(ValueError, match="must be"):
        metrics_from_vector(v[:-1])


def test_a_test_set_too_large_to_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 1,048,576 test patients"):
        metrics_to_vector(Metrics(correct=0, total=int(EVAL_CLIP) + 1))


@pytest.mark.parametrize("g", [3, 4, 8, 50])
def test_masked_bucket_sums_carry_every_count_exactly(g: int) -> None:
    """Through the real protocol in memory, with one member dropping out after sharing its keys."""
    rng = np.random.default_rng(g)
    parts = {f"m{i}": facility_metrics(rng, int(rng.integers(0, 500))) for i in range(g)}
    inputs = {m: metrics_to_vector(x) for m, x in parts.items()}
    drop = {"m0": 3} if g > 3 else {}  # with three, all three are needed to unmask
    result = run_bucket_in_memory(inputs, None, serde.eval_quant_config(g), drop_at=drop)
    got = metrics_from_vector(result.total)
    expected = Metrics()
    for m in result.members:
        expected = expected + parts[m]
    assert (got.correct, got.total, got.tp, got.fp, got.tn, got.fn) == (
        expected.correct,
        expected.total,
        expected.tp,
        expected.fp,
        expected.tn,
        expected.fn,
    )
    assert got.positive_scores == expected.positive_scores and got.negative_scores == expected.negative_scores
    assert abs(got.loss_sum - expected.loss_sum) <= g * serde.eval_quant_config(g).resolution
    assert ("m0" in result.members) == (g == 3) and result.total.size == EVAL_VECTOR_LEN


def test_buckets_too_large_for_exact_counts_are_refused() -> None:
    assert serde.eval_quant_config(2047).scale >= 1
    with pytest.raises(InvalidInput, match="at most 2047"):
        serde.eval_quant_config(2048)


# ---------------------------------------------------------------- results per specialty
def evaluation(bucket: str, group: str, parts: list[Metrics], problem: str = "") -> BucketEvaluation:
    total = Metrics()
    for p in parts:
        total = total + p
    return BucketEvaluation(bucket, group, 0 if problem else len(parts), total, problem)


def test_results_per_specialty_only_for_groups_of_three() -> None:
    rng = np.random.default_rng(3)
    h = [facility_metrics(rng, 80) for _ in range(4)]
    c = [facility_metrics(rng, 60) for _ in range(3)]
    r = [facility_metrics(rng, 40) for _ in range(2)]
    e = [facility_metrics(rng, 40) for _ in range(3)]
    specialties = {
        **{f"h{i}": "hospital" for i in range(4)},
        **{f"c{i}": "clinic" for i in range(3)},
        **{f"r{i}": "research" for i in range(2)},
        **{f"e{i}": "emergency" for i in range(3)},
    }
    evaluations = [
        evaluation("e0", "hospital", h),
        evaluation("e1", "clinic", c),
        evaluation("e2", MIXED, [*r, e[0]]),  # two research sites pooled with one emergency site
        evaluation("e3", "emergency", e[1:], problem="bucket abandoned"),
    ]
    pooled, results = specialty_results(evaluations, specialties)
    expected = Metrics()
    for m in h + c + r + [e[0]]:
        expected = expected + m
    assert pooled.total == expected.total and pooled.correct == expected.correct
    by = {x.specialty: x for x in results}
    assert list(by) == sorted(set(specialties.values()))
    hospital = by["hospital"]
    assert hospital.facilities == 4 and not hospital.not_reported
    assert hospital.accuracy == sum(m.correct for m in h) / sum(m.total for m in h)
    assert hospital.clinical == clinical_metrics(evaluations[0].metrics)
    assert by["clinic"].facilities == 3 and not by["clinic"].not_reported
    assert "only 2 research facilities" in by["research"].not_reported and by["research"].clinical is None
    assert "did not arrive" in by["emergency"].not_reported
    assert by["research"].to_dict() == {
        "specialty": "research",
        "facilities": 2,
        "not_reported": by["research"].not_reported,
    }
