"""The one boundary between protobuf messages and hfl's domain types.

Every conversion from the wire validates what it reads (lengths, dtypes, finite values), so nothing
malformed reaches the protocol core.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from typing_extensions import Buffer

from hfl import bounds
from hfl.control import OperatorAction, TrainingControl
from hfl.domain import (
    Bucket,
    BucketEvaluation,
    BucketRecord,
    BucketResult,
    CertificateStatus,
    ClinicalMetrics,
    Metrics,
    ModelSpec,
    NodeInfo,
    RoundConfig,
    RoundCost,
    RoundEvent,
    RoundReport,
    SecurityRecord,
    SecurityReport,
    SharedTokenStatus,
    SpecialtyResult,
    TrainingPlan,
    VoteRecord,
)
from hfl.errors import InvalidInput, clip
from hfl.hashing import HASH_LEN, canonical_json, hash_vector
from hfl.learning.metrics import BINS as SCORE_BINS
from hfl.learning.metrics import EVAL_CLIP, check_counts
from hfl.ledger import Block, BlockHeader, BlockRecord, CommitteeMember, Vote
from hfl.proto.v1 import authority_pb2, facility_pb2, fog_pb2, leader_pb2, validator_pb2
from hfl.proto.v1 import common_pb2 as pb
from hfl.robust.bound import WINDOW_ROUNDS
from hfl.rpc import link
from hfl.secagg import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    QuantConfig,
    QuantizationError,
    UnmaskRequest,
    UnmaskResponse,
    dequantize_sum,
)

if TYPE_CHECKING:  # importing hfl.privacy loads dp_accounting (about 2 s): only when a spend is read
    from hfl.privacy.federation import DPPlan
    from hfl.privacy.report import SpendReport

MAX_VECTOR_LENGTH = 20_000_000

_DTYPES: dict[int, np.dtype[Any]] = {
    pb.D_TYPE_FLOAT64: np.dtype("<f8"),
    pb.D_TYPE_UINT32: np.dtype("<u4"),
    pb.D_TYPE_FLOAT32: np.dtype("<f4"),
}


# ---------------------------------------------------------------- vectors and models
def vector_to_proto(arr: np.ndarray, dtype: int = pb.D_TYPE_FLOAT64) -> pb.Vector:
    a = np.ascontiguousarray(np.asarray(arr).reshape(-1), dtype=_DTYPES[dtype])
    return pb.Vector(dtype=dtype, length=a.size, data=a.tobytes())  # type: ignore[arg-type]


def vector_from_proto(
    v: pb.Vector,
    *,
    expected_length: int | None = None,
    dtype: int | None = pb.D_TYPE_FLOAT64,
    what: str = "vector",
    require_finite: bool = True,
    as_float64: bool = True,
    data: bytes | memoryview | None = None,
) -> np.ndarray:
    """The vector's values: float64 (a copy), or with ``as_float64=False`` a read-only view of the
    received bytes in the number type they came in (no copy; for sums that read it once). ``data``: the
    vector's bytes when they were lifted out of the message (hfl.rpc.link.Lifted); ``v.data`` is then
    empty, and float64 values come back as a read-only view of them (no copy)."""
    if v.dtype not in _DTYPES:
        raise InvalidInput(f"{what}: unknown number type {v.dtype}")
    if dtype is not None and v.dtype != dtype:
        raise InvalidInput(
            f"{what}: expected number type {pb.DType.Name(dtype)}, "  # type: ignore[arg-type]
            f"got {pb.DType.Name(v.dtype)}"
        )
    if v.length > MAX_VECTOR_LENGTH:
        raise InvalidInput(f"{what}: {v.length} values is more than the limit of {MAX_VECTOR_LENGTH}")
    if expected_length is not None and v.length != expected_length:
        raise InvalidInput(f"{what}: has {v.length} values but the model has {expected_length}")
    dt = _DTYPES[v.dtype]
    given = data
    if data is None:
        data = v.data  # each read of a bytes field copies it: read it once
    elif v.data:
        raise InvalidInput(f"{what}: carries its values twice")
    if len(data) != v.length * dt.itemsize:
        raise InvalidInput(f"{what}: says {v.length} values but carries {len(data)} bytes")
    arr = np.frombuffer(data, dtype=dt)
    if require_finite and dt.kind == "f" and not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what}: contains NaN or infinite values")
    if not as_float64 or (given is not None and dt == np.dtype("<f8")):
        return arr  # a read-only view: no copy of values that already are what the caller wants
    return arr.astype(np.float64) if dt.kind == "f" else arr.copy()


def spec_to_proto(spec: ModelSpec) -> pb.ModelSpec:
    return pb.ModelSpec(kind=spec.kind, n_features=spec.n_features, hidden=spec.hidden)


def spec_from_proto(m: pb.ModelSpec) -> ModelSpec:
    if m.kind not in ("logreg", "mlp"):
        raise InvalidInput(f"unknown model kind {m.kind!r}")
    return ModelSpec(kind=m.kind, n_features=m.n_features, hidden=m.hidden)


def model_to_proto(spec: ModelSpec, params: np.ndarray, round_: int) -> pb.Model:
    return pb.Model(
        spec=spec_to_proto(spec), params=vector_to_proto(params), hash=hash_vector(params), round=round_
    )


def model_from_proto(
    m: pb.Model, *, expected_params: int | None = None, data: bytes | memoryview | None = None
) -> tuple[ModelSpec, np.ndarray, int]:
    """(architecture, parameters, round) of a model, its hash checked. ``data``: the parameters' bytes when
    they were lifted out of the received call (hfl.rpc.link.LIFTED_CALLS): the parameters are then a
    read-only view of them."""
    spec = spec_from_proto(m.spec)
    params = vector_from_proto(m.params, expected_length=expected_params, what="model parameters", data=data)
    if hash_vector(params) != m.hash:
        raise InvalidInput("model parameters do not match the model hash")
    return spec, params, int(m.round)


# ---------------------------------------------------------------- nodes and round configuration
def node_to_proto(n: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=n.node_id,
        role=n.role,
        address=n.address,
        sign_public_key=n.sign_public_key,
        specialty=n.specialty,
        metrics_address=n.metrics_address,
        region=n.region,
        fog=n.fog,
    )


_MAX_PUBLIC_KEY = 64


def node_from_proto(n: pb.NodeInfo) -> NodeInfo:
    """A node description, every field bounded (hfl.bounds): it is stored in the registry and copied
    into every signed round configuration."""
    if len(n.sign_public_key) > _MAX_PUBLIC_KEY:
        raise InvalidInput(f"the node's public key is {len(n.sign_public_key)} bytes; keys are 32 bytes")
    return NodeInfo(
        node_id=bounds.node_id(n.node_id),
        role=bounds.text(n.role, "role", bounds.MAX_ID),
        address=bounds.address(n.address),
        sign_public_key=bytes(n.sign_public_key),
        specialty=bounds.text(n.specialty, "specialty", bounds.MAX_NAME),
        metrics_address=bounds.address(n.metrics_address, "metrics address"),
        region=bounds.text(n.region, "region", bounds.MAX_NAME),
        fog=bounds.node_id(n.fog) if n.fog else "",
    )


def _bucket_to_proto(b: Bucket) -> pb.Bucket:
    return pb.Bucket(
        bucket_id=b.bucket_id, fog_id=b.fog_id, members=list(b.members), threshold=b.threshold, group=b.group
    )


def _bucket_from_proto(b: pb.Bucket) -> Bucket:
    return Bucket(
        bounds.node_id(b.bucket_id, "bucket id"),
        bounds.node_id(b.fog_id, "fog id"),
        bounds.ids(b.members, "bucket members"),
        int(b.threshold),
        bounds.text(b.group, "bucket group", bounds.MAX_NAME),
    )


def config_to_proto(c: RoundConfig) -> pb.RoundConfig:
    return pb.RoundConfig(
        round=c.round,
        attempt=c.attempt,
        seed=c.seed,
        ledger_head=c.ledger_head,
        epoch=c.epoch,
        buckets=[_bucket_to_proto(b) for b in c.buckets],
        eval_buckets=[_bucket_to_proto(b) for b in c.eval_buckets],
        committee=[node_to_proto(n) for n in c.committee],
        quorum=c.quorum,
        facilities=[node_to_proto(n) for n in c.facilities],
        fogs=[node_to_proto(n) for n in c.fogs],
        quarantined=list(c.quarantined),
        signature=c.signature,
        committee_draw=_draw_to_proto(c.committee_draw),
    )


def _draw_to_proto(d: dict[str, Any]) -> pb.CommitteeDraw | None:
    if not d:
        return None
    return pb.CommitteeDraw(
        epoch=int(d["epoch"]),
        seed=bytes.fromhex(str(d["seed"])),
        pool=[str(v) for v in d["pool"]],
        weights={str(k): float(v) for k, v in dict(d["weights"]).items()},
        size=int(d["size"]),
        members=[str(v) for v in d["members"]],
    )


def _draw_from_proto(d: pb.CommitteeDraw | None) -> dict[str, Any]:
    """The committee draw as the authority recorded (and signed) it; {} when there is none."""
    if d is None:
        return {}
    if len(d.seed) != HASH_LEN:
        raise InvalidInput("the committee draw's seed must be a 32-byte hash")
    pool = bounds.ids(d.pool, "the committee draw's candidates")
    members = bounds.ids(d.members, "the committee draw's members")
    if len(d.weights) > bounds.MAX_LIST:
        raise InvalidInput(f"the committee draw lists more than {bounds.MAX_LIST} weights")
    weights = {}
    for k, w in d.weights.items():
        bounds.node_id(k, "a committee candidate")
        if not math.isfinite(w) or not 0.0 <= w <= 1.0:
            raise InvalidInput(f"the committee draw's weight for {clip(k)} must be between 0 and 1")
        weights[k] = float(w)
    if not set(members) <= set(pool) or int(d.size) != len(members):
        raise InvalidInput("the committee draw's members must be its size, drawn from its candidates")
    return {
        "epoch": int(d.epoch),
        "seed": bytes(d.seed).hex(),
        "pool": list(pool),
        "weights": weights,
        "size": int(d.size),
        "members": list(members),
    }


def config_from_proto(c: pb.RoundConfig) -> RoundConfig:
    return RoundConfig(
        round=int(c.round),
        attempt=int(c.attempt),
        seed=bytes(c.seed),
        ledger_head=bytes(c.ledger_head),
        epoch=int(c.epoch),
        buckets=tuple(_bucket_from_proto(b) for b in c.buckets),
        eval_buckets=tuple(_bucket_from_proto(b) for b in c.eval_buckets),
        committee=tuple(node_from_proto(n) for n in c.committee),
        quorum=int(c.quorum),
        facilities=tuple(node_from_proto(n) for n in c.facilities),
        fogs=tuple(node_from_proto(n) for n in c.fogs),
        quarantined=bounds.ids(c.quarantined, "the quarantine list"),
        # the draw lists every validator with its weight: it grows with the federation
        committee_draw=_draw_from_proto(c.committee_draw if c.HasField("committee_draw") else None),
        signature=bytes(c.signature),
    )


# ---------------------------------------------------------------- aggregation rule parameters
_RULE_INTS = ("f", "m", "iters")
_RULE_FLOATS = ("clip_update", "screen_norm_ratio", "screen_shrink_ratio", "screen_coherence", "tau")


def rule_params_to_proto(params: dict[str, Any]) -> pb.RuleParams:
    """A block's rule_params -> RuleParams (each key keeps its type: whole numbers, numbers, true/false;
    clip_update may be null, meaning no norm bound)."""
    m = pb.RuleParams()
    for k, v in params.items():
        if k == "clip_update" and v is None:
            m.no_norm_bound = True
        elif (k in _RULE_INTS and isinstance(v, int) and not isinstance(v, bool)) or (
            k in _RULE_FLOATS and isinstance(v, float)
        ):
            setattr(m, k, v)
        elif k == "screen" and isinstance(v, bool):
            m.screen = v
        else:
            raise ValueError(f"rule parameter {k}={v!r} has no typed field (hfl.v1.RuleParams)")
    return m


def rule_params_from_proto(m: pb.RuleParams) -> dict[str, Any]:
    """RuleParams -> the block's rule_params dict (only the fields that are set)."""
    if m.no_norm_bound and m.HasField("clip_update"):
        raise InvalidInput("the rule parameters give a norm bound and say there is none")
    out: dict[str, Any] = {}
    for field, value in m.ListFields():  # the fields that are set (proto3 optional: even when 0)
        if field.name != "no_norm_bound":
            out[field.name] = value
    for k in _RULE_FLOATS:
        if k in out and not math.isfinite(out[k]):
            raise InvalidInput(f"the rule parameter {k} must be a finite number")
    if m.no_norm_bound:
        out["clip_update"] = None
    return out


