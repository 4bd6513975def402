"""Plain domain types exchanged between services (protobuf stays at the boundary, see hfl.rpc.serde)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hfl.crypto.signing import SigningKey, verify
from hfl.hashing import hash_json

if TYPE_CHECKING:  # hfl.privacy loads dp_accounting; the plan is only built where DP is used (serde)
    from hfl.privacy.federation import DPPlan

ROLES = ("authority", "leader", "fog", "facility", "validator")
SPECIALTIES = ("hospital", "clinic", "research", "emergency")


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    role: str
    address: str
    sign_public_key: bytes = b""
    specialty: str = ""
    metrics_address: str = ""
    region: str = ""  # the region a fog serves or a facility belongs to ("": none)
    fog: str = ""  # facilities: the fog it is connected to now, as it said when it last registered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Bucket:
    bucket_id: str
    fog_id: str
    members: tuple[str, ...]
    threshold: int = 0
    group: str = ""  # evaluation buckets only: the members' specialty, or "mixed"


@dataclass(frozen=True)
class RoundConfig:
    """What the authority decided for one round attempt; signed so every party can check it."""

    round: int
    attempt: int
    seed: bytes
    ledger_head: bytes
    epoch: int
    buckets: tuple[Bucket, ...]
    committee: tuple[NodeInfo, ...]
    quorum: int
    facilities: tuple[NodeInfo, ...]
    fogs: tuple[NodeInfo, ...]
    quarantined: tuple[str, ...] = ()
    committee_draw: dict[str, Any] = field(default_factory=dict)
    # Buckets for evaluating the committed model: the same facilities, grouped by specialty (each of at
    # least three), so masked sums per bucket add up to results per specialty (hfl.schedule).
    eval_buckets: tuple[Bucket, ...] = ()
    signature: bytes = b""

    def signed_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("signature")
        return d

    def hash(self) -> bytes:
        return hash_json(b"hfl/round-config/v1", self.signed_dict())

    def sign(self, key: SigningKey) -> RoundConfig:
        from dataclasses import replace

        return replace(self, signature=key.sign(self.hash()))

    def verify(self, authority_public_key: bytes) -> None:
        """Raise InvalidSignature unless the authority signed exactly this configuration."""
        verify(authority_public_key, self.hash(), self.signature)

    def bucket(self, bucket_id: str) -> Bucket:
        for b in self.buckets:
            if b.bucket_id == bucket_id:
                return b
        raise KeyError(bucket_id)

    def eval_bucket(self, bucket_id: str) -> Bucket:
        for b in self.eval_buckets:
            if b.bucket_id == bucket_id:
                return b
        raise KeyError(bucket_id)

    def bucket_view(self, bucket_id: str) -> RoundConfig:
        """The part of this configuration one bucket's facilities need (their bucket, its members and its
        fog), unsigned: the authority signs it too, so a facility's messages and checks stay the same size
        however many facilities the federation has. Works for training and evaluation buckets alike (the
        view keeps the bucket in the list it came from). Raises KeyError for an unknown bucket."""
        from dataclasses import replace

        training: tuple[Bucket, ...] = ()
        evaluation: tuple[Bucket, ...] = ()
        try:
            b = self.bucket(bucket_id)
            training = (b,)
        except KeyError:
            b = self.eval_bucket(bucket_id)
            evaluation = (b,)
        members = set(b.members)
        return replace(
            self,
            buckets=training,
            eval_buckets=evaluation,
            facilities=tuple(n for n in self.facilities if n.node_id in members),
            fogs=tuple(n for n in self.fogs if n.node_id == b.fog_id),
            committee=(),
            committee_draw={},
            signature=b"",
        )

    def is_bucket_view_of(self, full: RoundConfig) -> bool:
        """True if this is exactly ``full.bucket_view(<its one bucket>)`` (signature aside)."""
        only = self.view_bucket()
        if only is None:
            return False
        try:
            return self.signed_dict() == full.bucket_view(only.bucket_id).signed_dict()
        except KeyError:
            return False

    def view_bucket(self) -> Bucket | None:
        """The one bucket of a bucket view (training or evaluation), None if this is not a view."""
        both = (*self.buckets, *self.eval_buckets)
        return both[0] if len(both) == 1 else None

    def bucket_of(self, facility_id: str) -> Bucket | None:
        for b in self.buckets:
            if facility_id in b.members:
                return b
        return None

    def node(self, node_id: str) -> NodeInfo:
        for n in (*self.facilities, *self.fogs, *self.committee):
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    n_features: int
    hidden: int = 16


@dataclass(frozen=True)
class TrainingPlan:
    """The leader's instructions for local training in a round."""

    lr: float
    epochs: int
    batch_size: int
    clip_update: float
    secure: bool = True
    timeout_s: float = 60.0
    dp: DPPlan | None = None  # set when the federation trains with differential privacy


