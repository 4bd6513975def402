"""The authority's schedule for a round, without I/O: who may take part, the buckets (per fog, sized for
secure aggregation, with their Shamir unmasking threshold), the evaluation buckets, the committee and its
quorum. The servicer (services/authority) gathers the inputs from its registry, reputation, privacy and
attendance books, stores the per-epoch committee draw, signs the configuration and sends it.

The constants come from one place each: the smallest secure bucket from hfl.secagg (``MIN_BUCKET_SIZE``,
aliased ``MIN_SECURE_BUCKET`` in hfl.schedule), the Shamir threshold from ``hfl.secagg.unmask_threshold``,
the quorum from ``hfl.ledger.quorum_size``. The draws are pure functions of public inputs (hfl.schedule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hfl.domain import Bucket, NodeInfo, RoundConfig
from hfl.errors import BudgetSpent, ConfigError, InvalidInput, NotReady
from hfl.hashing import HASH_LEN
from hfl.ledger import quorum_size
from hfl.schedule import (
    MIN_SECURE_BUCKET,
    assign_buckets_at,
    assign_eval_buckets_at,
    draw_base,
    equal_buckets_now,
    round_seed,
    select_committee,
)
from hfl.secagg import unmask_threshold

COMMITTEE_DRAW_ATTEMPT = 0xFFFF  # the committee seed of an epoch: round_seed(base, epoch, this)


@dataclass(frozen=True)
class ScheduleSettings:
    """The settings the schedule depends on (HFL_BUCKET_SIZE, HFL_COMMITTEE_SIZE, HFL_MIN_FACILITIES,
    HFL_SECAGG, HFL_EPOCH_ROUNDS, HFL_EXPERIMENT_SEED; ``equal_buckets`` follows HFL_RULE and
    HFL_MAX_BYZANTINE: true for a rule that leaves out bad buckets in a federation that expects misbehaving
    facilities, whose defences see one best in buckets of one size, hfl.schedule.bucket_sizes; it is used
    in the rounds after an unexplained flag, hfl.schedule.equal_buckets_now)."""

    bucket_size: int
    committee_size: int
    min_facilities: int = 1
    secagg: bool = True
    epoch_rounds: int = 1
    experiment_seed: int | None = None
    equal_buckets: bool = False

    def __post_init__(self) -> None:
        if self.bucket_size < 1:
            raise ConfigError(f"the bucket size must be at least 1, not {self.bucket_size}")
        if self.committee_size < 1:
            raise ConfigError(f"the committee needs at least 1 validator, not {self.committee_size}")

    @property
    def smallest_bucket(self) -> int:
        """The fewest facilities a bucket may have: secure aggregation needs MIN_SECURE_BUCKET."""
        return MIN_SECURE_BUCKET if self.secagg else 1

    def epoch(self, round_: int) -> int:
        """The committee epoch of ``round_`` (rounds are numbered from 1)."""
        return (round_ - 1) // max(1, self.epoch_rounds)


@dataclass(frozen=True)
class Federation:
    """The registered nodes and who is left out: quarantined, out of privacy budget, or away (missed
    their last rounds); and the last round with a flagged bucket none of whose members is quarantined
    (None: none), which decides whether buckets are of one size (hfl.schedule.equal_buckets_now)."""

    facilities: tuple[NodeInfo, ...]
    fogs: tuple[NodeInfo, ...]
    validators: tuple[NodeInfo, ...]
    quarantined: frozenset[str] = frozenset()
    out_of_budget: frozenset[str] = frozenset()
    away: frozenset[str] = frozenset()
    last_flagged_round: int | None = None

    def eligible(self) -> tuple[NodeInfo, ...]:
        """The facilities that may take part this round."""
        gone = self.quarantined | self.out_of_budget | self.away
        return tuple(n for n in self.facilities if n.node_id not in gone)


@dataclass(frozen=True)
class RoundPlan:
    """The unsigned configuration, the facilities that sit out because too few are at their fog for a
    bucket (and those fogs), and those that rest this round so that every bucket has exactly the bucket
    size (after an unexplained flag, hfl.schedule.equal_buckets_now; drawn anew each round)."""

    config: RoundConfig
    sit_out: tuple[str, ...]
    sit_out_fogs: tuple[str, ...]
    resting: tuple[str, ...] = ()


def check_ready(settings: ScheduleSettings, federation: Federation) -> tuple[NodeInfo, ...]:
    """The facilities that may take part; raises NotReady (or BudgetSpent) when no round can be scheduled
    yet, saying why in plain words."""
    s, fed = settings, federation
    registered, quarantined, out_of_budget = fed.facilities, fed.quarantined, fed.out_of_budget
    facilities = fed.eligible()
    if len(registered) < max(1, s.min_facilities):
        raise NotReady(f"only {len(registered)} facilities are registered; waiting for {s.min_facilities}")
    if (
        not facilities
        and out_of_budget
        and all(n.node_id in quarantined or n.node_id in out_of_budget for n in registered)
    ):
        raise BudgetSpent(
            f"every facility that could take part has used up its privacy budget "
            f"({len(out_of_budget)} used up, {len(quarantined)} quarantined)"
        )
    if not facilities:
        raise NotReady(
            f"no facility can take part: {len(quarantined)} quarantined, "
            f"{len(out_of_budget)} have used up their privacy budget, "
            f"{len(fed.away)} missed their last rounds"
        )
    if not fed.fogs:
        raise NotReady("no fog is registered yet")
    if len(fed.validators) < s.committee_size:
        raise NotReady(
            f"only {len(fed.validators)} validators are registered; the committee needs {s.committee_size}"
        )
    return facilities


def draw_committee(
    settings: ScheduleSettings,
    validators: Sequence[NodeInfo],
    weights: Mapping[str, float],
    head: bytes,
    epoch: int,
) -> dict[str, object]:
    """An epoch's committee draw (stored by the authority and recorded in the configuration): drawn from
    the ledger head at the epoch's first round, weighted by reputation (``weights``, by validator id;
    1 when missing)."""
    pool = sorted(v.node_id for v in validators)
    weights = {v: round(weights.get(v, 1.0), 6) for v in pool}
    committee_seed = round_seed(draw_base(head, settings.experiment_seed), epoch, COMMITTEE_DRAW_ATTEMPT)
    members = select_committee(pool, settings.committee_size, committee_seed, weights)
    return {
        "epoch": epoch,
        "seed": committee_seed.hex(),
        "pool": pool,
        "weights": weights,
        "size": settings.committee_size,
        "members": members,
    }


def schedule_round(
    settings: ScheduleSettings,
    federation: Federation,
    *,
    round_: int,
    attempt: int,
    head: bytes,
    homes: Mapping[str, str],
    committee: Sequence[NodeInfo],
    committee_draw: Mapping[str, object],
) -> RoundPlan:
    """The configuration of round ``round_`` attempt ``attempt`` after the ledger head ``head``, unsigned.

    ``homes``: each facility's home fog (hfl.schedule.home_fogs over the fogs that are up); a facility is
    reached through the fog it is connected to while that fog is a home, else through its home fog.
    ``committee``: the epoch's drawn members (``committee_draw["members"]``), as registered.
    Raises InvalidInput for malformed arguments, NotReady when no round can be scheduled and ConfigError
    when secure aggregation would get a bucket too small to be safe."""
    s = settings
    if round_ < 1:
        raise InvalidInput("rounds are numbered from 1")
    if attempt < 0:
        raise InvalidInput("attempts are numbered from 0")
    if len(head) != HASH_LEN:
        raise InvalidInput("the ledger head must be a 32-byte hash")
    if not committee:
        raise InvalidInput("the round needs a committee")
    facilities = check_ready(s, federation)
    seed = round_seed(draw_base(head, s.experiment_seed), round_, attempt)
    up = set(homes.values())
    at = {n.node_id: n.fog if n.fog in up else homes[n.node_id] for n in facilities if n.node_id in homes}
    equal = equal_buckets_now(s.equal_buckets, round_, federation.last_flagged_round)
    plans, sit_out, resting = assign_buckets_at(
        at, s.bucket_size, seed, smallest=s.smallest_bucket, equal=equal
    )
    if not plans:
        raise NotReady(
            f"no fog has enough facilities for a bucket this round ({len(at)} facilities can take part)"
        )
    placed = {m for p in plans for m in p.members}
    by_id = {n.node_id: n for n in facilities if n.node_id in placed}
    small = [p for p in plans if len(p.members) < MIN_SECURE_BUCKET]
    if s.secagg and small:  # fine for plain sums, unsafe for masked ones
        raise ConfigError(
            f"secure aggregation needs buckets of at least {MIN_SECURE_BUCKET} facilities, but bucket "
            f"{small[0].bucket_id} would have {len(small[0].members)} (HFL_BUCKET_SIZE={s.bucket_size}, "
            f"{len(by_id)} facilities available): with 2, each member could subtract its own update "
            "from the sum and learn the other's. Raise HFL_BUCKET_SIZE, add facilities, "
            "or set HFL_SECAGG=false."
        )
    buckets = tuple(Bucket(p.bucket_id, p.fog_id, p.members, unmask_threshold(len(p.members))) for p in plans)
    # Evaluation of the committed model: the same facilities, grouped by specialty (hfl.schedule).
    eval_plans = assign_eval_buckets_at(
        {m: by_id[m].specialty for p in plans for m in p.members}, at, s.bucket_size, seed
    )
    eval_buckets = tuple(
        Bucket(p.bucket_id, p.fog_id, p.members, unmask_threshold(len(p.members)), p.group)
        for p in eval_plans
    )
    config = RoundConfig(
        round=round_,
        attempt=attempt,
        seed=seed,
        ledger_head=head,
        epoch=s.epoch(round_),
        buckets=buckets,
        committee=tuple(committee),
        quorum=quorum_size(len(committee)),
        facilities=tuple(by_id[m] for p in plans for m in p.members),
        fogs=tuple(federation.fogs),
        quarantined=tuple(sorted(federation.quarantined)),
        committee_draw=dict(committee_draw),
        eval_buckets=eval_buckets,
    )
    return RoundPlan(config, tuple(sit_out), tuple(sorted({at[f] for f in sit_out})), tuple(resting))