def plan_to_proto(p: TrainingPlan) -> pb.TrainingPlan:
    return pb.TrainingPlan(
        lr=p.lr,
        epochs=p.epochs,
        batch_size=p.batch_size,
        clip_update=p.clip_update,
        secure=p.secure,
        timeout_s=p.timeout_s,
        dp=pb.PrivacyPlan(**p.dp.to_dict()) if p.dp is not None else None,
    )


def plan_from_proto(p: pb.TrainingPlan) -> TrainingPlan:
    for name in ("lr", "clip_update", "timeout_s"):
        value = getattr(p, name)
        if not math.isfinite(value) or value <= 0:
            raise InvalidInput(f"training plan: {name} must be a positive number")
    if p.epochs < 1 or p.batch_size < 1:
        raise InvalidInput("training plan: epochs and batch size must be at least 1")
    return TrainingPlan(
        lr=p.lr,
        epochs=p.epochs,
        batch_size=p.batch_size,
        clip_update=p.clip_update,
        secure=p.secure,
        timeout_s=p.timeout_s,
        dp=privacy_plan_from_proto(p.dp) if p.HasField("dp") else None,
    )


def privacy_plan_from_proto(m: pb.PrivacyPlan) -> DPPlan:
    """The leader's DP plan, checked (mechanism, accountant, ranges); InvalidInput in plain words."""
    from hfl.privacy.federation import DPPlan

    try:
        return DPPlan.from_dict(
            {f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields}  # every field, defaults included
        )
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"the training plan's privacy settings are not valid: {e}") from None


