"""Clinical metrics from summed counts: they equal scikit-learn's on the pooled predictions (AUC within
0.01, the rest exactly), pool in any order, and inconsistent reports are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

from hfl.domain import Metrics
from hfl.errors import InvalidInput
from hfl.learning.data import SPECIALTIES, load_facility_data
from hfl.learning.metrics import BINS, check_counts, clinical_metrics, evaluate_counts, histogram_auc
from hfl.learning.models import evaluate, make_model
from hfl.rpc import serde


def facilities(n: int = 6, seed: int = 4):
    return [
        load_facility_data(
            "synthetic", specialty=SPECIALTIES[i % 4], shard=(i, n), seed=seed, stream=f"f{i}"
        ).test
        for i in range(n)
    ]


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_pooled_counts_match_scikit_learn_on_the_pooled_predictions(kind: str) -> None:
    tests = facilities()
    model = make_model(kind, tests[0].d, 8)
    params = model.init_params(3) + np.random.default_rng(1).normal(scale=0.3, size=model.n_params)
    pooled = sum((evaluate_counts(model, params, t) for t in tests), Metrics())
    y = np.concatenate([t.y for t in tests])
    proba = np.concatenate([model.predict_proba(params, t.X) for t in tests])
    pred = np.concatenate([(model._logits(params, t.X)[0] >= 0).astype(int) for t in tests])
    c = clinical_metrics(pooled)
    assert c is not None
    assert abs(c.auc - roc_auc_score(y, proba)) < 0.01
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (pooled.tp, pooled.fp, pooled.tn, pooled.fn) == (tp, fp, tn, fn)
    assert c.sensitivity == tp / (tp + fn) and c.specificity == tn / (tn + fp)
    assert c.ppv == tp / (tp + fp) and c.npv == tn / (tn + fn)
    assert c.brier == pytest.approx(brier_score_loss(y, proba), abs=1e-12)
    assert c.baseline_accuracy == max(y.mean(), 1 - y.mean())
    # the old counts are unchanged
    old = sum(evaluate(model, params, t) for t in tests)
    assert (pooled.correct, pooled.total) == (old.correct, old.total)
    assert pooled.loss_sum == pytest.approx(old.loss_sum)
    check_counts(pooled)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=BINS, max_size=BINS),
    st.lists(st.integers(0, 40), min_size=BINS, max_size=BINS),
)
def test_histogram_auc_is_the_tie_corrected_pair_count(pos: list[int], neg: list[int]) -> None:
    p, n = np.array(pos), np.array(neg)
    auc = histogram_auc(p, n)
    if p.sum() == 0 or n.sum() == 0:
        assert np.isnan(auc)
        return
    # brute force over bins: each positive-negative pair scores 1 if higher, 1/2 if the same bin
    wins = sum(
        p[i] * n[j] * (1.0 if i > j else 0.5 if i == j else 0.0)
        for i in np.flatnonzero(p)
        for j in np.flatnonzero(n)
    )
    assert auc == pytest.approx(wins / (p.sum() * n.sum()))


def test_pooling_is_order_free_and_empty_parts_add_nothing() -> None:
    tests = facilities(4)
    model = make_model("logreg", tests[0].d)
    params = model.init_params(0)
    parts = [evaluate_counts(model, params, t) for t in tests]
    forward = sum(parts, Metrics())
    backward = sum(reversed(parts), Metrics())
    assert forward.positive_scores == backward.positive_scores and forward.tp == backward.tp
    assert (forward + Metrics()).negative_scores == forward.negative_scores
    # a part with patients but no histogram (an older facility): no pooled histogram, no AUC
    partial = forward + Metrics(correct=1, total=2, loss_sum=1.0, tp=1, fn=1)
    assert partial.positive_scores == ()
    c = clinical_metrics(partial)
    assert c is not None and np.isnan(c.auc)


def test_inconsistent_reports_are_refused_at_the_boundary() -> None:
    tests = facilities(1)
    model = make_model("logreg", tests[0].d)
    good = evaluate_counts(model, model.init_params(0), tests[0])
    assert serde.metrics_from_proto(serde.metrics_to_proto(good)) == good
    bad = [
        serde.metrics_to_proto(good),
        serde.metrics_to_proto(good),
        serde.metrics_to_proto(good),
        serde.metrics_to_proto(good),
    ]
    bad[0].tp += 1  # the confusion matrix no longer adds up
    bad[1].positive_scores[0] += 5  # histograms disagree with the confusion matrix
    bad[2].negative_scores.append(1)  # wrong number of bins
    bad[3].brier_sum = good.total + 1.0  # more squared error than patients
    for msg in bad:
        with pytest.raises(InvalidInput, match=r"inconsistent|more than 200 bins"):
            serde.metrics_from_proto(msg)
    with pytest.raises(ValueError):
        check_counts(Metrics(correct=3, total=2))
