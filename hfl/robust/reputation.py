"""Reputation: find misbehaving facilities by group testing, and weigh validators by their votes.

Facilities. The leader only sees bucket sums, so a flag says "someone in this bucket misbehaved", not who.
Buckets are re-drawn every round, so a facility that keeps misbehaving is the common member of flagged
buckets while honest facilities are only sometimes unlucky. Each facility is watched by a sequential
probability ratio test (Wald's SPRT; :class:`QuarantineTest`) with a false-positive rate that follows from
the federation's size, bucket size and declared number m of misbehaving facilities (unset: one in six
facilities, at least one, ``default_max_byzantine``):

Only rounds with a flag are evidence. In a round where none of the buckets of a facility's pool (its
fog's buckets, or all of them with one fog) is flagged, nobody's evidence moves: an offender that lies
low for a while loses nothing, and an honest facility gains nothing. In a round with flags:

* H0, honest: its place is drawn uniformly among the honest places whoever misbehaves, so it is in a
  flagged bucket with probability at most p0 = (Σ flagged sizes − min(k, m)) / (pool − m) + false_flag
  for k flagged buckets (``base_rate``; 0.30 for one flagged bucket of 4 among 11 facilities, m = 1).
* H1, offender: its bucket is among the flagged ones with probability ``p1`` (0.95 by default: when
  only offenders are flagged, the flag is theirs; 0.95 rather than 0.9 quarantines all 8 of 8 offenders
  among 48 facilities by round 10 in 98.5 % of 200 simulated runs, against 72 %).
* A facility in a flagged bucket adds ln(p1/p0) to its evidence (its log-likelihood ratio λ), one in an
  unflagged bucket of the same pool ln((1−p1)/(1−p0)); absent facilities keep theirs (sitting out must
  not launder it); a round with p0 ≥ p1 (flags nearly everywhere) says nothing.
  A flagged step is scaled by a weight in (0, 1]: ``outlier_weight`` for a bucket that multi-Krum or
  centered clipping left out (only a suspicion), times (1 + λᵢ⁺) / (1 + max over the bucket of λⱼ⁺), so
  a member that is already suspect takes the blame and an honest facility sharing a bucket with a known
  offender gains little ("explaining away"). Scaling a flagged step down never raises the false-positive
  rate, so the bound below holds whatever the weights.
* λ never falls below Wald's lower bound B = ln(β/(1−α₁)) (the test says "honest", but keeps watching),
  and λ ≥ A = ln((1−β)/α₁), Wald's upper bound → quarantined, permanently unless ``release`` is called.
* Refused updates (``with_refused``: NaN, infinite or the wrong size, a group of one flagged ``norm``)
  are a second test per facility, over every round it takes part in: a refusal adds ln(p1/false_flag)
  (5.2 nats), a round without one ln((1−p1)/(1−false_flag)) (−3.0). Two refusals in a row quarantine a
  facility with no history in a federation of up to 18 facilities; after a long clean record (the
  floor B) it takes three. This test gets a tenth of the false-positive rate (``REFUSAL_SHARE``), the
  flag test the rest.

Named by the norm flags (``implied_offenders``). A bucket flagged by the norm bound certainly holds a bad
member. With at most m offenders, the offenders are a set of at most m facilities that meets every such
bucket; a facility in every such set is certainly one of them, and is quarantined at once, whatever its
score (``named``; its suspicion shows as the bound). This needs no rate: it never names an honest
facility as long as no more than m misbehave, and when the norm flags show more (no m facilities explain
them) it names nobody. A flagged bucket that holds a named (or quarantined) facility is explained: its
other members' scores do not move that round (a flagged step scaled to nothing, which the bound below
allows). The buckets of the last ``IMPLIED_WINDOW`` rounds with norm flags are kept; ``release`` forgets
those of the released facility.

Why only flagged rounds. An earlier version of this test also counted rounds without a flag against every
facility (p0 was then the chance of merely sharing a bucket with an offender). An offender that the
adaptive norm bound lets through in many rounds was then never caught: with p0 ≈ 0.3 it had to be flagged
in more than about 64 % of all its rounds. Conditioning on the rounds with a flag keeps the same
false-positive bound (the honest facility's place is uniform in every round, flagged or not) and lets
an offender's quiet rounds count for nothing instead of against the evidence.

False positives. Under H0 the likelihood ratio is a non-negative supermartingale, so (Ville's inequality)
an honest facility's λ ever reaches A with probability at most e^−A, and, once it has touched B, climbs
from B to A with probability at most e^−(A−B). Over ``horizon`` rounds one test quarantines an honest
facility with probability at most e^−A + (horizon − 1) · e^−(A−B); the federation-wide bound is that,
times ``facilities``, summed over the two tests. Each test's α₁ (per facility) is chosen so that the
federation-wide bound equals ``alpha`` (default 1 % over 100 rounds). For 12 facilities in buckets of 3
(m = 2), A = 7.88 and an offender whose bucket is the only flagged one is quarantined after 6 such
rounds (``QuarantineTest.rounds_to_quarantine``); two offenders in two flagged buckets take about 10.
Rounds without a flag are not steps of the test, so counting them in the horizon is conservative.

The bound assumes buckets drawn uniformly within each pool, at most m offenders, flags of kind norm or
screen, and offenders that do not choose when to misbehave by who shares their bucket. One that
misbehaves only beside one chosen hospital makes the two look exactly alike in bucket sums (no test can
tell them apart), and both are quarantined together; ``release`` is for such a case, after an
investigation. The bound is conservative: explaining away makes the real rate far lower
(bench/reputation_sim.py → bench/results/reputation_sim.json). ``simulate`` runs the rule alone.

Validators. ``observe_votes``: a committee member that voted against the certified outcome loses a
share ``vote_against_penalty`` of its weight, a silent one (None or missing) a share ``silent_penalty``,
and one that voted with the outcome recovers ``vote_recovery`` of the gap to 1. Weights stay in
[``min_weight``, 1] so nobody is locked out forever; ``weight`` is meant for weighted committee draws.

The state is plain data (``to_dict``/``from_dict``, JSON-friendly) so the authority can persist it; a
state of version 1 (the former fixed threshold) still loads, each facility keeping its share of the way
to quarantine. Rounds must increase strictly (per kind) so that the same round is never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np

from hfl.schedule import cut_buckets, equal_buckets_now

FLAG_KINDS = ("norm", "screen", "outlier")
REFUSED_PREFIX = "refused:"
STATE_VERSION = 2
OLD_STATE_VERSIONS = (1,)
REFUSAL_SHARE = 0.1
"""Each facility is watched by two tests, flags and refusals; the refusal test gets this share of the
false-positive rate, the flag test the rest."""

BucketId = TypeVar("BucketId", bound=Hashable)


class ReputationError(ValueError):
    """Bad reputation input or state (or a quarantine test that cannot work); the message says why."""


def _positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ReputationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _fraction(name: str, value: float, *, allow_zero: bool = False, allow_one: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        lo_ok = value >= 0 if allow_zero else value > 0
        hi_ok = value <= 1 if allow_one else value < 1
        ok = lo_ok and hi_ok
    if not ok:
        lo = "[0" if allow_zero else "(0"
        hi = "1]" if allow_one else "1)"
        raise ReputationError(f"{name} must be a number in {lo}, {hi}, got {value!r}")
    return float(value)


def _whole(name: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ReputationError(f"{name} must be a whole number ≥ {least}, got {value!r}")
    return value


def _round(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReputationError(f"round must be a whole number ≥ 0, got {value!r}")
    return value


# --- the quarantine test ----------------------------------------------------------------------------


def wald_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's SPRT bounds (B, A) = (ln(β/(1−α)), ln((1−β)/α)) on the log-likelihood ratio, for a test with
    false-positive rate α and miss rate β."""
    a = _fraction("alpha", alpha)
    b = _fraction("beta", beta)
    if a + b >= 1:
        raise ReputationError(f"alpha + beta must be below 1, got {a} + {b}")
    return math.log(b / (1 - a)), math.log((1 - b) / a)