# ---------------------------------------------------------------- results, metrics, votes, events
def bucket_result_to_proto(b: BucketResult) -> pb.BucketResult:
    return pb.BucketResult(
        bucket_id=b.bucket_id,
        fog_id=b.fog_id,
        total=vector_to_proto(b.total),
        count=b.count,
        members=list(b.members),
        dropped=list(b.dropped),
        abandoned=b.abandoned,
        reason=bounds.shorten(b.reason),
        refused=list(b.refused),
        unreachable=list(b.unreachable),
    )


def run_round_response(
    results: list[BucketResult],
    *,
    bytes_to_facilities: int,
    bytes_from_facilities: int,
    phases_s: dict[str, float],
) -> bytes:
    """A fog's RunRoundResponse, serialised, with each bucket's sum copied once, straight from its array
    into the answer: building the message and then serialising it holds every sum three times (the
    array, the message, its bytes), 46 MB each for 6 buckets at d=10^6. ``results`` is emptied, so the
    arrays go as soon as the answer is written. The fog's RunRound returns these bytes as they are
    (hfl.rpc.link.RAW_RESPONSES); the leader reads an ordinary RunRoundResponse. A sum given as uint32
    (a secure bucket's, as the members' quantised vectors add up) goes as it is, marked D_TYPE_UINT32:
    the leader turns it into numbers (bucket_result_from_proto)."""
    parts: list[bytes | memoryview] = [
        fog_pb2.RunRoundResponse(
            bytes_to_facilities=bytes_to_facilities,
            bytes_from_facilities=bytes_from_facilities,
            phases_s=phases_s,
        ).SerializeToString()
    ]
    for b in results:
        integers = np.asarray(b.total).dtype == np.uint32  # a secure bucket's sum as it adds up
        dtype = pb.D_TYPE_UINT32 if integers else pb.D_TYPE_FLOAT64
        total = np.ascontiguousarray(np.asarray(b.total).reshape(-1), dtype=_DTYPES[dtype])
        head = bucket_result_to_proto(dataclasses.replace(b, total=np.zeros(0)))
        head.total.dtype = dtype
        head.total.length = total.size
        data = memoryview(cast(Buffer, total)).cast("B")
        parts.extend(
            link.with_bytes_field(head.SerializeToString(), _BUCKET_TOTAL_DATA, data, _RESPONSE_BUCKETS)
        )
    results.clear()
    return b"".join(parts)


_RESPONSE_BUCKETS = fog_pb2.RunRoundResponse.DESCRIPTOR.fields_by_name["buckets"].number
_BUCKET_TOTAL_DATA = (
    pb.BucketResult.DESCRIPTOR.fields_by_name["total"].number,
    pb.Vector.DESCRIPTOR.fields_by_name["data"].number,
)


def bucket_result_from_proto(
    b: pb.BucketResult, *, expected_length: int | None, quant: dict[str, QuantConfig] | None = None
) -> BucketResult:
    """A bucket's result as a fog or the leader sent it. Its sum is float64, or, from a fog, the members'
    quantised vectors added up (D_TYPE_UINT32): that is turned into the exact float64 sum with the
    bucket's quantisation, ``quant[bucket id]`` (quant_config: the round's plan and the bucket's size, as
    the receiver knows them). InvalidInput for an integer sum without one, or out of its range."""
    what = f"bucket {clip(b.bucket_id)} sum"
    if b.abandoned:
        total = np.zeros(0)
    elif b.total.dtype == pb.D_TYPE_UINT32:
        total = _integer_sum(b, expected_length, (quant or {}).get(b.bucket_id), what)
    else:
        total = vector_from_proto(b.total, expected_length=expected_length, what=what, require_finite=False)
    return BucketResult(
        bucket_id=bounds.node_id(b.bucket_id, "bucket id"),
        fog_id=bounds.node_id(b.fog_id, "fog id"),
        total=total,
        count=int(b.count),
        members=bounds.ids(b.members, "bucket members"),
        dropped=bounds.ids(b.dropped, "bucket dropouts"),
        abandoned=b.abandoned,
        reason=bounds.reason(b.reason, "bucket reason"),
        refused=bounds.ids(b.refused, "refused members"),
        unreachable=bounds.ids(b.unreachable, "unreachable members"),
    )


def _integer_sum(
    b: pb.BucketResult, expected_length: int | None, cfg: QuantConfig | None, what: str
) -> np.ndarray:
    if cfg is None:
        raise InvalidInput(f"{what}: sent in secure aggregation's integers, but this is not a secure bucket")
    ints = vector_from_proto(
        b.total, expected_length=expected_length, dtype=pb.D_TYPE_UINT32, what=what, as_float64=False
    )
    try:
        return dequantize_sum(ints, int(b.count), cfg)
    except QuantizationError as e:
        raise InvalidInput(f"{what}: {e}") from None


def metrics_to_proto(m: Metrics) -> pb.EvalMetrics:
    return pb.EvalMetrics(
        correct=m.correct,
        total=m.total,
        loss_sum=m.loss_sum,
        tp=m.tp,
        fp=m.fp,
        tn=m.tn,
        fn=m.fn,
        brier_sum=m.brier_sum,
        positive_scores=list(m.positive_scores),
        negative_scores=list(m.negative_scores),
    )


def metrics_from_proto(m: pb.EvalMetrics) -> Metrics:
    if len(m.positive_scores) > SCORE_BINS or len(m.negative_scores) > SCORE_BINS:
        raise InvalidInput(f"a score histogram has more than {SCORE_BINS} bins")
    out = Metrics(
        int(m.correct),
        int(m.total),
        float(m.loss_sum),
        int(m.tp),
        int(m.fp),
        int(m.tn),
        int(m.fn),
        float(m.brier_sum),
        tuple(int(c) for c in m.positive_scores),
        tuple(int(c) for c in m.negative_scores),
    )
    try:
        check_counts(out)
    except ValueError as e:
        raise InvalidInput(f"evaluation metrics are inconsistent: {e}") from None
    return out


def clinical_to_proto(c: ClinicalMetrics) -> pb.ClinicalMetrics:
    return pb.ClinicalMetrics(**{f.name: getattr(c, f.name) for f in dataclasses.fields(c)})


