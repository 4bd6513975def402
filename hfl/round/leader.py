"""The leader's side of one round attempt, as a state machine without I/O.

The leader service (services/leader/service.py) performs what this machine asks for and feeds back what
happened; it owns the network, the clocks and the metrics. One ``LeaderRound`` is one attempt of one
round (one signed ``RoundConfig`` from the authority):

1. ``start()`` returns ``RunFogs``: ask every fog with buckets to run the round, and health-check the fogs
   without buckets. Feed back ``fog_answered`` / ``add_bucket`` / ``fog_failed`` / ``fog_checked``, then
   call ``close_fogs()``.
2. ``close_fogs()`` drops abandoned and empty buckets, runs the round's aggregation rule on the rest
   and returns ``AskCommittee`` (block X, to be voted on) or, when no bucket sum arrived, ``Report``.
3. Feed each validator's vote to ``add_vote``, then ``close_votes()``: ``Commit`` (the block with its
   quorum certificate) or, without a quorum, ``Report`` (the proposal was refused).
4. After committing, ``committed()`` returns ``Evaluate``; feed the result to ``evaluated()``.
5. ``Report``: tell the authority; feed its quarantine list to ``reported()``, which returns ``Finish``
   with the round's ``RoundEvent``. ``Finish.retry`` says whether the round is tried again with a new
   attempt (``next_attempt`` and ``retry_pause`` say which attempt and after how long).

Events out of order raise ``RoundStageError``; a vote or bucket the leader must not use raises
``RefusedInput`` (the service logs it and goes on). Both derive from ``LeaderRoundError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from hfl.domain import (
    BucketRecord,
    BucketResult,
    Metrics,
    RoundConfig,
    RoundEvent,
    RoundReport,
    SpecialtyResult,
    VoteRecord,
)
from hfl.learning.metrics import clinical_metrics
from hfl.ledger import Block, BlockHeader, CommitteeMember, LedgerError, Vote, select_quorum
from hfl.robust.bound import RECORD_KEY, bound_for, round_record
from hfl.robust.rules import resolve_f
from hfl.round.propose import propose

__all__ = [
    "RETRY_PAUSE_MAX_S",
    "AskCommittee",
    "Command",
    "Commit",
    "Evaluate",
    "Finish",
    "LeaderPolicy",
    "LeaderRound",
    "LeaderRoundError",
    "RefusedInput",
    "Report",
    "RoundStage",
    "RoundStageError",
    "RunFogs",
    "bucket_records",
    "next_attempt",
    "retry_pause",
    "vote_records",
]

RETRY_PAUSE_MAX_S = 10.0


def retry_pause(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` of a round (0: the round's first attempt, no pause).
    A round that keeps failing (a fog down, too few votes) is tried again after 0.1 s, then twice as
    long each time up to RETRY_PAUSE_MAX_S, so a federation that cannot make progress does not retry
    many times a second (each attempt is numbered, and the privacy ledger numbers at most 1000 attempts
    per round: hfl.bounds.SLOTS_PER_ROUND)."""
    return 0.0 if attempt <= 0 else min(RETRY_PAUSE_MAX_S, 0.1 * 2 ** min(attempt - 1, 10))


def next_attempt(attempt: int, committed: bool) -> int:
    """The attempt number of the next try: 0 (a new round) after a commit, else one more."""
    return 0 if committed else attempt + 1


class LeaderRoundError(Exception):
    """Base class for everything the leader's round machine refuses."""


class RoundStageError(LeaderRoundError):
    """An event arrived at the wrong stage of the round (for example a vote before a proposal)."""


class RefusedInput(LeaderRoundError):
    """A fog's bucket or a validator's vote that the leader must not use; the round goes on without it."""


class RoundStage(Enum):
    FOGS = "waiting for the fogs"
    COMMITTEE = "waiting for the committee's votes"
    COMMIT = "committing the block"
    EVALUATE = "evaluating the committed model"
    REPORT = "reporting to the authority"
    DONE = "done"


