"""Who does what in a round: bucket assignment and committee selection.

Both are pure functions of public inputs (the node lists and a seed derived from the ledger head), so
anyone holding the ledger can recompute them and check the authority's choices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hfl.hashing import sha256
from hfl.secagg.protocol import MIN_BUCKET_SIZE

T = TypeVar("T")

MIN_SECURE_BUCKET = MIN_BUCKET_SIZE  # the smallest bucket secure aggregation allows (defined in hfl.secagg)


def round_seed(ledger_head: bytes, round_: int, attempt: int = 0) -> bytes:
    """Public randomness for a round: hash of the ledger head, the round and the attempt."""
    return sha256(b"hfl/round-seed/v1", ledger_head, round_.to_bytes(8, "big"), attempt.to_bytes(4, "big"))


def draw_base(ledger_head: bytes, experiment_seed: int | None) -> bytes:
    """What a round's public randomness is drawn from: the ledger head (production: nobody knows it before
    the previous block is committed), or, in a reproducible experiment, a fixed value derived from the
    experiment's seed (the same draws on every run)."""
    if experiment_seed is None:
        return ledger_head
    return sha256(b"hfl/experiment-seed/v1", str(experiment_seed).encode())


def _rank(seed: bytes, label: str, item: str) -> bytes:
    return hashlib.sha256(seed + label.encode() + b"\x00" + item.encode()).digest()


def shuffled(items: Sequence[str], seed: bytes, label: str = "shuffle") -> list[str]:
    """A deterministic permutation of ``items`` keyed by ``seed`` (sort by keyed hash)."""
    return sorted(items, key=lambda x: _rank(seed, label, x))


@dataclass(frozen=True)
class BucketPlan:
    bucket_id: str
    fog_id: str
    members: tuple[str, ...]
    group: str = ""  # evaluation buckets: the members' specialty, or MIXED


EQUAL_BUCKETS_FROM = 3
"""With equal buckets asked for, the fewest buckets a pool must make before its remainder rests: the
fewest with which a robust rule leaves out a bad bucket (trimmed mean: B ≥ 2f+1). Below that no bucket
is left out anyway, and resting would cost a small federation a large share of its data."""


EQUAL_BUCKETS_ROUNDS = 10
"""Buckets are of one size (``bucket_sizes(equal=True)``) only in the rounds up to this many after the
last round with an unexplained flag: a flagged bucket none of whose members has been quarantined since.
Resting costs a federation some data each round (0.8 points of final accuracy on the harder benchmark
task with 11 or 20 honest facilities when it rested in every round, bench/results/resting_cost.json), so
it is paid only while there is something to find."""


def equal_buckets_now(allowed: bool, round_: int, last_flagged_round: int | None) -> bool:
    """Whether round ``round_`` draws buckets of one size: ``allowed`` (a robust rule in a federation
    that expects misbehaving facilities) and, within the last EQUAL_BUCKETS_ROUNDS rounds, a bucket
    flagged by the norm bound or the outlier screen (or an update refused) none of whose members is
    quarantined (``last_flagged_round``: the last such round, hfl.robust.reputation's
    ``last_unexplained_flag``). A committed round's flags are in its block, the rest in the authority's
    round records, and quarantines in the registry, so the choice can be checked afterwards."""
    if not allowed or last_flagged_round is None:
        return False
    return 0 <= round_ - last_flagged_round <= EQUAL_BUCKETS_ROUNDS