def base_rate(pool: int, flagged: Sequence[int], max_byzantine: int, false_flag: float) -> float:
    """p0: the chance that an honest facility lands in one of a round's flagged buckets, given which
    buckets were flagged. ``pool``: the facilities its bucket was drawn among (its fog's, this round);
    ``flagged``: the sizes of that pool's flagged buckets; at most ``max_byzantine`` (m) of the pool
    misbehave.

    An honest facility's place is drawn uniformly among the honest places, whoever misbehaves and however
    the flags fall, so it sits in a flagged bucket with probability (honest places in flagged buckets) /
    (honest facilities). With k flagged buckets each holding an offender (a flag with no offender behind
    it is a false flag, ``false_flag``), that is at most (Σ sizes − min(k, m)) / (pool − m), plus
    ``false_flag``; never more than 1."""
    sizes = [int(x) for x in flagged]
    if pool < 1 or max_byzantine < 0 or any(x < 1 for x in sizes) or sum(sizes) > pool:
        raise ReputationError(
            f"base_rate needs a pool of at least one facility, flagged buckets of at least one that fit in "
            f"it and max_byzantine ≥ 0, got {pool}, {sizes}, {max_byzantine}"
        )
    if not sizes:
        return 0.0
    m = min(max_byzantine, pool - 1)
    places = sum(sizes) - min(len(sizes), m)
    return min(1.0, places / (pool - m) + false_flag)


MIN_IMPLIED_GROUPS = 4
"""``implied_offenders`` names a facility only after it has been in at least this many norm-flagged
buckets: a margin against coincidences when more facilities misbehave than declared."""

IMPLIED_WINDOW = 50
"""Norm-flagged buckets of at most this many recent observed rounds are kept for ``implied_offenders``."""

FLAG_MEMORY = 50
"""Rounds with flags whose flagged buckets are kept for ``Reputation.last_unexplained_flag`` (the bucket
draw looks back 10 rounds, hfl.schedule.EQUAL_BUCKETS_ROUNDS; attempts of a refused round count apart)."""

TRACED_FLAGS = ("norm", "screen")
"""The flags ``last_unexplained_flag`` follows: the norm bound's and the outlier screen's (a refused
update is a "norm" flag on its own group, ``with_refused``). Not "outlier": multi-Krum and centered
clipping leave out f buckets in every round by design, honest ones included, so following those would
make the remainder rest in every round."""


Group = tuple[int, tuple[str, ...]]  # (observed round, members) of a flagged bucket


def _last_rounds(groups: list[Group], window: int) -> list[Group]:
    """``groups`` of the last ``window`` distinct rounds among them (in order)."""
    rounds = sorted({r for r, _ in groups})
    if len(rounds) <= window:
        return groups
    first = rounds[-window]
    return [(r, g) for r, g in groups if r >= first]


def last_unexplained(
    groups: Sequence[tuple[int, Collection[str]]], quarantined: Collection[str]
) -> int | None:
    """The last round among ``groups`` (flagged buckets) with a bucket none of whose members is in
    ``quarantined``: a flag whose cause is still in the federation (None if every flag is explained)."""
    q = set(quarantined)
    return max((r for r, g in groups if q.isdisjoint(g)), default=None)