@dataclass(frozen=True)
class LeaderPolicy:
    """How the leader aggregates: the rule, f (HFL_F; None: the most the rule tolerates), whether the
    defences are on (off: comparison runs only, no norm bound, no screen, no suspicion), whether the
    norm bound adapts to the committed history, and the configured bound C (the ceiling when adaptive)."""

    rule: str
    f: int | None
    clip_update: float
    defences: bool = True
    adaptive_bound: bool = False

    @property
    def adaptive(self) -> bool:
        return self.adaptive_bound and self.defences

    def norm_bound(self, head: Block) -> float:
        """The bound for the round after ``head``: from the history ``head`` records (at most C) when
        adaptive, else C. With differential privacy the per-record DP clip is untouched: this bound only
        clips the finished update, post-processing that costs no privacy."""
        return bound_for(head.header.extra, self.clip_update) if self.adaptive else float(self.clip_update)

    def rule_params(self, n_buckets: int, clip: float) -> dict[str, object]:
        """Recorded in every block, so validators and auditors re-run exactly the same aggregation."""
        f = resolve_f(self.f, n_buckets, self.rule)
        if not self.defences:
            return {"f": f, "clip_update": None, "screen": False}
        return {"f": f, "clip_update": float(clip)}


# ------------------------------------------------------------------------------------------ commands


@dataclass(frozen=True)
class RunFogs:
    """Ask ``fogs`` to run the round with the norm bound ``clip``; health-check ``idle`` (no buckets)."""

    fogs: tuple[str, ...]
    idle: tuple[str, ...]
    clip: float


@dataclass(frozen=True)
class AskCommittee:
    """Ask every committee member to vote on ``header`` (computed from ``buckets`` by the rule)."""

    header: BlockHeader
    buckets: tuple[BucketResult, ...]
    flags: dict[str, str]  # bucket id -> why the rule flagged it

    @property
    def block_hash(self) -> bytes:
        return self.header.hash()


@dataclass(frozen=True)
class Commit:
    """Append ``block`` (with its quorum certificate), the new model and the bucket sums to the ledger."""

    block: Block
    model: np.ndarray
    sums: np.ndarray


@dataclass(frozen=True)
class Evaluate:
    """Evaluate the committed ``model`` on the round's evaluation buckets."""

    model: np.ndarray


@dataclass(frozen=True)
class Report:
    """Tell the authority how the attempt went (``block`` None: nothing was committed)."""

    report: RoundReport
    block: Block | None
    flagged: tuple[str, ...]


@dataclass(frozen=True)
class Finish:
    """The attempt is over. ``retry``: not committed, so the round is tried again with a new attempt."""

    event: RoundEvent

    @property
    def retry(self) -> bool:
        return not self.event.committed


Command = RunFogs | AskCommittee | Commit | Evaluate | Report | Finish


# ------------------------------------------------------------------------------------ the machine


