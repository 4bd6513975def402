"""Facility side of secure aggregation over gRPC: one SecAggMember per (round, attempt, bucket).

The fog drives the four stages by calling this facility (SecAggAdvertise, SecAggShareKeys,
SecAggMaskedInput, SecAggUnmask); each answer is the response. The member is built only from the
authority's SIGNED round configuration: the bucket's member list, its threshold and each member's
certified identity key (NodeInfo.sign_public_key), plus this facility's own identity key, so a fog that
swaps keys is caught by the signature check on every advertisement.

Any protocol refusal (a substituted key, a tampered share, a contradictory unmask request, ...) ends
this facility's part in that bucket for that round, with one clear log line; the service goes on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import numpy as np

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, Metrics, ModelSpec, RoundConfig, TrainingPlan
from hfl.errors import AlreadyDone, InvalidInput, NotAllowed, NotFound, NotReady, StaleRound
from hfl.learning.metrics import EVAL_CLIP, EVAL_VECTOR_LEN, metrics_to_vector
from hfl.memory import release_soon
from hfl.privacy.facility import Admission
from hfl.proto.v1 import facility_pb2
from hfl.rpc import authz, serde
from hfl.rpc.link import Lifted, unlift
from hfl.rpc.metrics import ROUND
from hfl.rpc.settings import FacilitySettings
from hfl.secagg import (
    STAGE_NAMES,
    KeySubstitutionError,
    QuantConfig,
    SecAggError,
    SecAggMember,
    ShareDecryptionError,
    StageError,
)
from services.facility.privacy import PrivacyGate

log = logging.getLogger("hfl.facility")

SessionKey = tuple[int, int, str]  # (round, attempt, bucket id)


@dataclass
class Session:
    key: SessionKey
    member: SecAggMember
    update: asyncio.Task[np.ndarray] | None  # local work; None once the masked input is made (let go)
    clip: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fog_id: str = ""  # the bucket's fog: the only caller accepted for later stages (with mTLS)
    evaluation: bool = False  # the committed model's test sums, not a training update

    def stop(self) -> None:
        """Stop the local work, if it is still wanted."""
        if self.update is not None:
            self.update.cancel()


class MemberHost(Protocol):
    """What secure aggregation uses of the facility it runs in (services/facility/service.Facility): its
    identity and settings, the boundary checks of a fog's call, local work, and the privacy gate."""

    settings: FacilitySettings
    node_id: str
    signing_key: SigningKey
    privacy: PrivacyGate
    last_round: int  # the newest round this facility took part in (secure aggregation advances it)

    def round_config(self, request_config: Any) -> RoundConfig:
        """The call's round configuration, verified against the authority's signature and not stale."""
        ...

    def load_model(
        self, request_model: Any, data: memoryview | None = None
    ) -> tuple[ModelSpec, np.ndarray, Any]:
        """The call's model, checked against this facility's data; ``data``: its parameters' bytes when
        they were lifted out of the call."""
        ...

    def my_bucket(
        self, config: RoundConfig, bucket_id: str, what: str, *, evaluation: bool = False
    ) -> Bucket:
        """The call's bucket, which must list this facility; the caller must be the bucket's fog."""
        ...

    def round_rng(self, config: RoundConfig) -> np.random.Generator:
        """The seeded random stream of this facility for one round attempt."""
        ...

    def local_update(
        self,
        model: Any,
        params: np.ndarray,
        plan: TrainingPlan,
        rng: np.random.Generator,
        admission: Admission | None = None,
    ) -> np.ndarray:
        """This facility's clipped update for the round (blocking: run in a thread)."""
        ...

    def evaluate(self, model: Any, params: np.ndarray) -> Metrics:
        """This facility's test sums for a model (blocking: run in a thread)."""
        ...