def clinical_from_proto(c: pb.ClinicalMetrics) -> ClinicalMetrics:
    return ClinicalMetrics(**{f.name: float(getattr(c, f.name)) for f in dataclasses.fields(ClinicalMetrics)})


def bucket_evaluation_to_proto(e: BucketEvaluation) -> pb.BucketEvaluation:
    return pb.BucketEvaluation(
        bucket_id=e.bucket_id,
        group=e.group,
        facilities=e.facilities,
        metrics=metrics_to_proto(e.metrics),
        problem=e.problem,
    )


def bucket_evaluation_from_proto(e: pb.BucketEvaluation) -> BucketEvaluation:
    return BucketEvaluation(
        bounds.node_id(e.bucket_id, "bucket id"),
        bounds.text(e.group, "bucket group", bounds.MAX_NAME),
        int(e.facilities),
        metrics_from_proto(e.metrics),
        bounds.text(e.problem, "the evaluation problem", bounds.MAX_JSON),
    )


def specialty_to_proto(r: SpecialtyResult) -> pb.SpecialtyResult:
    return pb.SpecialtyResult(
        specialty=r.specialty,
        facilities=r.facilities,
        accuracy=r.accuracy,
        loss=r.loss,
        clinical=clinical_to_proto(r.clinical) if r.clinical is not None else None,
        not_reported=r.not_reported,
    )


def specialty_from_proto(r: pb.SpecialtyResult) -> SpecialtyResult:
    return SpecialtyResult(
        bounds.text(r.specialty, "specialty", bounds.MAX_NAME),
        int(r.facilities),
        float(r.accuracy),
        float(r.loss),
        clinical_from_proto(r.clinical) if r.HasField("clinical") else None,
        bounds.text(r.not_reported, "why a specialty is not reported", bounds.MAX_JSON),
    )


def eval_quant_config(bucket_size: int) -> QuantConfig:
    """The quantisation for masked evaluation sums (hfl.learning.metrics.EVAL_CLIP): counts must stay
    whole numbers, so buckets too large for a scale of at least 1 are refused."""
    try:
        cfg = QuantConfig(clip=EVAL_CLIP, max_members=bucket_size)
    except QuantizationError as e:
        raise InvalidInput(f"masked evaluation cannot be set up: {e}") from None
    if cfg.scale < 1:
        raise InvalidInput(
            f"masked evaluation cannot keep counts exact in a bucket of {bucket_size} facilities; "
            "use buckets of at most 2047"
        )
    return cfg


def vote_to_proto(v: Vote) -> validator_pb2.VoteResponse:
    return validator_pb2.VoteResponse(
        round=v.round,
        block_hash=v.block_hash,
        validator_id=v.validator_id,
        accept=v.accept,
        reason=v.reason,
        score=v.score if v.score is not None else 0.0,
        has_score=v.score is not None,
        signature=v.signature,
    )


def vote_from_proto(v: validator_pb2.VoteResponse) -> Vote:
    return Vote(
        round=int(v.round),
        block_hash=bytes(v.block_hash),
        validator_id=bounds.node_id(v.validator_id, "validator id"),
        accept=v.accept,
        reason=bounds.reason(v.reason, "vote reason"),
        score=v.score if v.has_score else None,
        signature=bytes(v.signature),
    )


def cost_to_proto(c: RoundCost) -> leader_pb2.RoundCost:
    return leader_pb2.RoundCost(
        phases_s=c.phases_s,
        leader_bytes_in=c.leader_bytes_in,
        leader_bytes_out=c.leader_bytes_out,
        fog_facility_bytes=c.fog_facility_bytes,
        fog_bytes_in_max=c.fog_bytes_in_max,
        leader_by_peer=c.leader_by_peer,
    )


def cost_from_proto(c: leader_pb2.RoundCost) -> RoundCost:
    return RoundCost(
        phases_s=dict(c.phases_s),
        leader_bytes_in=int(c.leader_bytes_in),
        leader_bytes_out=int(c.leader_bytes_out),
        fog_facility_bytes=int(c.fog_facility_bytes),
        fog_bytes_in_max=int(c.fog_bytes_in_max),
        leader_by_peer={k: int(v) for k, v in c.leader_by_peer.items()},
    )


def event_to_proto(e: RoundEvent) -> leader_pb2.WatchRoundsResponse:
    return leader_pb2.WatchRoundsResponse(
        round=e.round,
        committed=e.committed,
        accuracy=e.accuracy,
        loss=e.loss,
        accepts=e.accepts,
        rejects=e.rejects,
        duration_s=e.duration_s,
        bytes_sent=e.bytes_sent,
        block_hash=e.block_hash,
        detail=e.detail,
        participants=e.participants,
        dropouts=e.dropouts,
        abandoned_buckets=e.abandoned_buckets,
        flagged_buckets=list(e.flagged_buckets),
        quarantined=list(e.quarantined),
        committee=list(e.committee),
        epsilon=e.epsilon,
        done=e.done,
        cost=cost_to_proto(e.cost) if e.cost is not None else None,
        clinical=clinical_to_proto(e.clinical) if e.clinical is not None else None,
        specialties=[specialty_to_proto(r) for r in e.specialties],
        votes=[
            leader_pb2.VoteRecord(
                validator=v.validator, accept=v.accept, reason=v.reason, answered=v.answered
            )
            for v in e.votes
        ],
        buckets=[
            leader_pb2.BucketRecord(
                bucket_id=b.bucket_id,
                fog_id=b.fog_id,
                members=list(b.members),
                dropped=list(b.dropped),
                flagged=b.flagged,
                abandoned=b.abandoned,
            )
            for b in e.buckets
        ],
    )


def event_from_proto(e: leader_pb2.WatchRoundsResponse) -> RoundEvent:
    return RoundEvent(
        round=int(e.round),
        committed=e.committed,
        accuracy=e.accuracy,
        loss=e.loss,
        accepts=e.accepts,
        rejects=e.rejects,
        duration_s=e.duration_s,
        bytes_sent=int(e.bytes_sent),
        block_hash=bytes(e.block_hash),
        detail=e.detail,
        participants=e.participants,
        dropouts=e.dropouts,
        abandoned_buckets=e.abandoned_buckets,
        flagged_buckets=tuple(e.flagged_buckets),
        quarantined=tuple(e.quarantined),
        committee=tuple(e.committee),
        epsilon=e.epsilon,
        done=e.done,
        cost=cost_from_proto(e.cost) if e.HasField("cost") else None,
        clinical=clinical_from_proto(e.clinical) if e.HasField("clinical") else None,
        specialties=tuple(specialty_from_proto(r) for r in e.specialties),
        votes=tuple(VoteRecord(v.validator, v.accept, v.reason, v.answered) for v in e.votes),
        buckets=tuple(
            BucketRecord(b.bucket_id, b.fog_id, tuple(b.members), tuple(b.dropped), b.flagged, b.abandoned)
            for b in e.buckets
        ),
    )