def _greedy_cover(groups: Sequence[frozenset[str]], first: Collection[str] = ()) -> int:
    """Size of a set of facilities that meets every group: the facilities ``first`` that are in some
    group, then picked greedily (an upper bound on the smallest such set; deterministic: ties go to the
    smallest id)."""
    start = {x for x in first if any(x in g for g in groups)}
    left = [g for g in groups if g and not start.intersection(g)]
    chosen = len(start)
    while left:
        counts: dict[str, int] = {}
        for g in left:
            for x in g:
                counts[x] = counts.get(x, 0) + 1
        best = min(counts, key=lambda x: (-counts[x], x))
        left = [g for g in left if best not in g]
        chosen += 1
    return chosen


def _disjoint_count(groups: Sequence[frozenset[str]]) -> int:
    """How many pairwise disjoint groups a greedy pass finds, in the order given: a lower bound on the size
    of any set that meets every group (each disjoint group needs a member of its own), whatever the
    order."""
    used: set[str] = set()
    count = 0
    for g in groups:
        if not used.intersection(g):
            used.update(g)
            count += 1
    return count


def implied_offenders(
    groups: Sequence[Sequence[str]],
    max_byzantine: int,
    *,
    min_groups: int = MIN_IMPLIED_GROUPS,
    likely: Collection[str] = (),
    skip: Collection[str] = (),
) -> list[str]:
    """Facilities that must misbehave if at most ``max_byzantine`` (m) do: the members of every set of at
    most m facilities that meets each of ``groups``, the members of norm-flagged buckets (each such bucket
    certainly holds a bad member: an honest one clips its update to the bound). Sorted.

    Facility x is named when, with x taken out, the groups still need more than m other facilities: then
    no explanation of the flags by m facilities leaves x out. The count is a lower bound (pairwise disjoint
    groups, each needing a facility of its own), so x is named only when that is certain. Only a facility
    in at least ``min_groups`` groups can be named. If the flags cannot be explained by m facilities at all
    (more misbehave than declared, as far as a greedy search can tell; it tries the ``likely`` offenders,
    those already quarantined, first) nobody is named: the premise may be broken and the sequential test
    alone decides. Facilities in ``skip`` (already quarantined) are not examined. As long as at most m
    facilities misbehave, an honest facility is never named, whatever
    the buckets; two offenders that were always flagged together in one bucket are not named either (either
    one alone explains every flag)."""
    m = _whole("max_byzantine", max_byzantine, 0)
    sets = [frozenset(g) for g in groups if len(g) > 0]
    tries = (likely, ()) if likely else ((),)  # the second search only when the first finds no m
    if m == 0 or not sets or all(_greedy_cover(sets, first) > m for first in tries):
        return []
    seen: dict[str, int] = {}
    for g in sets:
        for x in g:
            seen[x] = seen.get(x, 0) + 1
    ordered = sorted(sets, key=lambda g: (len(g), sorted(g)))  # small groups first: a larger packing
    named = []
    for x in sorted(seen):
        if seen[x] < min_groups or x in skip:
            continue
        shrunk = [g - {x} for g in ordered if x in g]  # the groups x was in, now one smaller: first
        if any(not g for g in shrunk) or _disjoint_count(shrunk + [g for g in ordered if x not in g]) > m:
            named.append(x)
    return named


DEFAULT_BYZANTINE_SHARE = 6
"""With nothing declared, up to one facility in this many may misbehave."""