class LeaderRound:
    """One round attempt at the leader: ``config`` (signed by the authority), the ledger ``head`` and
    the model it records, and the ``policy`` the leader aggregates by."""

    def __init__(self, config: RoundConfig, head: Block, model: np.ndarray, policy: LeaderPolicy) -> None:
        if config.round != head.header.round + 1:
            raise LeaderRoundError(
                f"round {config.round} cannot follow block {head.header.round}: the ledger head moved"
            )
        self.config = config
        self.head = head
        self.model = np.asarray(model, dtype=np.float64)
        self.policy = policy
        self.clip = policy.norm_bound(head)
        self._stage = RoundStage.FOGS
        self._fogs = tuple(sorted({b.fog_id for b in config.buckets}))
        self._runs = {b.bucket_id: b.fog_id for b in config.buckets}
        self._results: dict[str, BucketResult] = {}
        self._reach: dict[str, bool] = {}
        self._votes: dict[str, Vote] = {}
        self._proposal: AskCommittee | None = None
        self._model: np.ndarray | None = None
        self._block: Block | None = None
        self._event: dict[str, Any] = {}
        self._finish: Finish | None = None

    @property
    def stage(self) -> RoundStage:
        return self._stage

    @property
    def detail(self) -> str:
        """Why the attempt ended as it did (empty until it has)."""
        return str(self._event.get("detail", ""))

    def _require(self, stage: RoundStage, what: str) -> None:
        if self._stage is not stage:
            raise RoundStageError(f"round {self.config.round}: cannot {what} while {self._stage.value}")

    # Stage: fogs --------------------------------------------------------------------------------
    def start(self) -> RunFogs:
        self._require(RoundStage.FOGS, "start the round")
        busy = set(self._fogs)
        idle = tuple(f.node_id for f in self.config.fogs if f.node_id not in busy)
        return RunFogs(fogs=self._fogs, idle=idle, clip=self.clip)

    def fog_answered(self, fog_id: str) -> None:
        """``fog_id`` answered the RunRound call (its buckets follow through ``add_bucket``)."""
        self._require(RoundStage.FOGS, "take a fog's answer")
        self._reach[fog_id] = True

    def add_bucket(self, fog_id: str, result: BucketResult) -> None:
        """One bucket result from ``fog_id``. Raises RefusedInput for a bucket it does not run."""
        self._require(RoundStage.FOGS, "take a bucket result")
        if result.fog_id != fog_id or self._runs.get(result.bucket_id) != fog_id:
            raise RefusedInput(f"fog {fog_id} answered for a bucket it does not run")
        if result.bucket_id in self._results:
            raise RefusedInput(f"fog {fog_id} answered twice for bucket {result.bucket_id}")
        self._results[result.bucket_id] = result

    def fog_failed(self, fog_id: str, unreachable: bool) -> None:
        """The RunRound call to ``fog_id`` failed; ``unreachable``: it could not be reached (it is down)."""
        self._require(RoundStage.FOGS, "take a fog's failure")
        if unreachable:
            self._reach[fog_id] = False

    def fog_checked(self, fog_id: str, serving: bool) -> None:
        """The health check of a fog without buckets: whether it is serving (for the authority)."""
        self._require(RoundStage.FOGS, "take a health check")
        self._reach[fog_id] = serving

    @property
    def results(self) -> tuple[BucketResult, ...]:
        return tuple(self._results[k] for k in sorted(self._results))

    @property
    def dropouts(self) -> int:
        return sum(len(r.dropped) for r in self._results.values())

    def close_fogs(self) -> AskCommittee | Report:
        """Every fog answered or failed: propose a block from the usable buckets, or report that none came."""
        self._require(RoundStage.FOGS, "close the fog stage")
        config, results = self.config, self.results
        used = tuple(r for r in results if not r.abandoned and r.count > 0)
        self._event = dict(
            round=config.round,
            participants=sum(r.count for r in used),
            dropouts=self.dropouts,
            abandoned_buckets=sum(1 for r in results if r.abandoned),
            committee=tuple(m.node_id for m in config.committee),
            buckets=bucket_records(config, results, ()),
        )
        if not used:  # nothing to aggregate or vote on; the authority still learns who never answered
            self._event["detail"] = "no bucket sums arrived"
            return self._to_report(None, {}, None)
        self._proposal = self._propose(used)
        self._stage = RoundStage.COMMITTEE
        return self._proposal

    def _propose(self, used: tuple[BucketResult, ...]) -> AskCommittee:
        sums = np.stack([r.total for r in used])
        counts = [r.count for r in used]
        extra = {
            "buckets": [r.bucket_id for r in used],
            "fogs": [r.fog_id for r in used],
            "members": [list(r.members) for r in used],
            "committee_draw": self.config.committee_draw,
        }
        header, model, result = propose(
            self.head,
            self.model,
            sums,
            counts,
            rule=self.policy.rule,
            rule_params=self.policy.rule_params(len(used), self.clip),
            committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in self.config.committee],
            config_hash=self.config.hash(),
            quorum=self.config.quorum,
            extra=extra,
        )
        if self.policy.adaptive:  # this round's accepted buckets join the history the next bound uses
            record = round_record(
                self.head.header.extra, sums, counts, header.flagged, ceiling=self.policy.clip_update
            )
            header = replace(header, extra={**header.extra, RECORD_KEY: record})
        self._model = model
        flags = {used[i].bucket_id: kind for i, kind in result.flag_kinds.items()}
        return AskCommittee(header=header, buckets=used, flags=flags)

    # Stage: committee ---------------------------------------------------------------------------
    def add_vote(self, node_id: str, vote: Vote) -> None:
        """``node_id``'s answer. Raises RefusedInput for a vote signed as someone else, from outside
        the committee, or a second one; the signature and block hash are checked by the quorum rule."""
        self._require(RoundStage.COMMITTEE, "take a vote")
        if vote.validator_id != node_id:
            raise RefusedInput(f"validator {node_id} signed as {vote.validator_id}")
        if node_id not in {m.node_id for m in self.config.committee}:
            raise RefusedInput(f"{node_id} is not on the committee")
        if node_id in self._votes:
            raise RefusedInput(f"validator {node_id} voted twice")
        self._votes[node_id] = vote

    @property
    def votes(self) -> list[Vote]:
        """The votes received, in committee order."""
        return [self._votes[m.node_id] for m in self.config.committee if m.node_id in self._votes]

    def close_votes(self) -> Commit | Report:
        """Every member voted or timed out: commit with a quorum certificate, or report the refusal."""
        self._require(RoundStage.COMMITTEE, "close the vote")
        proposal, votes = self._proposal, self.votes
        assert proposal is not None and self._model is not None
        accepts = sum(1 for v in votes if v.accept)
        flagged = tuple(sorted(proposal.flags))
        self._event.update(
            accepts=accepts,
            rejects=len(votes) - accepts,
            flagged_buckets=flagged,
            votes=vote_records(self.config, votes),
            buckets=bucket_records(self.config, self.results, flagged),
        )
        try:
            qc = select_quorum(proposal.header, votes)
        except LedgerError as e:
            reasons = sorted({v.reason for v in votes if not v.accept})
            self._event["detail"] = f"{e}" + (f" ({'; '.join(reasons)})" if reasons else "")
            return self._to_report(None, proposal.flags, votes)
        self._block = Block(proposal.header, qc)
        self._stage = RoundStage.COMMIT
        return Commit(self._block, self._model, np.stack([r.total for r in proposal.buckets]))

    # Stage: commit and evaluate -----------------------------------------------------------------
    def committed(self) -> Evaluate:
        """The block is in the ledger: evaluate the new model."""
        self._require(RoundStage.COMMIT, "confirm the commit")
        assert self._model is not None
        self._stage = RoundStage.EVALUATE
        return Evaluate(self._model)

    def evaluated(self, metrics: Metrics, specialties: Sequence[SpecialtyResult]) -> Report:
        self._require(RoundStage.EVALUATE, "take evaluation results")
        assert self._block is not None and self._proposal is not None
        self._event.update(
            committed=True,
            accuracy=metrics.accuracy,
            loss=metrics.loss,
            clinical=clinical_metrics(metrics),
            specialties=tuple(specialties),
            block_hash=self._block.hash,
            detail="committed",
        )
        return self._to_report(self._block, self._proposal.flags, self.votes)

    # Stage: report ------------------------------------------------------------------------------
    def _to_report(self, block: Block | None, flags: dict[str, str], votes: list[Vote] | None) -> Report:
        """The evidence for the authority. ``votes`` None: nothing was proposed, so there is no evidence
        about updates or votes. With the defences off nobody gains suspicion."""
        results = self._results.values()
        refused = {m for r in results for m in r.refused}  # malformed updates the fogs refused
        absent = {m for r in results for m in r.unreachable} - refused  # never answered at all
        if not self.policy.defences:
            flags, refused = {}, set()
        cast: tuple[tuple[str, bool | None], ...] = ()
        if votes is not None:
            by_voter = {v.validator_id: v.accept for v in votes}
            cast = tuple((m.node_id, by_voter.get(m.node_id)) for m in self.config.committee)
        report = RoundReport(
            flags=dict(flags),
            refused=tuple(sorted(refused)),
            absent=tuple(sorted(absent)),
            votes=cast,
            fogs_down=tuple(sorted(f for f, ok in self._reach.items() if not ok)),
            fogs_up=tuple(sorted(f for f, ok in self._reach.items() if ok)),
        )
        self._stage = RoundStage.REPORT
        return Report(report=report, block=block, flagged=tuple(sorted(flags)))

    def reported(self, quarantined: Sequence[str]) -> Finish:
        """The authority's answer: who is quarantined now (empty if it could not be told)."""
        self._require(RoundStage.REPORT, "take the authority's answer")
        self._event.setdefault("committed", False)
        self._finish = Finish(RoundEvent(quarantined=tuple(quarantined), **self._event))
        self._stage = RoundStage.DONE
        return self._finish