class SecureAggregation:
    """The secure-aggregation RPCs of one facility; Facility delegates its SecAgg* methods here."""

    def __init__(self, facility: MemberHost) -> None:
        self.facility = facility
        self._sessions: dict[SessionKey, Session] = {}

    # ------------------------------------------------------------------ helpers
    def _where(self, key: SessionKey) -> str:
        return f"round {key[0]} (attempt {key[1]}) bucket {key[2]}"

    def _forget_older(self, round_: int, attempt: int) -> None:
        for key in [k for k in self._sessions if (k[0], k[1]) < (round_, attempt)]:
            self._sessions.pop(key).stop()

    def _session(self, proto: facility_pb2.SecAggSession, stage: int) -> Session:
        key = serde.session_from_proto(proto)
        sess = self._sessions.get(key)
        if sess is None:
            if key[0] < self.facility.last_round:
                raise StaleRound(
                    f"{self._where(key)} is over; this facility is in round {self.facility.last_round}"
                )
            raise NotFound(
                f"no secure aggregation is running here for {self._where(key)} (never started, "
                "already finished, or this facility stopped taking part)"
            )
        authz.require_caller_is(sess.fog_id, "secure aggregation for this bucket")
        return sess

    def _refuse(self, sess: Session, stage: int, exc: SecAggError) -> NoReturn:
        """A protocol refusal: log one clear line; a wrong-stage call leaves the member intact."""
        if isinstance(exc, StageError):
            raise StaleRound(f"{self._where(sess.key)}: {exc}") from None
        self._sessions.pop(sess.key, None)
        sess.stop()
        if isinstance(exc, KeySubstitutionError | ShareDecryptionError):
            log.error(
                "%s: secure aggregation ABORTED at stage '%s' (possible attack by the fog or the network): "
                "%s. This facility sends nothing more for this bucket this round.",
                self._where(sess.key),
                STAGE_NAMES[stage],
                exc,
            )
        else:
            log.warning(
                "%s: secure aggregation stopped at stage '%s': %s. This facility sends nothing more for "
                "this bucket this round.",
                self._where(sess.key),
                STAGE_NAMES[stage],
                exc,
            )
        raise NotAllowed(f"secure aggregation stopped for {self._where(sess.key)}: {exc}") from None

    def _masked_vector(self, delta: np.ndarray, clip: float) -> np.ndarray:
        """What goes into the mask: the clipped update, kept inside the quantiser's range. The update is
        this facility's own (its local work made it), so it is clipped in place when it can be.

        An honest update (L2 norm <= clip) is unchanged. A Byzantine 'nan' update cannot be quantised, so it
        becomes random garbage of the full range instead: its norm is far above the bound, and the
        leader's norm check flags the bucket, as it would flag NaN on the plain path."""
        arr = np.asarray(delta, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            log.warning("BYZANTINE (experiment): sending random garbage instead of a non-finite update")
            garbage = np.random.default_rng(secrets.randbits(64))  # not secret: attack simulation only
            arr = garbage.uniform(-clip, clip, arr.size)
        owned = arr.flags.owndata and arr.flags.writeable
        out = np.minimum(arr, clip, out=arr if owned else None)  # np.clip, without its overhead
        return np.maximum(out, -clip, out=out)

    # ------------------------------------------------------------------ stage 1
    async def advertise(
        self, call: facility_pb2.SecAggAdvertiseRequest | Lifted
    ) -> facility_pb2.SecAggAdvertiseResponse:
        """Stage 1. ``call`` as read off the connection: the model's parameters lifted out of it
        (hfl.rpc.link.LIFTED_CALLS), so that they stay in the received bytes."""
        request, params_data = unlift(call)
        fac = self.facility
        config = fac.round_config(request.config)
        if any(b.bucket_id == request.bucket_id for b in config.eval_buckets):
            return await self._advertise_evaluation(config, request, params_data)
        bucket = fac.my_bucket(config, request.bucket_id, "secure aggregation for this bucket")
        key: SessionKey = (config.round, config.attempt, bucket.bucket_id)
        self._not_started(key, "secure aggregation")
        _spec, params, model = fac.load_model(request.model, params_data)
        plan = serde.plan_from_proto(request.plan)
        admission = await fac.privacy.admit(config, plan)  # DP budget: declining = dropping out (privacy.py)
        self._not_started(key, "secure aggregation")  # again: a duplicate call may have started it meanwhile
        identities = _identities(config, bucket)
        cfg = serde.quant_config(plan, len(bucket.members))
        member = self._training_member(key, bucket, identities, cfg, int(params.size))
        self._forget_older(config.round, config.attempt)
        fac.last_round = config.round
        ROUND.set(config.round)
        ad = member.advertise()
        task = _in_background(fac.local_update, model, params, plan, fac.round_rng(config), admission)
        self._sessions[key] = Session(key, member, task, plan.clip_update, fog_id=bucket.fog_id)
        log.info(
            "%s: secure aggregation started (%d members, %d needed to unmask)",
            self._where(key),
            len(bucket.members),
            bucket.threshold,
        )
        return facility_pb2.SecAggAdvertiseResponse(advertisement=serde.advertisement_to_proto(ad))

    def _not_started(self, key: SessionKey, what: str) -> None:
        if key in self._sessions:
            raise AlreadyDone(f"{what} for {self._where(key)} has already started here")

    def _training_member(
        self, key: SessionKey, bucket: Bucket, identities: dict[str, bytes], cfg: QuantConfig, size: int
    ) -> SecAggMember:
        """This facility's member of the bucket's secure aggregation of training updates."""
        try:
            return SecAggMember(
                self.facility.node_id,
                serde.secagg_round(key[0], key[1]),
                bucket.bucket_id,
                identities,
                self.facility.signing_key,
                bucket.threshold,
                cfg,
                size,
            )
        except SecAggError as e:
            log.warning("%s: cannot take part in secure aggregation: %s", self._where(key), e)
            raise InvalidInput(f"secure aggregation cannot start for {self._where(key)}: {e}") from None

    async def _advertise_evaluation(
        self,
        config: RoundConfig,
        request: facility_pb2.SecAggAdvertiseRequest,
        params_data: memoryview | None = None,
    ) -> facility_pb2.SecAggAdvertiseResponse:
        """Stage 1 of an evaluation bucket: this facility's test sums for the model go into a masked
        bucket sum like a training update, so its fog never sees them on their own. No training and no
        privacy spend (only counts over the facility's held-out patients are summed)."""
        fac = self.facility
        bucket = fac.my_bucket(config, request.bucket_id, "evaluation for this bucket", evaluation=True)
        key: SessionKey = (config.round, config.attempt, bucket.bucket_id)
        self._not_started(key, "evaluation")
        _spec, params, model = fac.load_model(request.model, params_data)
        identities = _identities(config, bucket)
        try:
            member = SecAggMember(
                fac.node_id,
                serde.secagg_round(config.round, config.attempt),
                bucket.bucket_id,
                identities,
                fac.signing_key,
                bucket.threshold,
                serde.eval_quant_config(len(bucket.members)),
                EVAL_VECTOR_LEN,
            )
        except SecAggError as e:
            raise InvalidInput(f"evaluation cannot start for {self._where(key)}: {e}") from None
        self._forget_older(config.round, config.attempt)

        def sums() -> np.ndarray:
            return metrics_to_vector(fac.evaluate(model, params))

        task = _in_background(sums)
        self._sessions[key] = Session(key, member, task, EVAL_CLIP, fog_id=bucket.fog_id, evaluation=True)
        return facility_pb2.SecAggAdvertiseResponse(
            advertisement=serde.advertisement_to_proto(member.advertise())
        )

    # ------------------------------------------------------------------ stage 2
    async def share_keys(
        self, request: facility_pb2.SecAggShareKeysRequest
    ) -> facility_pb2.SecAggShareKeysResponse:
        sess = self._session(request.session, 2)
        if len(request.advertisements) > serde.SECAGG_MAX_MEMBERS:
            raise InvalidInput("too many key advertisements")
        ads = [serde.advertisement_from_proto(a) for a in request.advertisements]
        async with sess.lock:
            try:
                shares = sess.member.share_keys(ads)
            except SecAggError as e:
                self._refuse(sess, 2, e)
        return facility_pb2.SecAggShareKeysResponse(shares=[serde.share_to_proto(s) for s in shares])

    # ------------------------------------------------------------------ stage 3
    async def masked_input(self, request: facility_pb2.SecAggMaskedInputRequest) -> Lifted:
        """This facility's masked input: a SecAggMaskedInputResponse whose vector travels beside it
        (hfl.rpc.link.encode_reply writes them as one message)."""
        sess = self._session(request.session, 3)
        if sess.update is None:
            raise StaleRound(f"{self._where(sess.key)}: the masked input was already sent")
        shares = serde.shares_from_proto(request.shares)
        try:
            delta = await asyncio.shield(sess.update)
        except asyncio.CancelledError:
            raise NotFound(f"{self._where(sess.key)}: this facility stopped taking part") from None
        except Exception:
            self._sessions.pop(sess.key, None)
            work = "evaluation" if sess.evaluation else "local training"
            log.exception("%s: %s failed; this facility drops out of the bucket", self._where(sess.key), work)
            raise NotReady(f"{self._where(sess.key)}: {work} failed at this facility") from None
        x = self._masked_vector(delta, sess.clip)
        if not sess.evaluation:
            await self.facility.privacy.flush(
                sess.key[0], sess.key[1]
            )  # the authority hears of a DP spend first
        async with sess.lock:
            if self._sessions.get(sess.key) is not sess:
                raise NotFound(f"{self._where(sess.key)}: this facility stopped taking part")
            try:
                msg = await asyncio.to_thread(sess.member.masked_input, shares, x)
            except SecAggError as e:
                self._refuse(sess, 3, e)
            sess.update = None  # the update (a model-sized vector) is not kept until the round ends
        return Lifted(*serde.masked_input_lifted(msg))  # the vector goes out without a copy (link.py)

    # ------------------------------------------------------------------ stage 4
    async def unmask(self, request: facility_pb2.SecAggUnmaskRequest) -> facility_pb2.SecAggUnmaskResponse:
        sess = self._session(request.session, 4)
        _round, _attempt, req = serde.unmask_request_from_proto(request)
        async with sess.lock:
            try:
                resp = sess.member.unmask(req.survivors, req.dropped)
            except SecAggError as e:
                self._refuse(sess, 4, e)
        self._sessions.pop(sess.key, None)
        release_soon()  # this facility's round buffers are freed: hand the pages back soon (hfl/memory.py)
        log.info(
            "%s: secure aggregation done (%d survivors, %d dropped)",
            self._where(sess.key),
            len(req.survivors),
            len(req.dropped),
        )
        return serde.unmask_response_to_proto(resp)


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a background training result nobody waits for (abandoned bucket), so asyncio stays quiet."""
    if not task.cancelled():
        task.exception()


def _identities(config: RoundConfig, bucket: Bucket) -> dict[str, bytes]:
    """Each bucket member's certified identity key, from the authority's signed configuration."""
    try:
        return {m: config.node(m).sign_public_key for m in bucket.members}
    except KeyError as e:
        raise InvalidInput(f"the round configuration has no identity for bucket member {e}") from None


def _in_background(work: Callable[..., np.ndarray], *args: Any) -> asyncio.Task[np.ndarray]:
    """Run blocking local work (training, evaluation) in a thread while the stages go on."""
    task = asyncio.create_task(asyncio.to_thread(work, *args))
    task.add_done_callback(_consume)
    return task
