"""Quality bar: FedAvg with the default training settings and update clip, simulated in memory."""

from __future__ import annotations

import numpy as np
import pytest

from hfl.learning.data import SPECIALTIES, load_facility_data
from hfl.learning.models import EvalResult, evaluate, make_model
from hfl.learning.reference import centralized_reference
from hfl.learning.train import DEFAULT_CLIP_UPDATE, DEFAULT_TRAIN, clip_update, train_local

Facility = tuple[str, tuple[int, int] | None, str | None]
SYNTHETIC_8: list[Facility] = [(s, (i, 8), None) for i, s in enumerate(SPECIALTIES * 2)]
BREAST_CANCER_8: list[Facility] = [("hospital", (i, 8), None) for i in range(8)]


def fedavg_accuracy(
    source: str, facilities: list[Facility], kind: str, *, rounds: int = 10, seed: int = 0
) -> float:
    """Unweighted mean of clipped updates each round; pooled local-test accuracy at the end."""
    fds = [load_facility_data(source, specialty=s, shard=sh, seed=seed) for s, sh, _ in facilities]
    model = make_model(kind, fds[0].train.d)
    w = model.init_params(0)
    for r in range(rounds):
        deltas = []
        for i, fd in enumerate(fds):
            wi = train_local(model, w, fd.train, DEFAULT_TRAIN, np.random.default_rng([seed, r, i]))
            deltas.append(clip_update(wi - w, DEFAULT_CLIP_UPDATE))
        w = w + np.mean(deltas, axis=0)
    return sum((evaluate(model, w, fd.test) for fd in fds), EvalResult(0, 0, 0.0)).accuracy


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_synthetic_fedavg_matches_centralised(kind: str) -> None:
    fed = fedavg_accuracy("synthetic", SYNTHETIC_8, kind)
    ref = centralized_reference("synthetic", facilities=SYNTHETIC_8, seed=0, model_kind=kind)
    assert fed >= ref - 0.02, (fed, ref)
    assert fed > 0.78  # well above the ~0.74 of always predicting "no event"


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_breast_cancer_fedavg_reaches_95(kind: str) -> None:
    fed = fedavg_accuracy("breast_cancer", BREAST_CANCER_8, kind)
    assert fed >= 0.95, fed