@dataclass(frozen=True)
class BucketResult:
    """A fog's answer for one bucket: the sum of its members' updates (never a single update)."""

    bucket_id: str
    fog_id: str
    total: np.ndarray
    count: int
    members: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    abandoned: bool = False
    reason: str = ""
    refused: tuple[str, ...] = ()
    unreachable: tuple[str, ...] = ()  # did not answer the round's first call (down or cut off)


@dataclass(frozen=True)
class Metrics:
    """Evaluation counts that add up across facilities and buckets (so they can be pooled without any
    one site's numbers being needed): accuracy and loss, and for clinical metrics the confusion matrix at
    the 0.5 threshold, the summed squared error of the probabilities (Brier) and histograms of the
    predicted probabilities of patients with and without the outcome (for ROC AUC). Empty histograms:
    not reported (older facilities, bench runs). See hfl.learning.metrics."""

    correct: int = 0
    total: int = 0
    loss_sum: float = 0.0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    brier_sum: float = 0.0
    positive_scores: tuple[int, ...] = ()
    negative_scores: tuple[int, ...] = ()

    def __add__(self, other: Metrics) -> Metrics:
        def hist(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
            if a and b:
                return tuple(x + y for x, y in zip(a, b, strict=True))
            if not a and not self.total:  # an empty part (e.g. a fog that did not answer) adds nothing
                return b
            if not b and not other.total:
                return a
            return ()  # a part with patients but no histogram: a pooled histogram would be partial

        return Metrics(
            self.correct + other.correct,
            self.total + other.total,
            self.loss_sum + other.loss_sum,
            self.tp + other.tp,
            self.fp + other.fp,
            self.tn + other.tn,
            self.fn + other.fn,
            self.brier_sum + other.brier_sum,
            hist(self.positive_scores, other.positive_scores),
            hist(self.negative_scores, other.negative_scores),
        )

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def loss(self) -> float:
        return self.loss_sum / self.total if self.total else float("nan")


@dataclass(frozen=True)
class ClinicalMetrics:
    """Pooled clinical metrics of a round's model on the facilities' held-out patients (NaN: undefined,
    e.g. no patient with the outcome). See hfl.learning.metrics for how each is computed."""

    auc: float = float("nan")
    sensitivity: float = float("nan")
    specificity: float = float("nan")
    ppv: float = float("nan")
    npv: float = float("nan")
    brier: float = float("nan")
    baseline_accuracy: float = float("nan")  # always predicting the more common class
    prevalence: float = float("nan")

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if v != v else round(v, 6)) for k, v in asdict(self).items()}  # NaN -> None


@dataclass(frozen=True)
class BucketEvaluation:
    """A fog's summed test metrics for one evaluation bucket (``problem`` set: no sum, and why)."""

    bucket_id: str
    group: str
    facilities: int
    metrics: Metrics
    problem: str = ""


@dataclass(frozen=True)
class SpecialtyResult:
    """One specialty's results for a round's model over ``facilities`` facilities; ``not_reported`` says
    why there are none (fewer than three facilities, or their sums were lost)."""

    specialty: str
    facilities: int = 0
    accuracy: float = float("nan")
    loss: float = float("nan")
    clinical: ClinicalMetrics | None = None
    not_reported: str = ""

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if x != x else round(x, 6)

        if self.not_reported:
            return {
                "specialty": self.specialty,
                "facilities": self.facilities,
                "not_reported": self.not_reported,
            }
        return {
            "specialty": self.specialty,
            "facilities": self.facilities,
            "accuracy": num(self.accuracy),
            "loss": num(self.loss),
            "clinical": self.clinical.to_dict() if self.clinical is not None else None,
        }


