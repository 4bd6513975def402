"""A facility: holds patient data, trains on the global model, sends only its (clipped) update."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import grpc
import numpy as np

from hfl.domain import Bucket, Metrics, ModelSpec, NodeInfo, RoundConfig, TrainingPlan
from hfl.errors import ConfigError, InvalidInput, NotAllowed, NotReady, StaleRound, clip
from hfl.learning.data import Dataset, FacilityData
from hfl.learning.metrics import evaluate_counts
from hfl.learning.models import make_model
from hfl.learning.train import TrainConfig, clip_update, train_local
from hfl.memory import release_soon
from hfl.privacy.facility import Admission
from hfl.proto.v1 import common_pb2 as pb
from hfl.proto.v1 import facility_pb2, fog_pb2, fog_pb2_grpc
from hfl.rpc import authz, serde
from hfl.rpc.client import call, describe_rpc_error
from hfl.rpc.link import Lifted
from hfl.rpc.metrics import ROUND
from hfl.rpc.node import load_identity
from hfl.rpc.server import Channels
from hfl.rpc.settings import FacilitySettings
from hfl.rpc.tls import Peer
from services.facility.privacy import PrivacyGate
from services.facility.secure import SecureAggregation

log = logging.getLogger("hfl.facility")


def parse_shard(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"HFL_SHARD must look like I/N (e.g. 2/8), got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"HFL_SHARD {text!r}: I must be between 0 and N-1")
    return i, n


class Facility:
    """Answers its fog's calls (they arrive over the connection the facility opened, dial.py); each
    method is named like the call it answers (hfl.rpc.link.CALLS) and takes the request message."""

    def __init__(self, settings: FacilitySettings, node_id: str, channels: Channels) -> None:
        self.settings = settings
        self.node_id = node_id
        self.channels = channels
        self._data: FacilityData | None = None
        self.authority_key = b""
        self.last_round = 0
        self.last_contact = time.monotonic()  # when a fog last called on us (see keep_registered)
        self._tasks: set[asyncio.Task[None]] = set()
        self.signing_key = load_identity(settings.state_dir)  # the identity it registers with
        self.secure = SecureAggregation(self)
        self.privacy = PrivacyGate(self)  # differential privacy budget and accounting (privacy.py)

    def ready(self, data: FacilityData, authority_key: bytes) -> None:
        """Called once registered and the data are loaded; until then RPCs answer UNAVAILABLE."""
        self._data = data
        self.authority_key = authority_key
        self.train_set = data.train  # what it trains on (an experiment's facility may alter it, faults.py)

    @property
    def data(self) -> FacilityData:
        if self._data is None:
            raise NotReady("this facility is still starting (registering or loading its data)")
        return self._data

    # ------------------------------------------------------------------ checks at the boundary
    def load_model(
        self, request_model: Any, data: memoryview | None = None
    ) -> tuple[ModelSpec, np.ndarray, Any]:
        """The call's model, checked against this facility's data; ``data``: its parameters' bytes, lifted
        out of the call (the parameters are then a read-only view of them)."""
        spec, params, _ = serde.model_from_proto(request_model, data=data)
        if spec.n_features != self.data.train.d:
            raise InvalidInput(
                f"the model expects {spec.n_features} features but this facility's data has "
                f"{self.data.train.d}"
            )
        model = make_model(spec.kind, spec.n_features, spec.hidden)
        if params.size != model.n_params:
            raise InvalidInput(f"the model should have {model.n_params} parameters, got {params.size}")
        return spec, params, model

    def round_config(self, request_config: Any) -> RoundConfig:
        config = serde.config_from_proto(request_config)
        config.verify(self.authority_key)
        self.last_contact = time.monotonic()  # a fog called on us with a round the authority signed
        if config.round < self.last_round:
            raise StaleRound(
                f"round {config.round} is over; this facility is already in round {self.last_round}"
            )
        return config

    def my_bucket(
        self, config: RoundConfig, bucket_id: str, what: str, *, evaluation: bool = False
    ) -> Bucket:
        """The bucket this call is about (a training bucket, or with ``evaluation`` an evaluation
        bucket): it must be in the round, list this facility, and the caller must be that bucket's own
        fog."""
        try:
            bucket = config.eval_bucket(bucket_id) if evaluation else config.bucket(bucket_id)
        except KeyError:
            raise InvalidInput(f"bucket {clip(bucket_id)} is not part of round {config.round}") from None
        if self.node_id not in bucket.members:
            raise NotAllowed(
                f"this facility is not a member of bucket {bucket.bucket_id} in round {config.round}"
            )
        authz.require_caller_is(bucket.fog_id, what)  # only the bucket's own fog
        return bucket

    def _plain_allowed(self, what: str) -> None:
        """The plain path hands this facility's own numbers to its fog. With HFL_SECAGG=true (the
        default) the facility refuses it, whatever the request says: the round's plan is not signed by
        the authority, so a fog could otherwise ask for a plain round to see one facility's update."""
        if self.settings.secagg:
            raise NotAllowed(
                f"this facility sends {what} only inside masked group sums (HFL_SECAGG=true); "
                "set HFL_SECAGG=false at every facility to allow plain sums for experiments"
            )

    # ------------------------------------------------------------------ RPCs
    async def StartRound(
        self, request: facility_pb2.StartRoundRequest, context: object = None
    ) -> facility_pb2.StartRoundResponse:
        config = self.round_config(request.config)
        bucket = self.my_bucket(config, request.bucket_id, "StartRound for this bucket")
        self._plain_allowed("its model update")
        _spec, params, model = self.load_model(request.model)
        plan = serde.plan_from_proto(request.plan)
        admission = await self.privacy.admit(config, plan)  # declines (NotAllowed) when out of budget
        self.last_round = config.round
        ROUND.set(config.round)
        task = asyncio.create_task(
            self._train_and_submit(config, bucket, config.node(bucket.fog_id), model, params, plan, admission)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return facility_pb2.StartRoundResponse()

    async def EvaluateModel(
        self, request: facility_pb2.EvaluateModelRequest, context: object = None
    ) -> facility_pb2.EvaluateModelResponse:
        self._plain_allowed("its test results")
        _spec, params, model = self.load_model(request.model)
        counts = await asyncio.to_thread(self.evaluate, model, params)
        return facility_pb2.EvaluateModelResponse(metrics=serde.metrics_to_proto(counts))

    def evaluate(self, model: Any, params: np.ndarray) -> Metrics:
        """This facility's test sums for a model (on the plain path they are sent as they are; on the
        secure path they go into a masked bucket sum, services/facility/secure.py)."""
        return evaluate_counts(model, params, self.data.test)

    # ------------------------------------------------------------------ secure aggregation (secure.py)
    async def SecAggAdvertise(
        self, request: facility_pb2.SecAggAdvertiseRequest | Lifted, context: object = None
    ) -> facility_pb2.SecAggAdvertiseResponse:
        return await self.secure.advertise(request)

    async def SecAggShareKeys(
        self, request: facility_pb2.SecAggShareKeysRequest, context: object = None
    ) -> facility_pb2.SecAggShareKeysResponse:
        return await self.secure.share_keys(request)

    async def SecAggMaskedInput(
        self, request: facility_pb2.SecAggMaskedInputRequest, context: object = None
    ) -> Lifted:  # the response and its vector, written as one message by hfl.rpc.link.encode_reply
        return await self.secure.masked_input(request)

    async def SecAggUnmask(
        self, request: facility_pb2.SecAggUnmaskRequest, context: object = None
    ) -> facility_pb2.SecAggUnmaskResponse:
        return await self.secure.unmask(request)

    # ------------------------------------------------------------------ local work
    def round_rng(self, config: RoundConfig) -> np.random.Generator:
        digest = hashlib.sha256(
            f"{self.settings.seed}/{self.node_id}/{config.round}/{config.attempt}".encode()
        )
        return np.random.default_rng(int.from_bytes(digest.digest()[:8], "big"))

    def honest_update(
        self, model: Any, params: np.ndarray, plan: TrainingPlan, rng: np.random.Generator, data: Dataset
    ) -> np.ndarray:
        cfg = TrainConfig(lr=plan.lr, epochs=plan.epochs, batch_size=plan.batch_size)
        new = train_local(model, params, data, cfg, rng)
        return clip_update(new - params, plan.clip_update)

    def local_update(
        self,
        model: Any,
        params: np.ndarray,
        plan: TrainingPlan,
        rng: np.random.Generator,
        admission: Admission | None = None,
    ) -> np.ndarray:
        if admission is not None or plan.dp is not None:
            return self.privacy.private_update(model, params, plan, admission, self.train_set)
        return self.honest_update(model, params, plan, rng, self.train_set)

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
        try:
            delta = await asyncio.to_thread(
                self.local_update, model, params, plan, self.round_rng(config), admission
            )
            await self.privacy.flush(config.round, config.attempt)  # the authority hears of the spend first
            stub = fog_pb2_grpc.FogServiceStub(self.channels.get(fog.address, Peer("fog", fog.node_id)))
            await call(
                stub.SubmitUpdate,
                fog_pb2.SubmitUpdateRequest(
                    round=config.round,
                    attempt=config.attempt,
                    bucket_id=bucket.bucket_id,
                    node_id=self.node_id,
                    update=serde.vector_to_proto(delta, pb.D_TYPE_FLOAT32),
                    num_samples=self.data.train.n,
                ),
                peer="fog",
                timeout=plan.timeout_s,
            )
            log.info("round %d: sent update to %s (bucket %s)", config.round, fog.node_id, bucket.bucket_id)
        except grpc.aio.AioRpcError as e:
            log.warning(
                "round %d: the fog refused or missed the update: %s", config.round, describe_rpc_error(e)
            )
        except Exception:
            log.exception("round %d: local training failed", config.round)
        finally:
            release_soon()  # the round's buffers are freed: hand the pages back soon (hfl/memory.py)
