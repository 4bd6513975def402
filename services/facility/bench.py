"""A facility for benchmarks only (HFL_BENCH_UPDATES=true): instead of training, it sends a random
update of the global model's size, so the cost of the protocol itself can be measured for any model
dimension. Everything else (identity, round checks, the fog exchange, secure aggregation) is the real
facility's code path. Never use it with patient data: its updates carry no learning."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from typing_extensions import override  # mypy checks that each overridden facility method still exists

from hfl.domain import Metrics, ModelSpec, TrainingPlan
from hfl.learning.data import Dataset
from hfl.learning.train import clip_update
from hfl.rpc import serde
from services.facility.service import Facility

log = logging.getLogger("hfl.facility")


class BenchFacility(Facility):
    """A facility whose local work is one random vector (the model's architecture is not checked
    against local data, since the benchmark picks the dimension freely)."""

    @override
    def load_model(
        self, request_model: Any, data: memoryview | None = None
    ) -> tuple[ModelSpec, np.ndarray, Any]:
        _ = self.data  # NotReady until registered, like the real facility
        spec, params, _round = serde.model_from_proto(request_model, data=data)
        return spec, params, None

    @override
    def honest_update(
        self, model: Any, params: np.ndarray, plan: TrainingPlan, rng: np.random.Generator, data: Dataset
    ) -> np.ndarray:
        # Not secret: a seeded per-facility, per-round stream (see Facility.round_rng).
        update = rng.standard_normal(params.size) * (plan.clip_update / max(1.0, np.sqrt(params.size)))
        return clip_update(update, plan.clip_update)

    @override
    def evaluate(self, model: Any, params: np.ndarray) -> Metrics:
        return Metrics()  # no data to test on: the evaluation exchange itself is what is measured
