"""Reputation: find misbehaving facilities by group testing, and weigh validators by their votes.

Facilities. The leader only sees bucket sums, so a flag says "someone in this bucket misbehaved", not who.
Buckets are re-drawn every round, so a facility that keeps misbehaving is the common member of flagged
buckets while honest facilities are only sometimes unlucky. Rule, per round:

* each member i of a flagged bucket b gains  penalty · (sᵢ + prior) / mean_{j∈b}(s_j + prior)
  (penalty = ``norm_penalty`` for a norm-bound flag or a refused update, which are certain;
  ``screen_penalty`` for the outlier screen of rules.py, which is calibrated to almost never flag an
  honest bucket; the smaller ``outlier_penalty`` for a bucket that multi-Krum or centered clipping
  left out, which is only a suspicion since multi-Krum always leaves some out). A refused update is
  reported as a group of one (``with_refused``), so that facility takes the whole penalty. With no
  history every member gains ``penalty``; a member that is already suspect takes a larger share of
  the blame ("explaining away"), so an honest facility that shares a bucket with a known offender
  gains little;
* each member of a clean bucket decays: sᵢ ← decay · sᵢ;
* facilities absent this round keep their suspicion (sitting out must not launder it);
* sᵢ ≥ ``threshold`` → quarantined, permanently unless ``release`` is called.

False positives: an honest facility is quarantined only if it lands in flagged buckets in nearly every
round before the offenders stand out. Defaults (threshold 6, decay 0.8, prior 1) were chosen for the
demo scenario (12 facilities, buckets of 3 re-drawn each round, 2 offenders, quarantined facilities left
out of later buckets), where the screen flags a "scale" offender's bucket in ~85 % of rounds and an honest
bucket in < 0.5 %. ``simulate`` (bench/reputation_sim.py → bench/results/reputation_sim.json) with flags
every round: both offenders quarantined by round 5
(median), 0.8 % of 1500 seeded 10-round runs quarantined an honest facility; with flags in 85 % of
rounds: by round 6 (median, 95th percentile 9), 2.3 % missed one offender within 10 rounds, 1.9 % of runs
quarantined an honest facility. The old defaults (threshold 8, decay 0.5) had ~0 % false quarantines
but missed an offender in 28 % of runs at an 85 % flag rate. A higher ``threshold`` trades slower
detection for fewer false positives; re-run ``simulate`` with your federation's sizes to tune it.
A refused update (``nan``) costs ``norm_penalty`` = 1 per round, so it is quarantined after 6 rounds.
An offender that misbehaves in only some rounds decays in the others and is caught more slowly.

Validators. ``observe_votes``: a committee member that voted against the certified outcome loses a
share ``vote_against_penalty`` of its weight, a silent one (None or missing) a share ``silent_penalty``,
and one that voted with the outcome recovers ``vote_recovery`` of the gap to 1. Weights stay in
[``min_weight``, 1] so nobody is locked out forever; ``weight`` is meant for weighted committee draws.

The state is plain data (``to_dict``/``from_dict``, JSON-friendly) so the authority can persist it.
Rounds must increase strictly (per kind) so that the same round is never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

FLAG_KINDS = ("norm", "screen", "outlier")
REFUSED_PREFIX = "refused:"
STATE_VERSION = 1

BucketId = TypeVar("BucketId", bound=Hashable)


class ReputationError(ValueError):
    """Bad reputation input or state."""


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


def _round(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReputationError(f"round must be a whole number ≥ 0, got {value!r}")
    return value


class Reputation:
    """Suspicion and quarantine for facilities; vote-based weights for validators."""

    def __init__(
        self,
        *,
        threshold: float = 6.0,
        norm_penalty: float = 1.0,
        screen_penalty: float = 1.0,
        outlier_penalty: float = 0.25,
        decay: float = 0.8,
        prior: float = 1.0,
        vote_against_penalty: float = 0.5,
        silent_penalty: float = 0.2,
        vote_recovery: float = 0.1,
        min_weight: float = 0.01,
    ) -> None:
        self.threshold = _positive("threshold", threshold)
        self.norm_penalty = _positive("norm_penalty", norm_penalty)
        self.screen_penalty = _positive("screen_penalty", screen_penalty)
        self.outlier_penalty = _positive("outlier_penalty", outlier_penalty)
        if self.outlier_penalty > self.norm_penalty or self.screen_penalty > self.norm_penalty:
            raise ReputationError(
                "outlier_penalty and screen_penalty must not exceed norm_penalty (a norm-bound or refused "
                "update is certain evidence, an outlier only a suspicion)"
            )
        self.decay = _fraction("decay", decay, allow_zero=True)
        self.prior = _positive("prior", prior)
        self.vote_against_penalty = _fraction("vote_against_penalty", vote_against_penalty, allow_one=True)
        self.silent_penalty = _fraction("silent_penalty", silent_penalty, allow_zero=True, allow_one=True)
        self.vote_recovery = _fraction("vote_recovery", vote_recovery, allow_zero=True, allow_one=True)
        self.min_weight = _fraction("min_weight", min_weight)
        self._suspicion: dict[str, float] = {}
        self._quarantined: dict[str, int] = {}
        self._weights: dict[str, float] = {}
        self._last_round: int | None = None
        self._last_vote_round: int | None = None

    # --- facilities ------------------------------------------------------------------------------

    @property
    def quarantined(self) -> frozenset[str]:
        """Facilities currently quarantined."""
        return frozenset(self._quarantined)

    def quarantined_since(self, facility: str) -> int | None:
        """Round in which ``facility`` was quarantined, or None."""
        return self._quarantined.get(facility)

    def suspicion(self, facility: str) -> float:
        """Current suspicion (0 for a facility never seen)."""
        return self._suspicion.get(facility, 0.0)

    def observe(
        self,
        round: int,
        buckets: Mapping[BucketId, Sequence[str]],
        flagged: Mapping[BucketId, str],
    ) -> list[str]:
        """Record one round's buckets and flags; return the facilities newly quarantined (sorted)."""
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

        penalties = {
            "norm": self.norm_penalty,
            "screen": self.screen_penalty,
            "outlier": self.outlier_penalty,
        }
        new = dict(self._suspicion)
        for bid, members in buckets.items():
            flag = flagged.get(bid)
            if flag is None:
                for m in members:
                    new[m] = self.decay * self._suspicion.get(m, 0.0)
                continue
            penalty = penalties[flag]
            base = [self._suspicion.get(m, 0.0) + self.prior for m in members]
            avg = math.fsum(base) / len(base)
            for m, b in zip(members, base, strict=True):
                new[m] = self._suspicion.get(m, 0.0) + penalty * b / avg
        self._suspicion = new
        self._last_round = rnd
        newly = sorted(m for m in seen if m not in self._quarantined and self._suspicion[m] >= self.threshold)
        for m in newly:
            self._quarantined[m] = rnd
        return newly

    def quarantine(self, facility: str) -> None:
        """Quarantine by hand (an operator's decision after an investigation), from the last round seen."""
        if not isinstance(facility, str) or not facility:
            raise ReputationError("a facility id is required")
        if facility in self._quarantined:
            raise ReputationError(f"facility {facility!r} is already quarantined")
        self._quarantined[facility] = self._last_round or 0

    def release(self, facility: str) -> None:
        """Lift a quarantine (after an investigation) and reset the facility's suspicion."""
        if facility not in self._quarantined:
            raise ReputationError(f"facility {facility!r} is not quarantined")
        del self._quarantined[facility]
        self._suspicion[facility] = 0.0

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
        s = max(0.0, 1.0 - self._suspicion.get(node, 0.0) / self.threshold)
        return min(s, self._weights.get(node, 1.0))

    # --- persistence -----------------------------------------------------------------------------

    def _config(self) -> dict[str, float]:
        return {
            "threshold": self.threshold,
            "norm_penalty": self.norm_penalty,
            "screen_penalty": self.screen_penalty,
            "outlier_penalty": self.outlier_penalty,
            "decay": self.decay,
            "prior": self.prior,
            "vote_against_penalty": self.vote_against_penalty,
            "silent_penalty": self.silent_penalty,
            "vote_recovery": self.vote_recovery,
            "min_weight": self.min_weight,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly state (keys sorted for stable output)."""
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "suspicion": dict(sorted(self._suspicion.items())),
            "quarantined": dict(sorted(self._quarantined.items())),
            "weights": dict(sorted(self._weights.items())),
            "last_round": self._last_round,
            "last_vote_round": self._last_vote_round,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reputation:
        """Rebuild from ``to_dict`` output; raises ReputationError on a damaged state."""
        try:
            if data["version"] != STATE_VERSION:
                raise ReputationError(f"unsupported reputation state version {data['version']!r}")
            rep = cls(**dict(data["config"]))
            susp = {str(k): float(v) for k, v in dict(data["suspicion"]).items()}
            quar = {str(k): int(v) for k, v in dict(data["quarantined"]).items()}
            weights = {str(k): float(v) for k, v in dict(data["weights"]).items()}
            last = data["last_round"]
            last_vote = data["last_vote_round"]
        except ReputationError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ReputationError(f"damaged reputation state: {exc!r}") from exc
        if any(not math.isfinite(v) or v < 0 for v in susp.values()):
            raise ReputationError("damaged reputation state: suspicion must be finite and ≥ 0")
        if any(not rep.min_weight <= v <= 1 for v in weights.values()):
            raise ReputationError("damaged reputation state: validator weights out of range")
        rep._suspicion = susp
        rep._quarantined = quar
        rep._weights = weights
        rep._last_round = None if last is None else _round(last)
        rep._last_vote_round = None if last_vote is None else _round(last_vote)
        return rep


def with_refused(
    buckets: Mapping[str, Sequence[str]], flagged: Mapping[str, str], refused: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Give facilities whose update the fog refused (NaN, infinite, wrong size) direct blame.

    Each refused facility leaves its bucket (its bucket's sum does not contain it) and becomes its own
    group ``"refused:<id>"`` flagged ``"norm"``; with a single member it takes the whole penalty,
    ``norm_penalty`` per round, and its former bucket-mates take none. A bucket left empty is dropped
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
    exclude_quarantined: bool = True,
    **config: float,
) -> dict[str, int]:
    """Simulate group testing; return {facility: round quarantined}. Offenders are ``f00``, ``f01``, ...

    Each round the active facilities are shuffled (seeded, non-secret) into buckets of ``bucket_size``;
    a bucket holding an offender that attacks this round (probability ``attack_prob``) gets ``flag``.
    ``config`` goes to ``Reputation``. For tuning the threshold and estimating false positives.
    """
    if n_facilities < 1 or bucket_size < 1 or rounds < 0 or not 0 <= n_byzantine <= n_facilities:
        raise ReputationError(
            "simulate needs n_facilities ≥ 1, bucket_size ≥ 1, 0 ≤ n_byzantine ≤ n_facilities"
        )
    rep = Reputation(**config)
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
        buckets = {
            b: order[b * bucket_size : (b + 1) * bucket_size] for b in range(-(-len(order) // bucket_size))
        }
        flagged = {b: flag for b, members in buckets.items() if attacking.intersection(members)}
        for q in rep.observe(rnd, buckets, flagged):
            caught[q] = rnd
    return caught
