"""Buckets sized for the threat: how many misbehaving facilities a bucketing withstands in every round.

A misbehaving (Byzantine) facility spoils at most the one bucket it is drawn into, so with m of them a
round has at most m bad buckets. The aggregation rule tolerates f bad buckets out of B when B is large
enough (trimmed mean and median: B ≥ 2f+1; multi-Krum: B ≥ 2f+3; the plain mean: none), and N facilities
in buckets of s make B = ⌊N/s⌋ buckets. So a federation withstands m misbehaving facilities in every
round, wherever the draw puts them, when ⌊N/s⌋ ≥ buckets_needed(rule, m).

Secure aggregation needs s ≥ 3, which caps what a small federation can promise: 12 facilities make at
most 4 buckets of 3, enough for one misbehaving facility under the trimmed mean, not two. The norm bound,
the outlier screen and quarantine still act beyond that, but without the every-round guarantee.

Quarantine has a second need. It finds an offender by group testing: the offender is the member that
keeps turning up in flagged buckets while its bucket-mates change. That needs at least two buckets per
misbehaving facility (``QUARANTINE_BUCKETS_PER_OFFENDER``); with fewer, the flagged buckets hold most of
the federation and honest facilities look as guilty as the offenders (12 facilities in buckets of 4
with 2 attackers: 3 buckets, both attackers quarantined by round 10 in 0 of 5 seeds). So a bucket size
larger than the default is refused when it gives fewer buckets than that while buckets of 3 would give
enough, for the one in six misbehaving facilities assumed when HFL_MAX_BYZANTINE is unset
(``hfl.robust.reputation.default_max_byzantine``; a declared number already needs 2·m + 1 buckets to be
withstood in every round). A small federation that even buckets of 3 cannot cover runs as before and
says what it withstands.

Pure functions; the authority checks its settings at start-up with them, and ``hfl demo`` before it
starts any process.
"""

from __future__ import annotations

from dataclasses import dataclass

from hfl.robust.reputation import default_max_byzantine
from hfl.robust.rules import DEFAULT_RULE, get_rule
from hfl.schedule import MIN_SECURE_BUCKET, bucket_sizes

DEFAULT_BUCKET_SIZE = MIN_SECURE_BUCKET
"""Buckets of 3: the most buckets secure aggregation allows, so the most bad buckets tolerated, and (with
the trimmed mean) the fewest honest facilities' updates trimmed away for a given threat."""


QUARANTINE_BUCKETS_PER_OFFENDER = 2
"""Group testing singles out m misbehaving facilities only with at least 2·m buckets."""


class SizingError(ValueError):
    """A declared threat that the bucketing cannot withstand; the message says what would work."""


def buckets_needed(rule: str, max_byzantine: int) -> int | None:
    """Fewest buckets with which ``rule`` tolerates ``max_byzantine`` bad buckets (None: no number does)."""
    r = get_rule(rule)
    if max_byzantine < 0:
        raise ValueError("the number of misbehaving facilities to withstand cannot be negative")
    return r.buckets_needed(max_byzantine)  # multi-Krum needs three buckets even to tolerate none