# ---------------------------------------------------------------- ledger blocks
_GENESIS_KEYS = {"model", "seed"}
_ROUND_KEYS = {"buckets", "fogs", "members", "committee_draw"}
_ROUND_OPTIONAL = {"norm_bound"}  # only with the adaptive norm bound (hfl/robust/bound.py)


def extra_to_proto(d: dict[str, Any]) -> pb.BlockExtra:
    """A block header's extra record -> BlockExtra (none, the genesis block's, or a round's)."""
    if not d:
        return pb.BlockExtra()
    if set(d) == _GENESIS_KEYS:
        model = d["model"]
        return pb.BlockExtra(
            genesis=pb.GenesisExtra(
                model=pb.ModelShape(
                    kind=str(model["kind"]), n_features=int(model["n_features"]), hidden=int(model["hidden"])
                ),
                seed=int(d["seed"]),
            )
        )
    if set(d) - _ROUND_OPTIONAL == _ROUND_KEYS:
        draw = _draw_to_proto(d["committee_draw"])
        norm = d.get("norm_bound")
        return pb.BlockExtra(
            round=pb.RoundExtra(
                buckets=[str(b) for b in d["buckets"]],
                fogs=[str(f) for f in d["fogs"]],
                members=[pb.BucketMembers(members=[str(x) for x in ms]) for ms in d["members"]],
                committee_draw=draw,
                norm_bound=None if norm is None else _norm_bound_to_proto(norm),
            )
        )
    raise ValueError(f"a block's extra record with keys {sorted(d)} has no typed form (hfl.v1.BlockExtra)")


def extra_from_proto(m: pb.BlockExtra) -> dict[str, Any]:
    """BlockExtra -> the header's extra record, exactly as it was hashed; bounded."""
    kind = m.WhichOneof("kind")
    if kind is None:
        return {}
    if kind == "genesis":
        g = m.genesis
        return {
            "model": {
                "kind": bounds.text(g.model.kind, "the genesis model kind", bounds.MAX_ID),
                "n_features": int(g.model.n_features),
                "hidden": int(g.model.hidden),
            },
            "seed": int(g.seed),
        }
    r = m.round
    if len(r.members) > bounds.MAX_LIST:
        raise InvalidInput(f"a block lists more than {bounds.MAX_LIST} buckets")
    out: dict[str, Any] = {
        "buckets": list(bounds.ids(r.buckets, "the block's buckets")),
        "fogs": list(bounds.ids(r.fogs, "the block's fogs")),
        "members": [list(bounds.ids(b.members, "a bucket's members")) for b in r.members],
        "committee_draw": _draw_from_proto(r.committee_draw if r.HasField("committee_draw") else None),
    }
    if r.HasField("norm_bound"):
        out["norm_bound"] = _norm_bound_from_proto(r.norm_bound)
    return out


def _norm_bound_to_proto(d: dict[str, Any]) -> pb.NormBoundHistory:
    ceiling, medians = d.get("ceiling"), d.get("medians")
    if set(d) != {"ceiling", "medians"} or not isinstance(ceiling, float) or not isinstance(medians, list):
        raise ValueError(
            f"a block's norm-bound record {d!r:.200} has no typed form (hfl.v1.NormBoundHistory)"
        )
    if not all(isinstance(v, float) for v in medians):
        raise ValueError("a block's norm-bound history must hold numbers with a decimal point (floats)")
    return pb.NormBoundHistory(ceiling=ceiling, medians=medians)


def _norm_bound_from_proto(m: pb.NormBoundHistory) -> dict[str, Any]:
    """NormBoundHistory -> {"ceiling", "medians"}: a positive ceiling, at most WINDOW_ROUNDS finite,
    non-negative medians."""
    ceiling, medians = float(m.ceiling), [float(v) for v in m.medians]
    if not math.isfinite(ceiling) or ceiling <= 0:
        raise InvalidInput("the block's norm-bound ceiling must be a positive number")
    if len(medians) > WINDOW_ROUNDS or not all(math.isfinite(v) and v >= 0 for v in medians):
        raise InvalidInput(
            f"the block's norm-bound history must hold at most {WINDOW_ROUNDS} finite, non-negative numbers"
        )
    return {"ceiling": ceiling, "medians": medians}


def header_to_proto(h: BlockHeader) -> pb.BlockHeader:
    return pb.BlockHeader(
        round=h.round,
        prev_hash=h.prev_hash,
        base_model_hash=h.base_model_hash,
        model_hash=h.model_hash,
        bucket_hashes=list(h.bucket_hashes),
        bucket_counts=list(h.bucket_counts),
        rule=h.rule,
        rule_params=rule_params_to_proto(h.rule_params),
        flagged=list(h.flagged),
        committee=[pb.CommitteeMember(node_id=c.node_id, public_key=c.public_key) for c in h.committee],
        quorum=h.quorum,
        config_hash=h.config_hash,
        extra=extra_to_proto(h.extra),
    )


def header_from_proto(m: pb.BlockHeader) -> BlockHeader:
    """BlockHeader message -> hfl.ledger.BlockHeader (its own checks run too); InvalidInput if malformed."""
    if m.round > bounds.MAX_ROUND:
        raise InvalidInput(f"block round {m.round} is out of range")
    for what, n in (("bucket hashes", len(m.bucket_hashes)), ("committee members", len(m.committee))):
        if n > bounds.MAX_LIST:
            raise InvalidInput(f"a block header lists more than {bounds.MAX_LIST} {what}")
    try:
        return BlockHeader(
            round=int(m.round),
            prev_hash=bytes(m.prev_hash),
            base_model_hash=bytes(m.base_model_hash),
            model_hash=bytes(m.model_hash),
            bucket_hashes=tuple(bytes(h) for h in m.bucket_hashes),
            bucket_counts=tuple(int(c) for c in m.bucket_counts),
            rule=bounds.text(m.rule, "the block's rule", bounds.MAX_ID),
            rule_params=rule_params_from_proto(m.rule_params),
            flagged=tuple(int(i) for i in m.flagged),
            committee=tuple(
                CommitteeMember(bounds.node_id(c.node_id, "a committee member"), bytes(c.public_key))
                for c in m.committee
            ),
            quorum=int(m.quorum),
            config_hash=bytes(m.config_hash),
            extra=extra_from_proto(m.extra),
        )
    except ValueError as e:
        raise InvalidInput(f"the block header of round {m.round} is malformed: {e}") from None


def block_to_proto(b: Block) -> validator_pb2.Block:
    return validator_pb2.Block(header=header_to_proto(b.header), votes=[vote_to_proto(v) for v in b.votes])


def block_from_proto(m: validator_pb2.Block) -> Block:
    header = header_from_proto(m.header)
    if len(m.votes) > bounds.MAX_LIST:
        raise InvalidInput(f"a block carries more than {bounds.MAX_LIST} votes")
    try:
        return Block(header, tuple(vote_from_proto(v) for v in m.votes))
    except ValueError as e:
        raise InvalidInput(f"the votes of block {header.round} are malformed: {e}") from None