def default_max_byzantine(facilities: int) -> int:
    """How many misbehaving facilities a federation is assumed to have when none is declared
    (HFL_MAX_BYZANTINE unset): one in six, at least 1 (1 below 12 facilities, 2 of 12, 4 of 24, 8 of 48).

    It depends on the federation's size only, not on the bucket size chosen, so larger buckets do not
    quietly assume fewer offenders; it is the number the default buckets of 3 can single out (one per two
    buckets), and start-up refuses larger buckets that cannot (``hfl.robust.sizing.size_federation``)."""
    return max(1, facilities // DEFAULT_BYZANTINE_SHARE)


@dataclass(frozen=True)
class QuarantineTest:
    """A sequential probability ratio test per facility, sized for the federation (module docstring).

    ``facilities``: how many take part (the union bound counts them); ``bucket_size``; ``max_byzantine``:
    at most this many misbehave; ``alpha``: the chance, over ``horizon`` rounds, that any honest facility
    is quarantined; ``beta``: Wald's miss rate (sets the floor B); ``p1``: how often an offender's bucket is
    flagged; ``false_flag``: how often the outlier screen flags a bucket of honest facilities.
    """

    facilities: int = 12
    bucket_size: int = 3
    max_byzantine: int = 2
    alpha: float = 0.01
    horizon: int = 100
    beta: float = 0.01
    p1: float = 0.95
    false_flag: float = 0.005

    def __post_init__(self) -> None:
        _whole("facilities", self.facilities, 1)
        _whole("bucket_size", self.bucket_size, 1)
        _whole("max_byzantine", self.max_byzantine, 0)
        _whole("horizon (rounds)", self.horizon, 1)
        for name in ("alpha", "beta", "p1", "false_flag"):
            value = getattr(self, name)
            _fraction(name, value)
            object.__setattr__(self, name, float(value))
        if self.bucket_size > self.facilities:
            raise ReputationError(
                f"buckets of {self.bucket_size} cannot be drawn from {self.facilities} facilities"
            )
        if self.max_byzantine >= self.facilities:
            raise ReputationError(
                f"{self.max_byzantine} misbehaving facilities out of {self.facilities} leave no honest one "
                "to tell them from"
            )
        self.bounds  # noqa: B018  (refuses an alpha the union bound cannot reach)

    @property
    def p0(self) -> float:
        """The honest base rate in a round where one bucket of ``bucket_size`` is flagged, every facility
        present in one pool."""
        return base_rate(self.facilities, [self.bucket_size], self.max_byzantine, self.false_flag)

    @property
    def detects(self) -> bool:
        """Whether flagged buckets can tell an offender from an honest facility at all (p0 < p1); when not,
        only a group of one (a refused update) is evidence."""
        return self.p0 < self.p1

    def cannot_detect(self) -> str:
        """Why group testing cannot work for this federation, in one sentence ("" when it can)."""
        if self.detects:
            return ""
        who = "facility" if self.max_byzantine == 1 else "facilities"
        return (
            f"with {self.max_byzantine} misbehaving {who} among {self.facilities} in buckets of "
            f"{self.bucket_size}, an honest facility would be in a flagged bucket in {100 * self.p0:.0f} % "
            f"of the rounds with a flag, at least as often as a misbehaving one ({100 * self.p1:.0f} %), so "
            "group testing cannot tell them apart: declare fewer misbehaving facilities, use smaller buckets "
            "or enrol more facilities"
        )

    @property
    def per_facility_alpha(self) -> float:
        """α₁: Wald's α for one facility's flag test, chosen so that its share of ``false_positive_bound()``
        is (1 − ``REFUSAL_SHARE``) · ``alpha``."""
        return _per_facility_alpha(self.facilities, (1 - REFUSAL_SHARE) * self.alpha, self.beta, self.horizon)

    @property
    def bounds(self) -> tuple[float, float]:
        """(B, A): the floor of the evidence and the quarantine bound, in nats."""
        return wald_bounds(self.per_facility_alpha, self.beta)

    @property
    def refusal_bounds(self) -> tuple[float, float]:
        """(B, A) of the refusal test, whose share of the rate is ``REFUSAL_SHARE`` · ``alpha``."""
        a1 = _per_facility_alpha(self.facilities, REFUSAL_SHARE * self.alpha, self.beta, self.horizon)
        return wald_bounds(a1, self.beta)

    def false_positive_bound(self, rounds: int | None = None) -> float:
        """Upper bound on the chance that any honest facility is quarantined within ``rounds`` (default:
        the horizon): facilities · (e^−A + (rounds − 1) · e^−(A−B)), summed over the two tests."""
        t = self.horizon if rounds is None else _whole("rounds", rounds, 1)
        total = 0.0
        for lower, upper in (self.bounds, self.refusal_bounds):
            total += self.facilities * (math.exp(-upper) + (t - 1) * math.exp(-(upper - lower)))
        return min(1.0, total)

    def steps(self, pool: int, flagged: Sequence[int]) -> tuple[float, float]:
        """(flagged, clean): what one round adds to the evidence of a facility drawn among ``pool``
        facilities whose flagged buckets have the sizes ``flagged`` (in a flagged bucket, or not); (0, 0)
        when such a round says nothing: no flag in the pool, or so many that p0 ≥ p1."""
        p0 = base_rate(pool, flagged, self.max_byzantine, self.false_flag)
        if not flagged or p0 >= self.p1:
            return 0.0, 0.0
        return math.log(self.p1 / p0), math.log((1 - self.p1) / (1 - p0))

    def rounds_to_quarantine(self) -> int | None:
        """Flagged rounds after which an offender whose bucket is the round's only flagged one (and which
        is at least as suspect as its bucket-mates) is quarantined, with every facility present in one
        pool; None when flags cannot tell. Rounds without a flag do not count."""
        up, _ = self.steps(self.facilities, [self.bucket_size])
        return math.ceil(self.bounds[1] / up - 1e-12) if up > 0 else None

    def drift(self, flag_rate: float) -> float:
        """Expected evidence gained per flagged round (one bucket of ``bucket_size`` flagged) by a facility
        that is in the flagged bucket in a share ``flag_rate`` of them (no explaining away); positive for
        offenders, negative for honest facilities."""
        up, down = self.steps(self.facilities, [self.bucket_size])
        return flag_rate * up + (1 - flag_rate) * down

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def federation_test(
    facilities: int,
    bucket_size: int,
    max_byzantine: int | None = None,
    *,
    alpha: float = 0.01,
    horizon: int = 100,
) -> QuarantineTest:
    """The quarantine test for a federation of ``facilities`` in buckets of ``bucket_size`` that declares
    at most ``max_byzantine`` misbehaving facilities (None: ``default_max_byzantine``, at most all but one).

    Raises ReputationError with one plain sentence for impossible numbers, and when a declared number
    makes flagged buckets useless as evidence (``QuarantineTest.cannot_detect``). With nothing declared
    such a federation (a single bucket, say) still runs: only refused updates then quarantine. So does
    one that declares 0 (experiments and benchmarks where no facility misbehaves): there is nobody for
    group testing to single out.
    """
    m = default_max_byzantine(facilities) if max_byzantine is None else max_byzantine
    if max_byzantine is None:
        m = min(m, facilities - 1)
    test = QuarantineTest(
        facilities=facilities,
        bucket_size=min(bucket_size, facilities),
        max_byzantine=m,
        alpha=alpha,
        horizon=horizon,
    )
    if max_byzantine and not test.detects:
        raise ReputationError(test.cannot_detect())
    return test


def quarantine_sentence(test: QuarantineTest) -> str:
    """What the test promises, in one sentence for an operator's log."""
    who = (
        f"{test.facilities} facilities in buckets of at least {test.bucket_size}, "
        f"at most {test.max_byzantine} misbehaving"
    )
    rate = (
        f"the chance that any honest facility is quarantined within {test.horizon} rounds is at most "
        f"{100 * test.false_positive_bound():.2g} %"
    )
    rounds = test.rounds_to_quarantine()
    if rounds is None:
        return f"{who}: {test.cannot_detect()}; only refused updates can quarantine ({rate})"
    return (
        f"{who}: a facility whose bucket is the only one flagged is quarantined after {rounds} such rounds; "
        + rate
    )


@lru_cache(maxsize=256)
def _per_facility_alpha(facilities: int, alpha: float, beta: float, horizon: int) -> float:
    def bound(a1: float) -> float:
        upper = math.log((1 - beta) / a1)
        lower = math.log(beta / (1 - a1))
        return facilities * (math.exp(-upper) + (horizon - 1) * math.exp(-(upper - lower)))

    lo, hi = 1e-300, min(alpha, 1 - beta) * (1 - 1e-12)
    if bound(hi) <= alpha:
        return hi
    for _ in range(200):  # bisection on a log scale; bound() increases with a1
        mid = math.sqrt(lo * hi)
        if bound(mid) > alpha:
            hi = mid
        else:
            lo = mid
    if lo <= 1e-300:
        raise ReputationError(f"no test reaches a false-positive rate of {alpha} over {horizon} rounds")
    return lo


class Reputation:
    """Quarantine for facilities (a sequential test per facility); vote-based weights for validators."""

    def __init__(
        self,
        *,
        test: QuarantineTest | None = None,
        outlier_weight: float = 0.25,
        vote_against_penalty: float = 0.5,
        silent_penalty: float = 0.2,
        vote_recovery: float = 0.1,
        min_weight: float = 0.01,
        name_offenders: bool = True,
    ) -> None:
        if test is not None and not isinstance(test, QuarantineTest):
            raise ReputationError(f"test must be a QuarantineTest, got {test!r}")
        self.test = test if test is not None else QuarantineTest()
        self.lower, self.upper = self.test.bounds
        self.refusal_lower, self.refusal_upper = self.test.refusal_bounds
        self.outlier_weight = _fraction("outlier_weight", outlier_weight, allow_one=True)
        self.vote_against_penalty = _fraction("vote_against_penalty", vote_against_penalty, allow_one=True)
        self.silent_penalty = _fraction("silent_penalty", silent_penalty, allow_zero=True, allow_one=True)
        self.vote_recovery = _fraction("vote_recovery", vote_recovery, allow_zero=True, allow_one=True)
        self.min_weight = _fraction("min_weight", min_weight)
        if not isinstance(name_offenders, bool):
            raise ReputationError(f"name_offenders must be true or false, got {name_offenders!r}")
        self.name_offenders = name_offenders  # False: the sequential test alone (for studying it)
        self._evidence: dict[str, float] = {}
        self._refusals: dict[str, float] = {}
        self._quarantined: dict[str, int] = {}
        self._named: set[str] = set()  # quarantined by implied_offenders
        self._norm_groups: list[Group] = []  # (round, members) of norm flags
        self._weights: dict[str, float] = {}
        self._last_round: int | None = None
        # (round, members) of flagged buckets and refused updates, the last FLAG_MEMORY rounds with any
        self._flag_groups: list[Group] = []
        self._last_vote_round: int | None = None

    # --- facilities ------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        """Evidence (in nats) at which a facility is quarantined: Wald's upper bound A."""
        return self.upper

    @property
    def quarantined(self) -> frozenset[str]:
        """Facilities currently quarantined."""
        return frozenset(self._quarantined)

    def quarantined_since(self, facility: str) -> int | None:
        """Round in which ``facility`` was quarantined, or None."""
        return self._quarantined.get(facility)

    def evidence(self, facility: str) -> float:
        """The test's log-likelihood ratio "offender" against "honest" (0 for a facility never seen; may
        be negative, down to the floor B)."""
        return self._evidence.get(facility, 0.0)

    def refusal_evidence(self, facility: str) -> float:
        """The refusal test's log-likelihood ratio (0 for a facility never seen; down to the floor B)."""
        return self._refusals.get(facility, 0.0)

    def suspicion(self, facility: str) -> float:
        """Evidence against the facility, 0 when it looks honest: the larger of the two tests' evidence
        (flags; refusals, scaled to the flag test's bound), at least 0, out of ``threshold``; the
        threshold itself for a facility the norm flags name (``named``)."""
        if facility in self._named:
            return self.upper
        refusals = self._refusals.get(facility, 0.0) * self.upper / self.refusal_upper  # on the same scale
        return max(0.0, self._evidence.get(facility, 0.0), refusals)

    @property
    def last_unexplained_flag(self) -> int | None:
        """The last observed round (as numbered to ``observe``) with a bucket flagged by the norm bound or
        the outlier screen (or a refused update; TRACED_FLAGS) none of whose members is quarantined, among
        the last FLAG_MEMORY rounds with flags (``last_unexplained``). The authority's bucket draw
        follows it (hfl.schedule.equal_buckets_now)."""
        return last_unexplained(self._flag_groups, self._quarantined.keys())

    @property
    def named(self) -> frozenset[str]:
        """Facilities quarantined because the norm flags cannot be explained without them
        (``implied_offenders``), rather than by the sequential test."""
        return frozenset(self._named)

    def observe(
        self,
        round: int,
        buckets: Mapping[BucketId, Sequence[str]],
        flagged: Mapping[BucketId, str],
        pools: Mapping[BucketId, str] | None = None,
    ) -> list[str]:
        """Record one round's buckets and flags; return the facilities newly quarantined (sorted).

        ``pools``: which pool (fog) each bucket was drawn in, when buckets are drawn per fog; None: one
        pool. A group ``"refused:<id>"`` (``with_refused``) is the refused facility alone and needs no pool.
        """
        rnd = _round(round)
        if self._last_round is not None and rnd <= self._last_round:
            raise ReputationError(f"round {rnd} already observed (last was {self._last_round})")
        seen: set[str] = set()
        for bid, members in buckets.items():
            if isinstance(members, str) or len(members) == 0:
                raise ReputationError(f"bucket {bid!r} must list at least one facility id")
            for m in members:
                if not isinstance(m, str) or not m:
                    raise ReputationError(f"bucket {bid!r} has a bad facility id {m!r}")
                if m in seen:
                    raise ReputationError(f"facility {m!r} appears in more than one bucket (or twice)")
                seen.add(m)
        for bid, kind in flagged.items():
            if bid not in buckets:
                raise ReputationError(f"flagged bucket {bid!r} is not among this round's buckets")
            if kind not in FLAG_KINDS:
                raise ReputationError(
                    f"flag for bucket {bid!r} must be one of {', '.join(FLAG_KINDS)}, got {kind!r}"
                )
        by_pool: dict[str, list[BucketId]] = {}
        alone: list[BucketId] = []
        for bid, members in buckets.items():
            if _is_refused(bid):
                if len(members) != 1:
                    raise ReputationError(f"group {bid!r} must hold exactly the refused facility")
                alone.append(bid)
            elif pools is None:
                by_pool.setdefault("", []).append(bid)
            elif bid not in pools:
                raise ReputationError(f"bucket {bid!r} has no pool (fog)")
            else:
                by_pool.setdefault(str(pools[bid]), []).append(bid)

        if self._remember_norm_flags(rnd, buckets, flagged) and self.name_offenders:
            named = implied_offenders(
                [g for _, g in self._norm_groups],
                self.test.max_byzantine,
                likely=self._quarantined,
                skip=self._quarantined,
            )
            self._named.update(named)  # never a quarantined one: skipped
        certain = self._named.union(self._quarantined)
        new = dict(self._evidence)
        refusals = dict(self._refusals)
        refused = {buckets[bid][0] for bid in alone if bid in flagged}
        refused_up = math.log(self.test.p1 / self.test.false_flag)
        refused_down = math.log((1 - self.test.p1) / (1 - self.test.false_flag))
        for m in seen:  # the refusal test: every facility in the round, refused or not
            r = refusals.get(m, 0.0) + (refused_up if m in refused else refused_down)
            refusals[m] = max(self.refusal_lower, r)
        for bids in by_pool.values():
            pool = sum(len(buckets[b]) for b in bids)
            up, down = self.test.steps(pool, [len(buckets[b]) for b in bids if b in flagged])
            if up == 0.0 and down == 0.0:
                continue  # no flag among this pool's buckets (or flags everywhere): no evidence either way
            for bid in bids:
                members = buckets[bid]
                old = [self._evidence.get(m, 0.0) for m in members]
                flag = flagged.get(bid)
                if flag is None:
                    for m, e in zip(members, old, strict=True):
                        new[m] = max(self.lower, e + down)
                    continue
                weight = self.outlier_weight if flag == "outlier" else 1.0
                top = 1.0 + max(max(0.0, e) for e in old)
                explained = certain.intersection(members)  # a named offender's flag: the others take none
                for m, e in zip(members, old, strict=True):
                    share = (1.0 + max(0.0, e)) / top  # explaining away: in (0, 1], 1 for the most suspect
                    if explained and m not in explained:
                        share = 0.0
                    new[m] = max(self.lower, e + weight * share * up)
        self._evidence = new
        self._refusals = refusals
        self._last_round = rnd
        traced = sorted((b for b, kind in flagged.items() if kind in TRACED_FLAGS), key=str)
        if traced:
            self._flag_groups.extend((rnd, tuple(sorted(buckets[b]))) for b in traced)
            self._flag_groups = _last_rounds(self._flag_groups, FLAG_MEMORY)
        newly = sorted(
            {m for m in seen if self.suspicion(m) >= self.upper}.union(self._named).difference(
                self._quarantined
            )
        )
        for m in newly:
            self._quarantined[m] = rnd
        return newly

    def _remember_norm_flags(
        self, rnd: int, buckets: Mapping[BucketId, Sequence[str]], flagged: Mapping[BucketId, str]
    ) -> bool:
        """Keep the members of this round's norm-flagged buckets (not refused updates: the refusal test
        has them), for the last ``IMPLIED_WINDOW`` rounds that had any. Returns whether there were any."""
        groups = [
            (rnd, tuple(sorted(buckets[b])))
            for b, kind in flagged.items()
            if kind == "norm" and not _is_refused(b)
        ]
        if not groups:
            return False
        self._norm_groups = _last_rounds([*self._norm_groups, *sorted(groups)], IMPLIED_WINDOW)
        return True

    def quarantine(self, facility: str) -> None:
        """Quarantine by hand (an operator's decision after an investigation), from the last round seen."""
        if not isinstance(facility, str) or not facility:
            raise ReputationError("a facility id is required")
        if facility in self._quarantined:
            raise ReputationError(f"facility {facility!r} is already quarantined")
        self._quarantined[facility] = self._last_round or 0

    def release(self, facility: str) -> None:
        """Lift a quarantine (after an investigation) and start the facility's test afresh."""
        if facility not in self._quarantined:
            raise ReputationError(f"facility {facility!r} is not quarantined")
        del self._quarantined[facility]
        self._evidence[facility] = 0.0
        self._refusals[facility] = 0.0
        # Judged honest: the norm flags it shared are another member's doing, and must not name it again.
        self._named.discard(facility)
        self._norm_groups = [(r, g) for r, g in self._norm_groups if facility not in g]

    # --- validators ------------------------------------------------------------------------------

    def observe_votes(
        self,
        round: int,
        committee: Sequence[str],
        votes: Mapping[str, bool | None],
        certified: bool,
    ) -> None:
        """Update validator weights from one round's votes against the certified outcome."""
        rnd = _round(round)
        if self._last_vote_round is not None and rnd <= self._last_vote_round:
            raise ReputationError(
                f"votes for round {rnd} already observed (last was {self._last_vote_round})"
            )
        if isinstance(committee, str) or len(set(committee)) != len(committee) or not committee:
            raise ReputationError("committee must be a non-empty list of distinct validator ids")
        strangers = sorted(set(votes) - set(committee))
        if strangers:
            raise ReputationError(f"votes from validators outside the committee: {strangers}")
        for v, vote in votes.items():
            if vote is not None and not isinstance(vote, bool):
                raise ReputationError(f"vote of {v!r} must be True, False or None, got {vote!r}")
        if not isinstance(certified, bool):
            raise ReputationError(f"certified must be True or False, got {certified!r}")
        for v in committee:
            w = self._weights.get(v, 1.0)
            vote = votes.get(v)
            if vote is None:
                w *= 1.0 - self.silent_penalty
            elif vote != certified:
                w *= 1.0 - self.vote_against_penalty
            else:
                w += (1.0 - w) * self.vote_recovery
            self._weights[v] = min(1.0, max(self.min_weight, w))
        self._last_vote_round = rnd

    def weight(self, node: str) -> float:
        """Validator weight in [min_weight, 1] for committee selection (1 for a validator never seen)."""
        return self._weights.get(node, 1.0)

    # --- dashboards ------------------------------------------------------------------------------

    def score(self, node: str) -> float:
        """Trust in [0, 1] (1 = fully trusted): 0 if quarantined, else 1 − suspicion/threshold, and
        at most the validator weight if the node also votes."""
        if node in self._quarantined:
            return 0.0
        s = max(0.0, 1.0 - self.suspicion(node) / self.threshold)
        return min(s, self._weights.get(node, 1.0))

    # --- persistence -----------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "test": self.test.to_dict(),
            "outlier_weight": self.outlier_weight,
            "vote_against_penalty": self.vote_against_penalty,
            "silent_penalty": self.silent_penalty,
            "vote_recovery": self.vote_recovery,
            "min_weight": self.min_weight,
            "name_offenders": self.name_offenders,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly state (keys sorted for stable output). ``suspicion`` and ``threshold`` are
        what dashboards show; ``evidence`` is the test's state."""
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "threshold": self.threshold,
            "evidence": dict(sorted(self._evidence.items())),
            "refusals": dict(sorted(self._refusals.items())),
            "suspicion": {f: self.suspicion(f) for f in sorted(set(self._evidence) | set(self._refusals))},
            "quarantined": dict(sorted(self._quarantined.items())),
            "named": sorted(self._named),
            "norm_groups": [[r, list(g)] for r, g in self._norm_groups],
            "weights": dict(sorted(self._weights.items())),
            "last_round": self._last_round,
            "flag_groups": [[r, list(g)] for r, g in self._flag_groups],
            "last_vote_round": self._last_vote_round,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, test: QuarantineTest | None = None) -> Reputation:
        """Rebuild from ``to_dict`` output; raises ReputationError on a damaged state.

        ``test``, when given, replaces the stored test (the federation's settings changed); the evidence is
        kept. A version-1 state (fixed threshold, from before the sequential test) loads too: each
        facility keeps its share of the way to quarantine (suspicion/threshold of A), quarantines, validator
        weights and rounds are kept, and its validator settings carry over.
        """
        try:
            version = data["version"]
            config = dict(data["config"])
            if version in OLD_STATE_VERSIONS:
                old_threshold = _positive("threshold", config["threshold"])
                outlier = _positive("outlier_penalty", config["outlier_penalty"]) / _positive(
                    "norm_penalty", config["norm_penalty"]
                )
                rep = cls(
                    test=test,
                    outlier_weight=min(1.0, outlier),
                    **{
                        k: config[k]
                        for k in ("vote_against_penalty", "silent_penalty", "vote_recovery", "min_weight")
                    },
                )
                old = {str(k): float(v) for k, v in dict(data["suspicion"]).items()}
                if any(not math.isfinite(v) or v < 0 for v in old.values()):
                    raise ReputationError("damaged reputation state: suspicion must be finite and ≥ 0")
                evidence = {f: min(v / old_threshold, 1.0) * rep.upper for f, v in old.items()}
                refusals: dict[str, float] = {}
            elif version == STATE_VERSION:
                stored = QuarantineTest(**dict(config.pop("test")))
                rep = cls(test=test if test is not None else stored, **config)
                evidence = {str(k): float(v) for k, v in dict(data["evidence"]).items()}
                refusals = {str(k): float(v) for k, v in dict(data.get("refusals", {})).items()}
            else:
                raise ReputationError(f"unsupported reputation state version {version!r}")
            quar = {str(k): int(v) for k, v in dict(data["quarantined"]).items()}
            named = {str(x) for x in data.get("named", [])}  # absent in a state from before it was kept
            groups = [(_round(r), tuple(str(x) for x in g)) for r, g in data.get("norm_groups", [])]
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            last = data["last_round"]
            flag_groups = [(_round(r), tuple(str(x) for x in g)) for r, g in data.get("flag_groups", [])]
            last_vote = data["last_vote_round"]
        except ReputationError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ReputationError(f"damaged reputation state: {exc!r}") from exc
        if any(not math.isfinite(v) for v in (*evidence.values(), *refusals.values())):
            raise ReputationError("damaged reputation state: evidence must be finite")
        if any(not rep.min_weight <= v <= 1 for v in weights.values()):
            raise ReputationError("damaged reputation state: validator weights out of range")
        rep._evidence = {f: max(rep.lower, v) for f, v in evidence.items()}
        rep._refusals = {f: max(rep.refusal_lower, v) for f, v in refusals.items()}
        if not named <= set(quar):
            raise ReputationError("damaged reputation state: a named facility is not quarantined")
        if any(not g for _, g in groups):
            raise ReputationError("damaged reputation state: an empty norm-flagged bucket")
        rep._quarantined = quar
        rep._named = named
        rep._norm_groups = groups
        rep._weights = weights
        rep._last_round = None if last is None else _round(last)
        if any(not g for _, g in flag_groups):
            raise ReputationError("damaged reputation state: an empty flagged bucket")
        if flag_groups and (rep._last_round is None or max(r for r, _ in flag_groups) > rep._last_round):
            raise ReputationError("damaged reputation state: a flagged round after the last round observed")
        rep._flag_groups = flag_groups
        rep._last_vote_round = None if last_vote is None else _round(last_vote)
        return rep