def withstands(rule: str, n_facilities: int, bucket_size: int) -> int:
    """The most misbehaving facilities ``n_facilities`` in buckets of ``bucket_size`` withstand in every
    round (0 when they withstand none)."""
    if bucket_size < 1:
        raise ValueError("the bucket size must be at least 1")
    n_buckets = max(1, n_facilities // bucket_size) if n_facilities >= 1 else 0  # as hfl.schedule cuts them
    return withstands_buckets(rule, n_buckets)


def withstands_buckets(rule: str, n_buckets: int) -> int:
    """The most misbehaving facilities ``n_buckets`` buckets withstand in every round under ``rule``."""
    r = get_rule(rule)
    if not r.tolerates_bad_buckets or n_buckets == 0:
        return 0
    return max(0, r.max_faults(n_buckets))


@dataclass(frozen=True)
class Sizing:
    """What a federation's bucketing promises."""

    facilities: int
    bucket_size: int
    rule: str
    withstands: int

    drawn: int = 0  # the buckets actually drawn this round (0: as many as one fog would make)

    @property
    def buckets(self) -> int:
        return self.drawn or max(1, self.facilities // self.bucket_size)

    def sizes(self) -> str:
        """The bucket sizes in words: "4", "3 or 4" (one fog's draw: sizes differ by at most one) or, for
        buckets drawn over several fogs, "at least 3" when they need not all be the bucket size."""
        if self.drawn:
            exact = self.facilities == self.drawn * self.bucket_size
            return str(self.bucket_size) if exact else f"at least {self.bucket_size}"
        sizes = bucket_sizes(self.facilities, self.bucket_size) or [self.bucket_size]
        low, high = min(sizes), max(sizes)
        return str(low) if low == high else f"{low} or {high}"

    def sentence(self) -> str:
        where = (
            f"{self.facilities} facilities in {self.buckets} bucket{'s' if self.buckets != 1 else ''} of "
            f"{self.sizes()}, combined with {get_rule(self.rule).phrase},"
        )
        if self.withstands == 0:
            need = buckets_needed(self.rule, 1)
            hint = (
                f"{get_rule(self.rule).phrase} never can"
                if need is None
                else f"that takes at least {need * self.bucket_size} facilities"
            )
            return (
                f"{where} cannot promise to withstand even one misbehaving facility in every round ({hint})"
            )
        who = "misbehaving facility" if self.withstands == 1 else "misbehaving facilities"
        return f"{where} withstand up to {self.withstands} {who} in every round, wherever the draw puts them"


ENV_NAMES = {
    "max_byzantine": "HFL_MAX_BYZANTINE=",
    "bucket_size": "HFL_BUCKET_SIZE=",
    "f": "HFL_F=",
    "rule": "HFL_RULE=",
}
"""How a setting is named in the sentences: environment variables for services (the demo passes its flags)."""


def size_federation(
    n_facilities: int,
    *,
    rule: str = DEFAULT_RULE,
    bucket_size: int = DEFAULT_BUCKET_SIZE,
    max_byzantine: int | None = None,
    f: int | None = None,
    secagg: bool = True,
    names: dict[str, str] = ENV_NAMES,
) -> Sizing:
    """Check a federation's bucketing against the threat it declares.

    ``max_byzantine=None`` declares nothing: the result says what the bucketing withstands, unless the
    buckets are too few for quarantine to single out the one in six misbehaving facilities then assumed
    while buckets of 3 would not be (refused with :class:`SizingError`, a robust rule only). A declared
    number the bucketing cannot withstand raises :class:`SizingError` with one plain sentence naming
    what would work (a bucket size that works, how many facilities are needed, or fewer declared).
    ``f`` is the rule's setting (HFL_F; None: as many bad buckets as the rule tolerates). ``names`` says
    how the settings are called in the sentence.
    """
    if n_facilities < 1:
        raise ValueError("a federation needs at least one facility")
    if bucket_size < 1:
        raise ValueError("the bucket size must be at least 1")
    m_, s_, f_, r_ = (names[k] for k in ("max_byzantine", "bucket_size", "f", "rule"))
    smallest = MIN_SECURE_BUCKET if secagg else 1
    can = withstands(rule, n_facilities, bucket_size)
    if f is not None and f >= 0:
        can = min(can, f)
    if max_byzantine is None:
        _check_quarantine(n_facilities, rule, bucket_size, can, names)
        return Sizing(n_facilities, bucket_size, rule, can)
    if max_byzantine < 0:
        raise SizingError(f"{m_}{max_byzantine} cannot be negative: use 0 or more, or leave it unset")
    need = buckets_needed(rule, max_byzantine)
    plural = "facility" if max_byzantine == 1 else "facilities"
    if need is None:
        raise SizingError(
            f"{m_}{max_byzantine}, but {get_rule(rule).phrase} withstands no misbehaving facility at all: "
            f"use {r_}trimmed_mean (or median), or declare {m_}0"
        )
    if f is not None and 0 <= f < max_byzantine:
        raise SizingError(
            f"{f_}{f} lets the rule leave out only {f} bad bucket{'s' if f != 1 else ''} per round, fewer "
            f"than the {max_byzantine} misbehaving {plural} declared ({m_}{max_byzantine}): use {f_}-1 "
            f"(as many as the buckets allow) or {f_}{max_byzantine}"
        )
    n_buckets = max(1, n_facilities // bucket_size)
    if n_buckets >= need:
        return Sizing(n_facilities, bucket_size, rule, can)
    options = []
    fits = [s for s in range(bucket_size - 1, smallest - 1, -1) if max(1, n_facilities // s) >= need]
    if fits:
        options.append(f"use buckets of {fits[0]} ({s_}{fits[0]})")
    options.append(f"enrol at least {need * bucket_size} facilities")
    top = withstands(rule, n_facilities, bucket_size)
    if (buckets_needed(rule, top) or 1) <= n_buckets:
        options.append(f"declare {m_}{top}" + (" or fewer" if top else ""))
    else:  # multi-Krum with fewer than three buckets: no declaration helps
        options.append(f"use {r_}trimmed_mean, which runs with any number of buckets")
    raise SizingError(
        f"{n_facilities} facilities in buckets of {bucket_size} make {n_buckets} "
        f"bucket{'s' if n_buckets != 1 else ''}, but {get_rule(rule).phrase} needs {need} to withstand "
        f"{max_byzantine} misbehaving {plural} in every round: " + ", or ".join(options)
    )


def _check_quarantine(
    n_facilities: int, rule: str, bucket_size: int, can: int, names: dict[str, str]
) -> None:
    """With nothing declared: refuse a bucket size too large for quarantine to single out the one in six
    misbehaving facilities assumed, when buckets of the default size would (module docstring). ``can``:
    what the buckets withstand in every round (under HFL_F), offered as a smaller number to declare. A
    declared number needs no such check: withstanding it in every round already takes 2·m + 1 buckets or more.

    Only with a rule that tolerates bad buckets: the plain mean promises nothing to begin with and is
    there for comparison runs, which must be able to use the same buckets as the run they compare with.
    """
    if not get_rule(rule).tolerates_bad_buckets:
        return
    m = default_max_byzantine(n_facilities)
    want = QUARANTINE_BUCKETS_PER_OFFENDER * m
    n_buckets = max(1, n_facilities // bucket_size)
    if n_buckets >= want or n_facilities // DEFAULT_BUCKET_SIZE < want:
        return  # enough buckets, or even the default size has too few: runs and logs what it withstands
    m_, s_ = names["max_byzantine"], names["bucket_size"]
    fits = next(s for s in range(bucket_size - 1, DEFAULT_BUCKET_SIZE - 1, -1) if n_facilities // s >= want)
    options = [f"use buckets of {fits} ({s_}{fits})"]
    if 1 <= can < m:  # what these buckets withstand in every round, so it passes that check too
        options.append(f"declare {m_}{can} if you accept a weaker guarantee")
    raise SizingError(
        f"{n_facilities} facilities in buckets of {bucket_size} make {n_buckets} "
        f"bucket{'s' if n_buckets != 1 else ''}, too few to single out the {m} misbehaving "
        f"facilit{'y' if m == 1 else 'ies'} a federation of {n_facilities} is assumed to have (one in six; "
        f"quarantine needs {QUARANTINE_BUCKETS_PER_OFFENDER} buckets per misbehaving facility, so {want}): "
        + ", or ".join(options)
    )