def ledger_block_to_proto(r: BlockRecord) -> leader_pb2.LedgerBlock:
    return leader_pb2.LedgerBlock(
        round=r.round,
        hash=r.hash,
        header=header_to_proto(BlockHeader.from_dict(json.loads(r.header))),
        votes=[vote_to_proto(Vote.from_dict(v)) for v in json.loads(r.votes)],
        model=vector_to_proto(r.model),
        bucket_sums=[vector_to_proto(s) for s in r.bucket_sums],
    )


def ledger_block_from_proto(m: leader_pb2.LedgerBlock) -> BlockRecord:
    """A block as the leader sent it: only its shape is checked here; the chain is verified as a whole
    afterwards (hfl.round.audit.verify_ledger)."""
    if m.round > bounds.MAX_ROUND:
        raise InvalidInput(f"block round {m.round} is out of range")
    if len(m.bucket_sums) > bounds.MAX_LIST:
        raise InvalidInput(
            f"block {m.round} has {len(m.bucket_sums)} bucket sums, more than {bounds.MAX_LIST}"
        )
    what = f"block {m.round}"
    if not m.HasField("header"):
        raise InvalidInput(f"the header of {what} is missing")
    block = block_from_proto(validator_pb2.Block(header=m.header, votes=m.votes))
    if block.header.round != m.round:
        raise InvalidInput(f"{what} carries the header of round {block.header.round}")
    return BlockRecord(
        round=int(m.round),
        hash=bytes(m.hash),
        header=canonical_json(block.header.to_dict()).decode(),  # as a ledger stores it
        votes=canonical_json([v.to_dict() for v in block.votes]).decode(),
        model=vector_from_proto(m.model, what=f"the model of {what}", require_finite=False),
        bucket_sums=tuple(
            vector_from_proto(s, what=f"bucket sum {i} of {what}", require_finite=False)
            for i, s in enumerate(m.bucket_sums)
        ),
    )


# ---------------------------------------------------------------- secure aggregation
SECAGG_MAX_ATTEMPT = bounds.MAX_ATTEMPT
SECAGG_MAX_MEMBERS = 10_000
_SECAGG_MAX_BLOB = 4096  # bytes of one key, signature, share or sealed share pair


def secagg_round(round_: int, attempt: int) -> int:
    """The protocol round id of one round attempt, ``(round << 16) | attempt``: secure-aggregation
    messages are bound to it, so a message of one attempt is refused in any other."""
    if not 0 <= attempt <= SECAGG_MAX_ATTEMPT:
        raise InvalidInput(
            f"round attempt {attempt} is out of range for secure aggregation (0 to {SECAGG_MAX_ATTEMPT})"
        )
    if round_ < 0 or round_ > bounds.MAX_ROUND:
        raise InvalidInput(f"round {round_} is out of range for secure aggregation")
    return bounds.secagg_round_id(round_, attempt)


def quant_config(plan: TrainingPlan, bucket_size: int) -> QuantConfig:
    """The quantisation both the facility and the fog use for a bucket: the plan's clip, sized so the
    sum of the whole bucket can never wrap around mod 2**32."""
    try:
        return QuantConfig(clip=plan.clip_update, max_members=bucket_size)
    except QuantizationError as e:
        raise InvalidInput(f"secure aggregation cannot be set up for this plan: {e}") from None


def bucket_quant_configs(plan: TrainingPlan, buckets: Sequence[Bucket]) -> dict[str, QuantConfig]:
    """Each bucket's quantisation as its members and fog use it in secure aggregation, by bucket id: what
    the leader needs to read the integer sums its fogs send (bucket_result_from_proto). Empty when the
    plan does not use secure aggregation; a bucket that cannot use it is left out (its fog abandons it)."""
    if not plan.secure:
        return {}
    out = {}
    for b in buckets:
        try:
            out[b.bucket_id] = quant_config(plan, len(b.members))
        except InvalidInput:
            continue
    return out


def _blob(value: bytes, what: str, size: int | None = None) -> bytes:
    raw = bytes(value)
    if size is not None and len(raw) != size:
        raise InvalidInput(f"{what} must be {size} bytes, got {len(raw)}")
    if len(raw) > _SECAGG_MAX_BLOB:
        raise InvalidInput(f"{what} is too large ({len(raw)} bytes)")
    return raw


def _ids(values: Any, what: str) -> tuple[str, ...]:
    out = tuple(str(v) for v in values)
    if len(out) > SECAGG_MAX_MEMBERS:
        raise InvalidInput(f"{what} lists {len(out)} members, more than the limit of {SECAGG_MAX_MEMBERS}")
    if any(not v for v in out):
        raise InvalidInput(f"{what} contains an empty member id")
    for v in out:
        bounds.node_id(v, f"an entry of {what}")
    return out


def session_to_proto(round_: int, attempt: int, bucket_id: str) -> facility_pb2.SecAggSession:
    return facility_pb2.SecAggSession(round=round_, attempt=attempt, bucket_id=bucket_id)


def session_from_proto(s: facility_pb2.SecAggSession) -> tuple[int, int, str]:
    """(round, attempt, bucket id) of a secure-aggregation call, checked."""
    if not s.bucket_id:
        raise InvalidInput("the secure-aggregation call names no bucket")
    bounds.node_id(s.bucket_id, "bucket id")
    secagg_round(int(s.round), int(s.attempt))
    return int(s.round), int(s.attempt), s.bucket_id


def advertisement_to_proto(ad: KeyAdvertisement) -> facility_pb2.SecAggKeyAdvertisement:
    return facility_pb2.SecAggKeyAdvertisement(
        round=ad.round,
        bucket_id=ad.bucket,
        sender=ad.sender,
        c_pk=ad.c_pk,
        s_pk=ad.s_pk,
        signature=ad.signature,
    )


def advertisement_from_proto(m: facility_pb2.SecAggKeyAdvertisement) -> KeyAdvertisement:
    return KeyAdvertisement(
        round=int(m.round),
        bucket=bounds.text(m.bucket_id, "bucket id", bounds.MAX_ID),
        sender=bounds.text(m.sender, "sender", bounds.MAX_ID),
        c_pk=_blob(m.c_pk, f"the encryption key advertised by {clip(m.sender)}", 32),
        s_pk=_blob(m.s_pk, f"the masking key advertised by {clip(m.sender)}", 32),
        signature=_blob(m.signature, f"the advertisement signature of {clip(m.sender)}", 64),
    )


def share_to_proto(s: EncryptedShare) -> facility_pb2.SecAggEncryptedShare:
    return facility_pb2.SecAggEncryptedShare(
        round=s.round, bucket_id=s.bucket, sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext
    )