@dataclass(frozen=True)
class RoundReport:
    """The leader's evidence after a round attempt: flagged buckets (id -> kind), members a fog refused
    as malformed, members that never answered, and, when a block was proposed, each committee member's
    vote in committee order (None: it did not answer)."""

    flags: dict[str, str] = field(default_factory=dict)
    refused: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    votes: tuple[tuple[str, bool | None], ...] = ()
    fogs_down: tuple[str, ...] = ()  # fogs the leader could not reach this round
    fogs_up: tuple[str, ...] = ()  # fogs that answered it

    @property
    def committee(self) -> tuple[str, ...]:
        return tuple(v for v, _ in self.votes)


@dataclass(frozen=True)
class RoundCost:
    """Where one round attempt's time and bytes went, as the leader measured them (seconds per phase;
    the leader's own traffic, the fogs' traffic with their facilities, the largest fog answer)."""

    phases_s: dict[str, float] = field(default_factory=dict)
    leader_bytes_in: int = 0
    leader_bytes_out: int = 0
    fog_facility_bytes: int = 0
    fog_bytes_in_max: int = 0
    leader_by_peer: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As summary.json and the benchmarks record it."""
        return {
            "phases": dict(self.phases_s),
            "traffic": {
                "leader_bytes_in": self.leader_bytes_in,
                "leader_bytes_out": self.leader_bytes_out,
                "fog_facility_bytes": self.fog_facility_bytes,
                "fog_bytes_in_max": self.fog_bytes_in_max,
                "leader_by_peer": dict(sorted(self.leader_by_peer.items())),
            },
        }


@dataclass(frozen=True)
class VoteRecord:
    """How one committee member voted on a round attempt (``answered`` False: no vote in time)."""

    validator: str
    accept: bool = False
    reason: str = ""
    answered: bool = True


@dataclass(frozen=True)
class BucketRecord:
    """One bucket of a round attempt, for the operator: who served it, who was in it, what became of it."""

    bucket_id: str
    fog_id: str
    members: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    flagged: bool = False
    abandoned: bool = False


@dataclass(frozen=True)
class RoundEvent:
    """What the leader announces after each round attempt."""

    round: int
    committed: bool
    accuracy: float = float("nan")
    loss: float = float("nan")
    accepts: int = 0
    rejects: int = 0
    duration_s: float = 0.0
    bytes_sent: int = 0
    block_hash: bytes = b""
    detail: str = ""
    participants: int = 0
    dropouts: int = 0
    abandoned_buckets: int = 0
    flagged_buckets: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()
    committee: tuple[str, ...] = ()
    epsilon: float = float("nan")
    done: bool = False
    cost: RoundCost | None = None
    clinical: ClinicalMetrics | None = None
    specialties: tuple[SpecialtyResult, ...] = ()
    votes: tuple[VoteRecord, ...] = ()
    buckets: tuple[BucketRecord, ...] = ()


@dataclass(frozen=True)
class CertificateStatus:
    """A node's newest certificate as the authority issued it (expiry in ISO 8601, UTC)."""

    node_id: str
    role: str
    expires: str
    revoked: bool = False


@dataclass(frozen=True)
class SharedTokenStatus:
    """A shared enrolment token (never the token itself): how often it was used and may be used."""

    role: str
    used: int
    max_uses: int
    expires: str = ""


@dataclass(frozen=True)
class SecurityRecord:
    """One security event for the operator: an enrolment, a revocation or a release."""

    node_id: str
    action: str
    at: str
    reason: str = ""
    by: str = ""


@dataclass(frozen=True)
class SecurityReport:
    """What the authority tells the operator about the federation's security (the console's view)."""

    quarantine_threshold: float
    suspicion: dict[str, float]  # now, per facility
    quarantined: dict[str, int]  # facility -> the round it was quarantined in
    history: tuple[tuple[int, dict[str, float]], ...] = ()  # (round, suspicion per facility), oldest first
    validator_weights: dict[str, float] = field(default_factory=dict)
    certificates: tuple[CertificateStatus, ...] = ()
    shared_tokens: tuple[SharedTokenStatus, ...] = ()
    records: tuple[SecurityRecord, ...] = ()
    refused: dict[str, int] = field(default_factory=dict)  # "Method: STATUS" -> calls the authority refused
