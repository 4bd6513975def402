"""Facilities that misbehave on purpose, for experiments and tests only. The honest facility
(service.py, secure.py) has no code for any of this: ``main.facility_class`` picks these subclasses only
when an experiment setting is given:

- HFL_BYZANTINE (an attack from hfl.robust.attacks, ``label_flip`` or ``stall``): a Byzantine facility;
- HFL_DROP_RATE: the demo's drop-outs, rolled by each facility from its own setting (nothing about them
  is sent on the wire);
- HFL_CRASH_AT_STAGE (fault-injection tests): die at once, as under kill -9, at one secure-aggregation
  stage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import Any, NoReturn

import numpy as np
from typing_extensions import override  # mypy checks that each overridden facility method still exists

from hfl.domain import Bucket, NodeInfo, RoundConfig, TrainingPlan
from hfl.errors import NotReady
from hfl.learning.data import Dataset, FacilityData
from hfl.privacy.facility import Admission
from hfl.proto.v1 import facility_pb2
from hfl.robust.attacks import apply_attack, flip_labels
from hfl.rpc import serde
from hfl.rpc.link import Lifted, unlift
from hfl.rpc.settings import STALL, FacilitySettings
from hfl.secagg import STAGE_NAMES
from services.facility.bench import BenchFacility
from services.facility.secure import MemberHost, SecureAggregation, Session, SessionKey
from services.facility.service import Facility, parse_shard

log = logging.getLogger("hfl.facility")

COLLUDING = ("alie", "ipm")  # attacks that need what honest facilities would send


def is_experiment(settings: FacilitySettings) -> bool:
    """Whether this facility misbehaves on purpose (any experiment or fault-injection setting)."""
    return settings.byzantine != "none" or settings.drop_rate > 0 or settings.crash_at_stage != 0


async def stall(round_: int) -> None:
    """HFL_BYZANTINE=stall: accept the round, then never send the update (nor the masked input)."""
    log.warning("round %d: stalling on purpose (HFL_BYZANTINE=stall): the update is never sent", round_)
    await asyncio.sleep(24 * 3600)


def drops_out(rate: float) -> bool:
    """The demo drop-out roll: True with probability ``rate`` (HFL_DROP_RATE; never when it is 0)."""
    return rate > 0 and secrets.randbelow(1_000_000) < rate * 1_000_000


class FaultySecureAggregation(SecureAggregation):
    """Secure aggregation that drops out at a random stage (HFL_DROP_RATE), stalls before the masked
    input (HFL_BYZANTINE=stall), or kills the process at one stage (HFL_CRASH_AT_STAGE)."""

    def __init__(self, facility: MemberHost, settings: FacilitySettings) -> None:
        super().__init__(facility)
        self.crash_at_stage = settings.crash_at_stage
        self.drop_rate = settings.drop_rate
        self.stalls = settings.byzantine == STALL
        self._drop_stage: dict[SessionKey, int] = {}  # training sessions this facility will drop out of

    def _crash(self, stage: int) -> None:
        if self.crash_at_stage == stage:
            log.warning(
                "crashing on purpose at stage '%s' (HFL_CRASH_AT_STAGE, tests only)", STAGE_NAMES[stage]
            )
            logging.shutdown()
            os._exit(137)

    def _drop(self, sess: Session, stage: int) -> NoReturn:
        self._sessions.pop(sess.key, None)
        self._drop_stage.pop(sess.key, None)
        sess.stop()
        log.info(
            "%s: dropping out of secure aggregation at stage '%s' on purpose (demo drop rate %.2f)",
            self._where(sess.key),
            STAGE_NAMES[stage],
            self.drop_rate,
        )
        raise NotReady(f"this facility dropped out of {self._where(sess.key)} on purpose (demo drop rate)")

    @override
    def _session(self, proto: facility_pb2.SecAggSession, stage: int) -> Session:
        sess = super()._session(proto, stage)
        self._crash(stage)
        drop_stage = self._drop_stage.get(sess.key)
        if drop_stage is not None and stage >= drop_stage:
            self._drop(sess, stage)
        return sess

    @override
    async def advertise(
        self, call: facility_pb2.SecAggAdvertiseRequest | Lifted
    ) -> facility_pb2.SecAggAdvertiseResponse:
        request, _ = unlift(call)
        config = serde.config_from_proto(request.config)  # checked by the honest code below
        training = not any(b.bucket_id == request.bucket_id for b in config.eval_buckets)
        if training:
            self._crash(1)
        response = await super().advertise(call)
        key: SessionKey = (config.round, config.attempt, request.bucket_id)
        for old in [k for k in self._drop_stage if k not in self._sessions]:
            del self._drop_stage[old]
        sess = self._sessions.get(key)
        if training and sess is not None and drops_out(self.drop_rate):
            self._drop_stage[key] = 1 + secrets.randbelow(4)
            if self._drop_stage[key] == 1:
                self._drop(sess, 1)
        return response

    @override
    async def masked_input(self, request: facility_pb2.SecAggMaskedInputRequest) -> Lifted:
        if self.stalls:
            sess = self._session(request.session, 3)
            await stall(sess.key[0])
        return await super().masked_input(request)


class FaultyFacility(Facility):
    """A facility that attacks (HFL_BYZANTINE), drops out (HFL_DROP_RATE) or crashes (HFL_CRASH_AT_STAGE)
    on purpose. Each facility rolls its own drop-outs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secure = FaultySecureAggregation(self, self.settings)
        self._peer_data: list[Dataset] | None = None

    @override
    def ready(self, data: FacilityData, authority_key: bytes) -> None:
        super().ready(data, authority_key)
        if self.settings.byzantine == "label_flip":
            self.train_set = Dataset(data.train.X, flip_labels(data.train.y), data.train.feature_names)
        if self.settings.byzantine != "none":
            log.warning("this facility is BYZANTINE for experiments: attack %r", self.settings.byzantine)

    @override
    def local_update(
        self,
        model: Any,
        params: np.ndarray,
        plan: TrainingPlan,
        rng: np.random.Generator,
        admission: Admission | None = None,
    ) -> np.ndarray:
        delta = super().local_update(model, params, plan, rng, admission)
        attack = self.settings.byzantine
        if attack in ("none", "label_flip", STALL):
            return delta
        peers = self.peer_updates(model, params, plan, rng) if attack in COLLUDING else None
        return apply_attack(attack, delta, rng=rng, scale=self.settings.byzantine_scale, peers=peers)

    def peer_updates(
        self, model: Any, params: np.ndarray, plan: TrainingPlan, rng: np.random.Generator
    ) -> np.ndarray:
        """What honest facilities of this federation would send (colluding attacks, as in the papers):
        simulated by training on the data other shards of the same source would hold."""
        if self._peer_data is None:
            from hfl.learning.data import SPECIALTIES, load_facility_data

            shard = parse_shard(self.settings.shard) or (0, 1)
            n = max(shard[1], 5)
            source = self.settings.dataset
            self._peer_data = (
                []
                if source.startswith("csv:")
                else [
                    load_facility_data(
                        source,
                        specialty=SPECIALTIES[j % 4],
                        shard=(j, n),
                        seed=self.settings.seed,
                        label=self.settings.label,
                    ).train
                    for j in range(n)
                    if j != shard[0]
                ][:4]
            )
        rows = [self.honest_update(model, params, plan, rng, d) for d in self._peer_data]
        rows.append(self.honest_update(model, params, plan, rng, self.data.train))
        return np.stack(rows)

    @override
    async def _train_and_submit(
        self,
        config: RoundConfig,
        bucket: Bucket,
        fog: NodeInfo,
        model: Any,
        params: np.ndarray,
        plan: TrainingPlan,
        admission: Admission | None = None,
    ) -> None:
        if drops_out(self.settings.drop_rate):
            log.info(
                "round %d: dropping out on purpose (drop rate %.2f)", config.round, self.settings.drop_rate
            )
            return
        if self.settings.byzantine == STALL:
            await stall(config.round)
        await super()._train_and_submit(config, bucket, fog, model, params, plan, admission)


class FaultyBenchFacility(FaultyFacility, BenchFacility):
    """A benchmark facility (random updates, HFL_BENCH_UPDATES) that also misbehaves on purpose."""


def facility_class(settings: FacilitySettings) -> type[Facility]:
    """The facility a process runs: the honest one unless a benchmark or experiment setting asks."""
    if is_experiment(settings):
        return FaultyBenchFacility if settings.bench_updates else FaultyFacility
    return BenchFacility if settings.bench_updates else Facility