def share_from_proto(m: facility_pb2.SecAggEncryptedShare) -> EncryptedShare:
    return EncryptedShare(
        round=int(m.round),
        bucket=bounds.text(m.bucket_id, "bucket id", bounds.MAX_ID),
        sender=bounds.text(m.sender, "sender", bounds.MAX_ID),
        recipient=bounds.text(m.recipient, "recipient", bounds.MAX_ID),
        ciphertext=_blob(m.ciphertext, f"the encrypted share from {clip(m.sender)}"),
    )


def shares_from_proto(items: Any) -> list[EncryptedShare]:
    items = list(items)
    if len(items) > SECAGG_MAX_MEMBERS:
        raise InvalidInput(f"{len(items)} encrypted shares is more than the limit of {SECAGG_MAX_MEMBERS}")
    return [share_from_proto(m) for m in items]


def masked_input_to_proto(m: MaskedInput) -> facility_pb2.SecAggMaskedInputResponse:
    return facility_pb2.SecAggMaskedInputResponse(
        round=m.round, bucket_id=m.bucket, sender=m.sender, masked=vector_to_proto(m.y, pb.D_TYPE_UINT32)
    )


def masked_input_lifted(m: MaskedInput) -> tuple[facility_pb2.SecAggMaskedInputResponse, memoryview]:
    """The masked input as a response without its vector's bytes, and those bytes (a view of ``m.y``, no
    copy): hfl.rpc.link.encode_reply writes the two as one SecAggMaskedInputResponse."""
    y = np.ascontiguousarray(m.y, dtype=_DTYPES[pb.D_TYPE_UINT32]).reshape(-1)
    vec = pb.Vector(dtype=pb.D_TYPE_UINT32, length=y.size)
    response = facility_pb2.SecAggMaskedInputResponse(
        round=m.round, bucket_id=m.bucket, sender=m.sender, masked=vec
    )
    return response, memoryview(cast(Buffer, y)).cast("B")


def masked_input_from_proto(
    m: facility_pb2.SecAggMaskedInputResponse,
    *,
    expected_length: int | None,
    data: bytes | memoryview | None = None,
) -> MaskedInput:
    """The masked input in ``m``; ``data``: its masked vector's bytes when they were lifted out of the
    received answer (hfl.rpc.link.Lifted), so that ``y`` is a view of them and nothing is copied."""
    y = vector_from_proto(
        m.masked,
        data=data,
        expected_length=expected_length,
        dtype=pb.D_TYPE_UINT32,
        what=f"masked update from {clip(m.sender)}",
        as_float64=False,  # a read-only view: the aggregator adds it into its sum and lets it go
    )
    return MaskedInput(
        round=int(m.round),
        bucket=bounds.text(m.bucket_id, "bucket id", bounds.MAX_ID),
        sender=bounds.text(m.sender, "sender", bounds.MAX_ID),
        y=y,
    )


def unmask_request_to_proto(round_: int, attempt: int, r: UnmaskRequest) -> facility_pb2.SecAggUnmaskRequest:
    return facility_pb2.SecAggUnmaskRequest(
        session=session_to_proto(round_, attempt, r.bucket),
        survivors=list(r.survivors),
        dropped=list(r.dropped),
    )


def unmask_request_from_proto(m: facility_pb2.SecAggUnmaskRequest) -> tuple[int, int, UnmaskRequest]:
    """(round, attempt, request); the request's ``round`` is the protocol round id."""
    round_, attempt, bucket = session_from_proto(m.session)
    return (
        round_,
        attempt,
        UnmaskRequest(
            round=secagg_round(round_, attempt),
            bucket=bucket,
            survivors=_ids(m.survivors, "the survivor list"),
            dropped=_ids(m.dropped, "the dropout list"),
        ),
    )


def _owned(items: Any, what: str) -> tuple[tuple[str, bytes], ...]:
    items = list(items)
    if len(items) > SECAGG_MAX_MEMBERS:
        raise InvalidInput(f"{what}: {len(items)} shares is more than the limit of {SECAGG_MAX_MEMBERS}")
    return tuple(
        (bounds.text(o.owner, "share owner", bounds.MAX_ID), _blob(o.share, f"{what} for {clip(o.owner)}"))
        for o in items
    )


def unmask_response_to_proto(r: UnmaskResponse) -> facility_pb2.SecAggUnmaskResponse:
    return facility_pb2.SecAggUnmaskResponse(
        round=r.round,
        bucket_id=r.bucket,
        sender=r.sender,
        b_shares=[facility_pb2.SecAggOwnedShare(owner=o, share=s) for o, s in r.b_shares],
        s_shares=[facility_pb2.SecAggOwnedShare(owner=o, share=s) for o, s in r.s_shares],
    )


def unmask_response_from_proto(m: facility_pb2.SecAggUnmaskResponse) -> UnmaskResponse:
    return UnmaskResponse(
        round=int(m.round),
        bucket=bounds.text(m.bucket_id, "bucket id", bounds.MAX_ID),
        sender=bounds.text(m.sender, "sender", bounds.MAX_ID),
        b_shares=_owned(m.b_shares, f"self-mask shares from {clip(m.sender)}"),
        s_shares=_owned(m.s_shares, f"masking-key shares from {clip(m.sender)}"),
    )


# ---------------------------------------------------------------- privacy spend reports
def spend_to_proto(r: SpendReport) -> authority_pb2.PrivacySpend:
    """hfl.privacy.report.SpendReport -> authority_pb2.PrivacySpend."""
    return authority_pb2.PrivacySpend(
        facility_id=r.facility_id,
        round=r.round,
        attempt=r.attempt,
        kind=r.kind,
        epsilon_total=r.epsilon_total,
        delta=r.delta,
        steps=r.steps,
        exhausted=r.exhausted,
        details=spend_details_to_proto(r.details),
        signature=r.signature,
    )


_SPEND_TEXT = ("mechanism", "accountant", "declined")
_SPEND_INTS = ("total_steps", "sensitivity")
_SPEND_FLOATS = ("noise_multiplier", "sampling_rate")


