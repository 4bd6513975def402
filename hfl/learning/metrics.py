"""Clinical metrics from counts that add up across facilities.

Every facility reports, for its held-out patients, only sums: the confusion matrix at the 0.5 decision
threshold, the summed squared error of its probabilities, and two histograms of predicted probabilities
(:data:`BINS` equal bins over [0, 1]): one for patients with the outcome, one for those without. Sums of
these over facilities (or over masked bucket sums) give the pooled metrics exactly, except ROC AUC, which
is computed from the histograms: pairs whose scores fall in the same bin count as ties (one half), so
the pooled AUC differs from the exact one by at most half the share of positive-negative pairs that
share a bin (typically well under 0.01 with 200 bins).

Definitions (TP: outcome predicted and present; FP: predicted, absent; TN, FN likewise):
sensitivity TP/(TP+FN), specificity TN/(TN+FP), PPV TP/(TP+FP), NPV TN/(TN+FN), Brier score the mean of
(probability − outcome)², baseline accuracy max(P, N)/(P+N) — what "predict the more common class for
everyone" would score — and prevalence P/(P+N).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hfl.domain import BucketEvaluation, ClinicalMetrics, Metrics, SpecialtyResult
from hfl.learning.data import Dataset
from hfl.learning.models import Model, _bce

BINS = 200
THRESHOLD = 0.5


def score_bins(proba: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The histogram bin of each probability, kept on the side of the threshold its prediction is on
    (so the histograms agree exactly with the confusion matrix even where rounding puts a probability
    of 0.4999999 at 0.5)."""
    idx = np.clip(np.floor(np.asarray(proba) * BINS).astype(np.int64), 0, BINS - 1)
    half = int(BINS * THRESHOLD)
    return np.where(predicted.astype(bool), np.maximum(idx, half), np.minimum(idx, half - 1))


def evaluate_counts(model: Model, params: np.ndarray, data: Dataset) -> Metrics:
    """All of a facility's evaluation sums for ``params`` on ``data``."""
    p = model.check_params(params)
    if data.d != model.n_features:
        raise ValueError(f"the data has {data.d} features but the model expects {model.n_features}")
    if data.n == 0:
        return Metrics(positive_scores=(0,) * BINS, negative_scores=(0,) * BINS)
    z, _ = model._logits(p, data.X)
    y = data.y.astype(np.int64)
    predicted = (z >= 0).astype(np.int64)
    proba = model.predict_proba(p, data.X)
    bins = score_bins(proba, predicted)
    pos = np.bincount(bins[y == 1], minlength=BINS)
    neg = np.bincount(bins[y == 0], minlength=BINS)
    return Metrics(
        correct=int(np.sum(predicted == y)),
        total=data.n,
        loss_sum=float(np.sum(_bce(z, y.astype(np.float64)))),
        tp=int(np.sum((predicted == 1) & (y == 1))),
        fp=int(np.sum((predicted == 1) & (y == 0))),
        tn=int(np.sum((predicted == 0) & (y == 0))),
        fn=int(np.sum((predicted == 0) & (y == 1))),
        brier_sum=float(np.sum((proba - y) ** 2)),
        positive_scores=tuple(int(c) for c in pos),
        negative_scores=tuple(int(c) for c in neg),
    )


def check_counts(m: Metrics) -> None:
    """Raise ValueError unless the sums are consistent with each other (a bad or garbled report)."""
    counts = (m.correct, m.total, m.tp, m.fp, m.tn, m.fn)
    if any(c < 0 for c in counts) or m.correct > m.total:
        raise ValueError("evaluation counts are negative or more patients were right than were seen")
    if not (np.isfinite(m.loss_sum) and m.loss_sum >= 0 and np.isfinite(m.brier_sum)):
        raise ValueError("evaluation sums are not finite non-negative numbers")
    if not 0 <= m.brier_sum <= m.total:
        raise ValueError("the summed squared error is larger than the number of patients")
    if m.tp + m.fp + m.tn + m.fn not in (0, m.total) or (
        m.tp + m.tn + m.fp + m.fn and m.tp + m.tn != m.correct
    ):
        raise ValueError("the confusion matrix does not add up to the evaluated patients")
    for h in (m.positive_scores, m.negative_scores):
        if h and (len(h) != BINS or any(c < 0 for c in h)):
            raise ValueError(f"a score histogram must have {BINS} non-negative counts")
    if (m.positive_scores and m.negative_scores) and (
        sum(m.positive_scores) != m.tp + m.fn or sum(m.negative_scores) != m.tn + m.fp
    ):
        raise ValueError("the score histograms do not match the confusion matrix")


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def histogram_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a patient with the outcome > score of one without), ties (same bin) counted half."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins
    return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))


def clinical_metrics(m: Metrics) -> ClinicalMetrics | None:
    """The pooled clinical metrics, or None when the counts carry no confusion matrix (older reports)."""
    positives, negatives = m.tp + m.fn, m.tn + m.fp
    if positives + negatives == 0:
        return None
    total = positives + negatives
    auc = (
        histogram_auc(np.array(m.positive_scores), np.array(m.negative_scores))
        if m.positive_scores and m.negative_scores
        else float("nan")
    )
    return ClinicalMetrics(
        auc=auc,
        sensitivity=_ratio(m.tp, positives),
        specificity=_ratio(m.tn, negatives),
        ppv=_ratio(m.tp, m.tp + m.fp),
        npv=_ratio(m.tn, m.tn + m.fn),
        brier=m.brier_sum / total,
        baseline_accuracy=max(positives, negatives) / total,
        prevalence=positives / total,
    )