def _is_refused(bucket_id: object) -> bool:
    return isinstance(bucket_id, str) and bucket_id.startswith(REFUSED_PREFIX)


def with_refused(
    buckets: Mapping[str, Sequence[str]], flagged: Mapping[str, str], refused: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Give facilities whose update the fog refused (NaN, infinite, wrong size) direct blame.

    Each refused facility leaves its bucket (its bucket's sum does not contain it) and becomes its own
    group ``"refused:<id>"`` flagged ``"norm"``; alone, it takes certain blame
    (ln(p1/false_flag)), and its former bucket-mates take none. A bucket left empty is dropped
    together with its flag. Returns new (buckets, flagged) for ``Reputation.observe``.
    """
    if isinstance(refused, str):
        raise ReputationError("refused must be a list of facility ids, not one string")
    members_of = {m: bid for bid, ms in buckets.items() for m in ms}
    gone = set()
    for r in refused:
        if r not in members_of:
            raise ReputationError(f"refused facility {r!r} was not in any bucket this round")
        gone.add(r)
    new_buckets: dict[str, list[str]] = {}
    new_flags: dict[str, str] = {}
    for bid, ms in buckets.items():
        left = [m for m in ms if m not in gone]
        if left:
            new_buckets[bid] = left
            if bid in flagged:
                new_flags[bid] = flagged[bid]
    for r in sorted(gone):
        key = f"{REFUSED_PREFIX}{r}"
        if key in new_buckets:
            raise ReputationError(f"bucket id {key!r} is reserved for refused updates")
        new_buckets[key] = [r]
        new_flags[key] = "norm"
    return new_buckets, new_flags


def simulate(
    *,
    n_facilities: int = 12,
    bucket_size: int = 3,
    n_byzantine: int = 2,
    rounds: int = 10,
    seed: int = 0,
    attack_prob: float = 1.0,
    flag: str = "norm",
    honest_flag_prob: float = 0.0,
    exclude_quarantined: bool = True,
    test: QuarantineTest | None = None,
    equal: bool = True,
    **config: Any,
) -> dict[str, int]:
    """Simulate group testing; return {facility: round quarantined}. Offenders are ``f00``, ``f01``, ...

    Each round the active facilities are shuffled (seeded, non-secret) into ⌊active/bucket_size⌋ buckets
    as ``hfl.schedule.bucket_sizes`` cuts them (``equal``: as the authority does with a robust rule, the
    remainder rests in the rounds after an unexplained flag, ``equal_buckets_now``; false: it is spread
    over the buckets); a bucket holding an offender that attacks this round (probability
    ``attack_prob``) gets ``flag``, and any other bucket gets ``"screen"`` with probability
    ``honest_flag_prob`` (the outlier screen's false flags). ``test`` defaults to the one the authority
    builds for this size (``default_max_byzantine`` misbehaving facilities); ``config`` goes to
    ``Reputation``.
    """
    if n_facilities < 1 or bucket_size < 1 or rounds < 0 or not 0 <= n_byzantine <= n_facilities:
        raise ReputationError(
            "simulate needs n_facilities ≥ 1, bucket_size ≥ 1, 0 ≤ n_byzantine ≤ n_facilities"
        )
    if test is None:
        test = QuarantineTest(
            facilities=n_facilities,
            bucket_size=bucket_size,
            max_byzantine=default_max_byzantine(n_facilities),
        )
    rep = Reputation(test=test, **config)
    rng = np.random.default_rng(seed)
    width = max(2, len(str(n_facilities - 1)))
    ids = [f"f{i:0{width}d}" for i in range(n_facilities)]
    bad = set(ids[:n_byzantine])
    caught: dict[str, int] = {}
    for rnd in range(rounds):
        active = [x for x in ids if not (exclude_quarantined and x in rep.quarantined)]
        if not active:
            break
        order = [active[i] for i in rng.permutation(len(active))]
        attacking = {x for x in sorted(bad) if rng.random() < attack_prob}
        now = equal_buckets_now(equal, rnd, rep.last_unexplained_flag)
        buckets = dict(enumerate(cut_buckets([str(x) for x in order], bucket_size, equal=now)))
        false_flags = rng.random(len(buckets)) < honest_flag_prob
        flagged = {
            b: flag if attacking.intersection(members) else "screen"
            for b, members in buckets.items()
            if attacking.intersection(members) or false_flags[b]
        }
        for q in rep.observe(rnd, buckets, flagged):
            caught[q] = rnd
    return caught
