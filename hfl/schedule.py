"""Who does what in a round: bucket assignment and committee selection.

Both are pure functions of public inputs (the node lists and a seed derived from the ledger head), so
anyone holding the ledger can recompute them and check the authority's choices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hfl.hashing import sha256

MIN_SECURE_BUCKET = 3


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


def bucket_sizes(n: int, bucket_size: int) -> list[int]:
    """Split n facilities into buckets of about ``bucket_size``: never smaller than bucket_size
    (except when there are fewer facilities than that in all), sizes differing by at most one."""
    if bucket_size < 1:
        raise ValueError("bucket size must be at least 1")
    if n <= 0:
        return []
    nb = max(1, n // bucket_size)
    base, extra = divmod(n, nb)
    return [base + 1 if i < extra else base for i in range(nb)]


def assign_buckets(
    facilities: Sequence[str], fogs: Sequence[str], bucket_size: int, seed: bytes
) -> list[BucketPlan]:
    """Re-draw buckets for a round: shuffle facilities, cut into buckets, deal buckets to fogs."""
    if not fogs:
        raise ValueError("no fog is registered, so no bucket can be formed")
    order = shuffled(sorted(set(facilities)), seed, "buckets")
    fog_order = shuffled(sorted(set(fogs)), seed, "fogs")
    plans: list[BucketPlan] = []
    start = 0
    for i, size in enumerate(bucket_sizes(len(order), bucket_size)):
        members = tuple(sorted(order[start : start + size]))
        start += size
        plans.append(BucketPlan(bucket_id=f"b{i}", fog_id=fog_order[i % len(fog_order)], members=members))
    return plans


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