# ---------------------------------------------------------------- evaluation through masked sums
_COUNTS = ("correct", "total", "loss_sum", "tp", "fp", "tn", "fn", "brier_sum")
EVAL_VECTOR_LEN = len(_COUNTS) + 2 * BINS
# The largest value one facility may put in its evaluation vector (its number of test patients, and
# its summed loss). Secure aggregation quantises with a power-of-two scale chosen from this bound and
# the bucket size; for buckets of up to 256 facilities that scale is at least 4, so every count is
# carried exactly and the two float sums (rounded at random, without bias) to within 1/4 per facility.
EVAL_CLIP = float(2**20)


def metrics_to_vector(m: Metrics) -> np.ndarray:
    """A facility's evaluation sums as one vector for masked bucket sums (histograms included; a report
    without histograms sends zeros there). Raises ValueError if a value is too large to be carried."""
    head = np.array([float(getattr(m, k)) for k in _COUNTS], dtype=np.float64)
    pos = np.asarray(m.positive_scores or (0,) * BINS, dtype=np.float64)
    neg = np.asarray(m.negative_scores or (0,) * BINS, dtype=np.float64)
    v = np.concatenate([head, pos, neg])
    if v.size != EVAL_VECTOR_LEN or not np.all(np.isfinite(v)) or np.any(np.abs(v) > EVAL_CLIP):
        raise ValueError(
            f"this facility's evaluation sums cannot be sent through secure aggregation (more than "
            f"{int(EVAL_CLIP):,} test patients, or a summed loss that large)"
        )
    return v


def metrics_from_vector(v: np.ndarray) -> Metrics:
    """The summed evaluation of a bucket from its unmasked sum vector. Counts must be whole numbers (a
    bucket sum that is not is garbled) and the result must pass check_counts; raises ValueError."""
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (EVAL_VECTOR_LEN,) or not np.all(np.isfinite(v)):
        raise ValueError(f"an evaluation sum must be {EVAL_VECTOR_LEN} finite numbers")
    ints = np.rint(v)
    whole = np.ones(EVAL_VECTOR_LEN, dtype=bool)
    whole[[_COUNTS.index("loss_sum"), _COUNTS.index("brier_sum")]] = False
    if np.any(np.abs(v[whole] - ints[whole]) > 1e-6):
        raise ValueError("an evaluation sum has counts that are not whole numbers")
    head = dict(zip(_COUNTS, v[: len(_COUNTS)], strict=True))
    m = Metrics(
        correct=int(ints[0]),
        total=int(ints[1]),
        loss_sum=max(0.0, float(head["loss_sum"])),
        tp=int(ints[3]),
        fp=int(ints[4]),
        tn=int(ints[5]),
        fn=int(ints[6]),
        brier_sum=min(max(0.0, float(head["brier_sum"])), float(ints[1])),
        positive_scores=tuple(int(c) for c in ints[len(_COUNTS) : len(_COUNTS) + BINS]),
        negative_scores=tuple(int(c) for c in ints[len(_COUNTS) + BINS :]),
    )
    check_counts(m)
    return m


# ---------------------------------------------------------------- results per specialty
def specialty_results(
    evaluations: Sequence[BucketEvaluation], specialties: Mapping[str, str], min_group: int = 3
) -> tuple[Metrics, tuple[SpecialtyResult, ...]]:
    """Pool the evaluation buckets of a round: the sum over every bucket that gave one, and a result for
    each specialty whose own buckets (``group`` = that specialty) hold at least ``min_group``
    facilities. ``specialties`` maps each facility scheduled for the round to its specialty, so every
    specialty that took part gets a line: results, or in plain words why there are none."""
    pooled = Metrics()
    by_group: dict[str, tuple[int, Metrics]] = {}
    for e in evaluations:
        if e.problem or e.facilities == 0:
            continue
        pooled = pooled + e.metrics
        n, m = by_group.get(e.group, (0, Metrics()))
        by_group[e.group] = (n + e.facilities, m + e.metrics)
    members: dict[str, int] = {}
    for s in specialties.values():
        members[s] = members.get(s, 0) + 1
    out = []
    for specialty in sorted(members):
        n, m = by_group.get(specialty, (0, Metrics()))
        total = members[specialty]
        if total < min_group:
            why = (
                f"only {total} {specialty} facilit{'y' if total == 1 else 'ies'} took part; results are "
                f"shown for groups of at least {min_group}, so that no single site's numbers can be "
                "worked out"
            )
            out.append(SpecialtyResult(specialty, total, not_reported=why))
        elif n < min_group:
            why = (
                f"the test results of the {specialty} facilities did not arrive this round (their "
                "evaluation groups dropped out or were mixed with other specialties)"
            )
            out.append(SpecialtyResult(specialty, n, not_reported=why))
        else:
            out.append(SpecialtyResult(specialty, n, m.accuracy, m.loss, clinical_metrics(m)))
    return pooled, tuple(out)