def bucket_sizes(n: int, bucket_size: int, *, equal: bool = False) -> list[int]:
    """Split n facilities into buckets of about ``bucket_size``: never smaller than bucket_size
    (except when there are fewer facilities than that in all), sizes differing by at most one.

    ``equal``: every bucket has exactly ``bucket_size`` members once the n facilities make at least
    EQUAL_BUCKETS_FROM buckets, and the remainder (fewer than ``bucket_size``) rests this round; the
    sizes then add up to less than n. A misbehaving facility in a bucket of 4 has its update diluted by
    three honest ones where a bucket of 3 has two, enough to hide a ×10 update from the outlier screen
    (bench/results/NOTES-quarantine.md); the round draw decides who rests, so it changes each round.
    ``equal_buckets_now`` says when the authority asks for it."""
    if bucket_size < 1:
        raise ValueError("bucket size must be at least 1")
    if n <= 0:
        return []
    nb = max(1, n // bucket_size)
    if equal and nb >= EQUAL_BUCKETS_FROM:
        return [bucket_size] * nb
    base, extra = divmod(n, nb)
    return [base + 1 if i < extra else base for i in range(nb)]


def cut_buckets(order: Sequence[T], bucket_size: int, *, equal: bool = False) -> list[list[T]]:
    """``order`` (already shuffled) cut into consecutive buckets of ``bucket_sizes``; with ``equal`` the
    items left over are in none."""
    out: list[list[T]] = []
    start = 0
    for size in bucket_sizes(len(order), bucket_size, equal=equal):
        out.append(list(order[start : start + size]))
        start += size
    return out


def assign_buckets(
    facilities: Sequence[str], fogs: Sequence[str], bucket_size: int, seed: bytes, *, equal: bool = False
) -> list[BucketPlan]:
    """Re-draw buckets for a round: shuffle facilities, cut into buckets, deal buckets to fogs. With
    ``equal`` (``bucket_sizes``) the facilities left over are in no bucket: they rest this round."""
    if not fogs:
        raise ValueError("no fog is registered, so no bucket can be formed")
    order = shuffled(sorted(set(facilities)), seed, "buckets")
    fog_order = shuffled(sorted(set(fogs)), seed, "fogs")
    plans: list[BucketPlan] = []
    for i, part in enumerate(cut_buckets(order, bucket_size, equal=equal)):
        members = tuple(sorted(part))
        plans.append(BucketPlan(bucket_id=f"b{i}", fog_id=fog_order[i % len(fog_order)], members=members))
    return plans


# ---------------------------------------------------------------- regional fogs
MIN_BUCKETS_PER_FOG = 4
"""A fog is given facilities only in multiples of this many buckets' worth: buckets are re-drawn among
one fog's facilities each round, and finding a misbehaving facility by re-drawn buckets (group testing,
hfl.robust.reputation) needs several buckets to draw among. With two buckets, one misbehaving facility
would taint half of its fog's facilities in every round. A federation too small to fill two fogs this
way uses one, and keeps the others as standbys that take over when it is down."""


def _affinity(facility: str, fog: str) -> bytes:
    """How much ``facility`` prefers ``fog`` (rendezvous hashing: no seed, the same in every round, so a
    facility keeps its fog unless that fog goes down or the federation grows or shrinks)."""
    return sha256(b"hfl/home-fog/v1", facility.encode(), b"\x00", fog.encode())


def home_fogs(
    facilities: Mapping[str, str],
    fogs: Mapping[str, str],
    bucket_size: int,
    smallest: int = MIN_SECURE_BUCKET,
    previous: Mapping[str, str] | None = None,
    min_buckets: int = MIN_BUCKETS_PER_FOG,
) -> dict[str, str]:
    """The fog each facility connects to: ``facilities`` maps facility → region, ``fogs`` the fogs that are
    up → the region each serves ("" for none). A pure function of public data, so anyone can check it.

    * A facility goes to a fog of its own region when one is up and the region has enough facilities for
      ``min_buckets`` buckets; otherwise (no region, its region's fogs down, or too few facilities in
      it) it shares the fogs of every region with the other such facilities, or, when those are too few
      for ``min_buckets`` buckets themselves, joins the largest region.
    * Within each such pool the fogs are filled in whole buckets (``bucket_size`` each, at least
      ``min_buckets`` per fog used; the remainder joins the first fog), so every fog holds either
      none or at least max(bucket_size, ``smallest``) facilities, and the pool makes as many buckets
      as if it had one fog.
    * Who goes where inside a pool: a facility keeps its ``previous`` home while that fog is up and has
      room, so when a fog goes down only its own facilities move; the others go by rendezvous hashing
      with bounded loads (each facility prefers fogs in the order of a hash of (facility, fog), and the
      most-preferred pairs are matched first, as long as a fog has room).
    """
    if bucket_size < 1 or min_buckets < 1:
        raise ValueError("the bucket size and the buckets per fog must be at least 1")
    if not fogs or not facilities:
        return {}
    unit = max(bucket_size, smallest)
    regional: dict[str, list[str]] = {}
    shared: list[str] = []
    for facility, region in sorted(facilities.items()):
        if region and any(r == region for r in fogs.values()):
            regional.setdefault(region, []).append(facility)
        else:
            shared.append(facility)
    pools: list[tuple[list[str], list[str]]] = []
    for region, members in sorted(regional.items()):
        if len(members) >= min_buckets * unit:
            pools.append((members, sorted(f for f, r in fogs.items() if r == region)))
        else:
            shared.extend(members)  # too few to re-draw buckets among: served with everyone else
    if shared and pools and len(shared) < min_buckets * unit:
        largest = max(pools, key=lambda p: len(p[0]))  # too few to share fogs: they join the largest region
        largest[0].extend(shared)
        largest[0].sort()
    elif shared:
        pools.append((sorted(shared), sorted(fogs)))
    homes: dict[str, str] = {}
    for members, candidates in pools:
        homes.update(_fill(members, candidates, unit, previous or {}, min_buckets))
    return homes


def _fill(
    members: list[str], candidates: list[str], unit: int, previous: Mapping[str, str], min_buckets: int
) -> dict[str, str]:
    """Deal ``members`` to ``candidates`` in whole buckets of ``unit`` (see ``home_fogs``)."""
    order = sorted(candidates, key=lambda g: sha256(b"hfl/fog-order/v1", g.encode()))
    n_buckets = max(1, len(members) // unit)
    used = order[: max(1, min(len(order), n_buckets // min_buckets))]
    room = dict.fromkeys(used, 0)
    for i in range(n_buckets):
        room[used[i % len(used)]] += unit
    room[used[0]] += len(members) - n_buckets * unit  # the remainder (negative: a pool smaller than unit)
    homes: dict[str, str] = {}
    stay = [(_affinity(m, previous[m]), m, previous[m]) for m in members if previous.get(m) in room]
    pairs = sorted(((_affinity(m, g), m, g) for m in members for g in used), reverse=True)
    for _, m, g in [*sorted(stay, reverse=True), *pairs]:
        if m not in homes and room[g] > 0:
            homes[m] = g
            room[g] -= 1
    return homes


def assign_buckets_at(
    at: Mapping[str, str], bucket_size: int, seed: bytes, smallest: int = 1, *, equal: bool = False
) -> tuple[list[BucketPlan], list[str], list[str]]:
    """This round's training buckets when each facility can only be reached through one fog (``at``:
    facility → fog): buckets are re-drawn among each fog's facilities, never across fogs. A fog with
    fewer than ``smallest`` facilities this round forms no bucket; its facilities sit out the round
    (returned second, sorted). With ``equal`` (``bucket_sizes``), each fog's remainder rests (returned
    third, sorted)."""
    plans: list[BucketPlan] = []
    sit_out: list[str] = []
    rest: list[str] = []
    for fog, members in sorted(_by_fog(at).items()):
        if len(members) < smallest:
            sit_out.extend(members)
            continue
        placed: set[str] = set()
        for p in assign_buckets(members, [fog], bucket_size, sha256(seed, fog.encode()), equal=equal):
            plans.append(BucketPlan(f"b{len(plans)}", fog, p.members))
            placed.update(p.members)
        rest.extend(m for m in members if m not in placed)
    return plans, sorted(sit_out), sorted(rest)


def assign_eval_buckets_at(
    specialties: Mapping[str, str], at: Mapping[str, str], bucket_size: int, seed: bytes
) -> list[BucketPlan]:
    """Evaluation buckets (``assign_eval_buckets``) drawn among each fog's facilities."""
    plans: list[BucketPlan] = []
    for fog, members in sorted(_by_fog({m: at[m] for m in specialties}).items()):
        group = {m: specialties[m] for m in members}
        for p in assign_eval_buckets(group, [fog], bucket_size, sha256(seed, fog.encode())):
            plans.append(BucketPlan(f"e{len(plans)}", fog, p.members, p.group))
    return plans


def _by_fog(at: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for facility, fog in sorted(at.items()):
        out.setdefault(fog, []).append(facility)
    return out


class FogStatus:
    """Which fogs are down, from the leader's round reports (sans-I/O; JSON state).

    A fog the leader could not reach in a round (its round call failed to connect, or its health check
    did not answer) is *down* from the next round on: the authority gives its facilities other homes.
    It is up again when the leader reaches it again (the leader checks down fogs every round) or when it
    registers again (a restarted fog always does)."""

    def __init__(self) -> None:
        self._down: set[str] = set()

    @property
    def down(self) -> frozenset[str]:
        return frozenset(self._down)

    def observe(self, down: Sequence[str], up: Sequence[str]) -> tuple[list[str], list[str]]:
        """Record one round's evidence; returns (newly down, back up), each sorted. A fog listed as both
        is taken as down (a fog that answered one call and failed the next is not dependable)."""
        newly = sorted(set(down) - self._down)
        back = sorted((set(up) - set(down)) & self._down)
        self._down |= set(down)
        self._down -= set(back)
        return newly, back

    def registered(self, fog: str) -> bool:
        """The fog registered (again): count it as up. Returns whether it had been down."""
        if fog in self._down:
            self._down.discard(fog)
            return True
        return False

    def to_dict(self) -> dict[str, object]:
        return {"down": sorted(self._down)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FogStatus:
        down = d.get("down", [])
        if not isinstance(down, list):
            raise ValueError("malformed fog status")
        out = cls()
        out._down = {str(x) for x in down}
        return out


MIXED = "mixed"  # an evaluation bucket whose members are not all of one specialty


def assign_eval_buckets(
    specialties: Mapping[str, str], fogs: Sequence[str], bucket_size: int, seed: bytes
) -> list[BucketPlan]:
    """Evaluation buckets for a round: facilities grouped by specialty, so that masked sums per bucket
    add up to results per specialty without any group smaller than MIN_SECURE_BUCKET.

    ``specialties`` maps each facility to its specialty. A specialty with at least MIN_SECURE_BUCKET
    facilities is cut into buckets of its own (``group`` = the specialty); the facilities of smaller
    specialties are pooled into ``MIXED`` buckets. When fewer than MIN_SECURE_BUCKET facilities are left
    over for MIXED, they join the largest single-specialty bucket, which then counts as MIXED (its
    specialty's result covers its other buckets only). With fewer than MIN_SECURE_BUCKET facilities in
    all, there is one MIXED bucket of everyone (the caller refuses that with secure aggregation)."""
    if not fogs:
        raise ValueError("no fog is registered, so no bucket can be formed")
    by_group: dict[str, list[str]] = {}
    for facility, specialty in sorted(specialties.items()):
        by_group.setdefault(specialty, []).append(facility)
    pure = {g: ms for g, ms in by_group.items() if len(ms) >= MIN_SECURE_BUCKET}
    leftover = sorted(m for g, ms in by_group.items() if g not in pure for m in ms)
    groups: list[tuple[str, list[str]]] = []
    for group in sorted(pure):
        order = shuffled(pure[group], seed, f"eval/{group}")
        start = 0
        for size in bucket_sizes(len(order), max(bucket_size, MIN_SECURE_BUCKET)):
            groups.append((group, order[start : start + size]))
            start += size
    if len(leftover) >= MIN_SECURE_BUCKET or not groups:
        order = shuffled(leftover, seed, f"eval/{MIXED}")
        start = 0
        for size in bucket_sizes(len(order), max(bucket_size, MIN_SECURE_BUCKET)):
            groups.append((MIXED, order[start : start + size]))
            start += size
    elif leftover:
        largest = max(range(len(groups)), key=lambda i: (len(groups[i][1]), -i))
        groups[largest] = (MIXED, groups[largest][1] + leftover)
    fog_order = shuffled(sorted(set(fogs)), seed, "eval/fogs")
    return [
        BucketPlan(f"e{i}", fog_order[i % len(fog_order)], tuple(sorted(members)), group)
        for i, (group, members) in enumerate(groups)
        if members
    ]


def select_committee(
    validators: Sequence[str], size: int, seed: bytes, weights: Mapping[str, float] | None = None
) -> list[str]:
    """Draw ``size`` validators without replacement, with probability proportional to weight.

    Uses the Efraimidis–Spirakis keys u^(1/w) with u derived from the seed, so the draw is reproducible.
    """
    pool = sorted(set(validators))
    if size > len(pool):
        raise ValueError(f"the committee needs {size} validators but only {len(pool)} are registered")
    keyed: list[tuple[float, str]] = []
    for v in pool:
        w = 1.0 if weights is None else float(weights.get(v, 1.0))
        w = max(w, 1e-6)
        u = (int.from_bytes(_rank(seed, "committee", v)[:8], "big") + 1) / (2**64 + 1)
        keyed.append((u ** (1.0 / w), v))
    keyed.sort(key=lambda kv: (-kv[0], kv[1]))
    return sorted(v for _, v in keyed[:size])


class Attendance:
    """Facilities that keep missing their rounds stop being scheduled (sans-I/O; JSON state).

    A scheduled facility that did not answer its fog's first call of the round at all (it is down, cut
    off, or a container that was scaled away) is *absent* that round; one that answered is present and
    its count starts again (a facility that answered and then dropped out or refused is not absent).
    After ``limit`` absences in a row it becomes *inactive*: the authority leaves it out of the schedule,
    so the other facilities stop waiting a whole round timeout for it, until it registers again (a
    restarted facility always does; a running one re-registers when no fog has called on it for a while).
    A malformed update that a fog refused is not an absence: it is evidence for reputation instead.
    ``limit`` = 0 switches this off.
    """

    def __init__(self, limit: int = 3) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"the absence limit must be a whole number ≥ 0, got {limit!r}")
        self.limit = limit
        self._missed: dict[str, int] = {}
        self._inactive: set[str] = set()
        self._last: int | None = None  # the last observation counted: a replayed one changes nothing

    @property
    def inactive(self) -> frozenset[str]:
        return frozenset(self._inactive)

    def missed(self, facility: str) -> int:
        return self._missed.get(facility, 0)

    def observe(self, observation: int, scheduled: Sequence[str], absent: Sequence[str]) -> list[str]:
        """Record one round attempt (``observation`` must increase); returns the facilities that became
        inactive with it (sorted). Raises ValueError, changing nothing, for a bad or repeated report."""
        if self._last is not None and observation <= self._last:
            raise ValueError(f"attendance for observation {observation} was already counted")
        stray = sorted(set(absent) - set(scheduled))
        if stray:
            raise ValueError(f"absent facilities that were not scheduled: {', '.join(stray)}")
        self._last = observation
        gone = set(absent)
        newly = []
        for f in sorted(set(scheduled)):
            if f not in gone:
                self._missed.pop(f, None)
                continue
            self._missed[f] = self._missed.get(f, 0) + 1
            if self.limit and self._missed[f] >= self.limit and f not in self._inactive:
                self._inactive.add(f)
                newly.append(f)
        return newly

    def present(self, facility: str) -> bool:
        """The facility registered (again): schedule it again. Returns whether it had been inactive."""
        self._missed.pop(facility, None)
        if facility in self._inactive:
            self._inactive.discard(facility)
            return True
        return False

    def to_dict(self) -> dict[str, object]:
        return {
            "missed": dict(sorted(self._missed.items())),
            "inactive": sorted(self._inactive),
            "last": self._last,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object], limit: int) -> Attendance:
        """Restore saved state under the current ``limit`` setting."""
        out = cls(limit)
        missed = d.get("missed", {})
        inactive = d.get("inactive", [])
        if not isinstance(missed, Mapping) or not isinstance(inactive, list):
            raise ValueError("malformed attendance state")
        last = d.get("last")
        out._missed = {str(k): int(v) for k, v in missed.items()}
        out._inactive = {str(x) for x in inactive}
        out._last = None if last is None else int(last)  # type: ignore[call-overload]
        return out