def spend_details_to_proto(d: dict[str, Any]) -> authority_pb2.SpendDetails:
    """A spend report's details -> SpendDetails (each key keeps its type; the signature covers them)."""
    m = authority_pb2.SpendDetails()
    for k, v in d.items():
        if (
            (k in _SPEND_TEXT and isinstance(v, str))
            or (k in _SPEND_INTS and isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            or (k in _SPEND_FLOATS and isinstance(v, float))
        ):
            setattr(m, k, v)
        elif k == "statistics" and isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            m.statistics.extend(v)
        else:
            raise ValueError(f"privacy spend detail {k}={v!r} has no typed field (hfl.v1.SpendDetails)")
    return m


def spend_details_from_proto(m: authority_pb2.SpendDetails) -> dict[str, Any]:
    """SpendDetails -> the report's details dict (only the fields that are set), bounded."""
    out: dict[str, Any] = {}
    for field, value in m.ListFields():
        if field.name == "statistics":
            out["statistics"] = list(bounds.ids(value, "the released statistics", limit=32))
        elif field.name in _SPEND_TEXT:
            out[field.name] = bounds.text(value, f"the spend's {field.name}", bounds.MAX_JSON)
        elif field.name in _SPEND_FLOATS:
            if not math.isfinite(value):
                raise InvalidInput(f"the spend's {field.name} must be a finite number")
            out[field.name] = float(value)
        else:
            out[field.name] = int(value)
    return out


def spend_from_proto(m: authority_pb2.PrivacySpend) -> SpendReport:
    """authority_pb2.PrivacySpend -> hfl.privacy.report.SpendReport (validated)."""
    from hfl.privacy.report import SpendReport

    try:
        return SpendReport(
            facility_id=bounds.node_id(m.facility_id, "facility id"),
            round=bounds.round_attempt(int(m.round), int(m.attempt))[0],
            attempt=int(m.attempt),
            kind=bounds.text(m.kind, "privacy accounting kind", bounds.MAX_ID),
            epsilon_total=float(m.epsilon_total),
            delta=float(m.delta),
            steps=int(m.steps),
            exhausted=bool(m.exhausted),
            details=spend_details_from_proto(m.details),
            signature=bytes(m.signature),
        )
    except ValueError as e:
        raise InvalidInput(str(e)) from None


# ---------------------------------------------------------------- the operator's security report
def security_to_proto(r: SecurityReport) -> authority_pb2.GetSecurityReportResponse:
    return authority_pb2.GetSecurityReportResponse(
        quarantine_threshold=r.quarantine_threshold,
        facilities=[
            authority_pb2.FacilityStanding(
                facility=f,
                suspicion=s,
                quarantined=f in r.quarantined,
                quarantined_round=r.quarantined.get(f, 0),
            )
            for f, s in sorted(r.suspicion.items())
        ],
        history=[authority_pb2.SuspicionAt(round=rnd, suspicion=s) for rnd, s in r.history],
        validator_weights=r.validator_weights,
        certificates=[
            authority_pb2.CertificateStatus(
                node_id=c.node_id, role=c.role, expires=c.expires, revoked=c.revoked
            )
            for c in r.certificates
        ],
        shared_tokens=[
            authority_pb2.SharedTokenStatus(role=t.role, used=t.used, max_uses=t.max_uses, expires=t.expires)
            for t in r.shared_tokens
        ],
        records=[
            authority_pb2.SecurityRecord(
                node_id=x.node_id, action=x.action, at=x.at, reason=x.reason, by=x.by
            )
            for x in r.records
        ],
        refused=r.refused,
    )


def security_from_proto(m: authority_pb2.GetSecurityReportResponse) -> SecurityReport:
    return SecurityReport(
        quarantine_threshold=m.quarantine_threshold,
        suspicion={f.facility: f.suspicion for f in m.facilities},
        quarantined={f.facility: int(f.quarantined_round) for f in m.facilities if f.quarantined},
        history=tuple((int(h.round), dict(h.suspicion)) for h in m.history),
        validator_weights=dict(m.validator_weights),
        certificates=tuple(
            CertificateStatus(c.node_id, c.role, c.expires, c.revoked) for c in m.certificates
        ),
        shared_tokens=tuple(
            SharedTokenStatus(t.role, int(t.used), int(t.max_uses), t.expires) for t in m.shared_tokens
        ),
        records=tuple(SecurityRecord(x.node_id, x.action, x.at, x.reason, x.by) for x in m.records),
        refused={k: int(v) for k, v in m.refused.items()},
    )


# ---------------------------------------------------------------- the leader's round report
def round_report_to_proto(r: RoundReport) -> authority_pb2.RoundReport:
    return authority_pb2.RoundReport(
        flags=r.flags,
        refused=list(r.refused),
        absent=list(r.absent),
        votes=[
            authority_pb2.CommitteeVote(validator=v, answered=a is not None, accept=bool(a))
            for v, a in r.votes
        ],
        fogs_down=list(r.fogs_down),
        fogs_up=list(r.fogs_up),
    )


def round_report_from_proto(m: authority_pb2.RoundReport) -> RoundReport:
    """Checked against hfl.bounds; raises InvalidInput (a plain sentence) for anything out of bounds."""
    bounds.ids(m.flags.keys(), "the flagged buckets")
    bounds.ids(m.flags.values(), "the flag kinds")
    validators = bounds.ids((v.validator for v in m.votes), "the committee")
    if len(set(validators)) != len(validators):
        raise InvalidInput("the round report lists a committee member twice")
    return RoundReport(
        flags=dict(m.flags),
        refused=bounds.ids(m.refused, "the refused members"),
        absent=bounds.ids(m.absent, "the absent members"),
        votes=tuple((v.validator, v.accept if v.answered else None) for v in m.votes),
        fogs_down=bounds.ids(m.fogs_down, "the fogs that were down"),
        fogs_up=bounds.ids(m.fogs_up, "the fogs that answered"),
    )


# ---------------------------------------------------------------- operator controls and their record
CONTROL_ACTIONS = {
    leader_pb2.CONTROL_ACTION_PAUSE: "pause",
    leader_pb2.CONTROL_ACTION_RESUME: "resume",
    leader_pb2.CONTROL_ACTION_STOP_AFTER: "stop_after",
    leader_pb2.CONTROL_ACTION_ROUND_INTERVAL: "round_interval",
}


def control_action_from_proto(action: int) -> str:
    try:
        return CONTROL_ACTIONS[action]  # type: ignore[index]
    except KeyError:
        raise InvalidInput("say which control: pause, resume, stop after a round or round interval") from None


def control_action_to_proto(action: str) -> int:
    return {v: k for k, v in CONTROL_ACTIONS.items()}[action]


def training_control_to_proto(c: TrainingControl) -> leader_pb2.TrainingControl:
    m = leader_pb2.TrainingControl(paused=c.paused, pause_reason=c.pause_reason)
    if c.stop_after is not None:
        m.stop_after = c.stop_after
    if c.round_interval_s is not None:
        m.round_interval_s = c.round_interval_s
    return m


def training_control_from_proto(m: leader_pb2.TrainingControl) -> TrainingControl:
    return TrainingControl(
        paused=m.paused,
        pause_reason=m.pause_reason,
        stop_after=int(m.stop_after) if m.HasField("stop_after") else None,
        round_interval_s=float(m.round_interval_s) if m.HasField("round_interval_s") else None,
    )


def operator_action_to_proto(a: OperatorAction) -> pb.OperatorAction:
    return pb.OperatorAction(
        at=a.at, by=a.by, action=a.action, target=a.target, reason=a.reason, result=a.result
    )


def operator_action_from_proto(m: pb.OperatorAction) -> OperatorAction:
    return OperatorAction(m.at, m.by, m.action, m.target, m.reason, m.result)
