"""The centralised reference: one model trained on the pooled data of a federation's facilities.

What a federation's accuracy is compared with (``hfl demo``, bench/specialty.py). It lives apart from
data.py so that the data loaders do not depend on the models and training that depend on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hfl.learning.data import DataError, Dataset, load_facility_data
from hfl.learning.models import evaluate, make_model
from hfl.learning.train import DEFAULT_TRAIN, TrainConfig, train_local

__all__ = ["centralized_reference"]


def centralized_reference(
    source: str,
    *,
    facilities: list[tuple[str, tuple[int, int] | None, str | None]],
    seed: int,
    model_kind: str,
    label: str | None = None,
    **train_kwargs: Any,
) -> float:
    """Accuracy of one model trained on the pooled training splits of exactly these facilities.

    Each facility is (specialty, shard, csv file or None) and is loaded as that facility would load it.
    The model is evaluated on the pooled local test sets. Training budget matches the federation:
    ``rounds`` (default 10) x ``cfg.epochs`` passes over the pooled data with the same learning rate and
    batch size. Accepted ``train_kwargs``: ``cfg`` (TrainConfig, default DEFAULT_TRAIN), ``rounds``,
    ``hidden`` (mlp width, default 16), ``init_seed`` (default 0), ``n_patients`` and ``test_fraction``
    (passed to load_facility_data).
    """
    allowed = {"cfg", "rounds", "hidden", "init_seed", "n_patients", "test_fraction"}
    unknown = set(train_kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    cfg: TrainConfig = train_kwargs.get("cfg", DEFAULT_TRAIN)
    rounds = train_kwargs.get("rounds", 10)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DataError(f"rounds must be a positive integer, got {rounds!r}")
    if not facilities:
        raise DataError("no facilities given for the centralised reference")
    load_kw: dict[str, Any] = {
        k: train_kwargs[k] for k in ("n_patients", "test_fraction") if k in train_kwargs
    }
    trains: list[Dataset] = []
    tests: list[Dataset] = []
    for specialty, shard, csv_file in facilities:
        src = source if csv_file is None else f"csv:{csv_file}"
        fd = load_facility_data(src, specialty=specialty, shard=shard, seed=seed, label=label, **load_kw)
        trains.append(fd.train)
        tests.append(fd.test)
    pooled_train = Dataset.concat(trains)
    pooled_test = Dataset.concat(tests)
    model = make_model(model_kind, pooled_train.d, train_kwargs.get("hidden", 16))
    params = model.init_params(train_kwargs.get("init_seed", 0))
    budget = TrainConfig(lr=cfg.lr, epochs=cfg.epochs * rounds, batch_size=cfg.batch_size)
    params = train_local(model, params, pooled_train, budget, np.random.default_rng([seed, 99]))
    return evaluate(model, params, pooled_test).accuracy