# ------------------------------------------------------------------------------ what the operator sees


def bucket_records(
    config: RoundConfig, results: Sequence[BucketResult], flagged: Sequence[str]
) -> tuple[BucketRecord, ...]:
    """Every scheduled training bucket as the operator sees it: the fog, the members, who dropped out,
    and whether it was flagged or abandoned (a bucket whose fog sent nothing counts as abandoned)."""
    answered = {r.bucket_id: r for r in results}
    out = []
    for b in config.buckets:
        r = answered.get(b.bucket_id)
        out.append(
            BucketRecord(
                bucket_id=b.bucket_id,
                fog_id=b.fog_id,
                members=tuple(b.members),
                dropped=tuple(r.dropped) if r else (),
                flagged=b.bucket_id in flagged,
                abandoned=r is None or r.abandoned or r.count == 0,
            )
        )
    return tuple(out)


def vote_records(config: RoundConfig, votes: Sequence[Vote]) -> tuple[VoteRecord, ...]:
    """One record per committee member, in committee order: its vote and reason, or that it did not
    answer in time."""
    by_id = {v.validator_id: v for v in votes}
    out = []
    for m in config.committee:
        v = by_id.get(m.node_id)
        out.append(
            VoteRecord(m.node_id, accept=v.accept, reason=v.reason)
            if v
            else VoteRecord(m.node_id, accept=False, reason="no answer in time", answered=False)
        )
    return tuple(out)
