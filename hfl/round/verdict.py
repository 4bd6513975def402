"""A validator's verdict on a proposed block, without I/O: recompute the block from the inputs the leader
sent, check it against the federation's policy and the committed history, score it on the validator's own
validation data, and say why it is accepted or refused. The servicer (services/validator) converts the
request, calls :func:`check_proposal` and signs a vote with the verdict's reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hfl.domain import BucketResult, ModelSpec, RoundConfig
from hfl.errors import InvalidInput, NotAllowed
from hfl.learning.data import Dataset
from hfl.learning.models import Model, evaluate, make_model
from hfl.learning.train import DEFAULT_CLIP_UPDATE
from hfl.ledger import Block, CommitteeMember, LedgerError, check_quorum
from hfl.robust.bound import bound_problem, history_problem
from hfl.robust.rules import policy_violation
from hfl.round.propose import next_header


@dataclass(frozen=True)
class Policy:
    """The federation's settings a validator holds a proposal to (HFL_RULE, HFL_F, HFL_DEFENCES, ...)."""

    rule: str
    f: int | None = None
    defences: bool = True
    adaptive_bound: bool = True
    norm_ceiling: float = DEFAULT_CLIP_UPDATE
    validation_margin: float = 0.05

    @property
    def adaptive(self) -> bool:
        """The norm bound follows the committed history (only with the defences on)."""
        return self.adaptive_bound and self.defences


@dataclass(frozen=True)
class Proposal:
    """What the leader asks the committee to sign: the block hash and the inputs it says give it."""

    block_hash: bytes
    rule: str
    rule_params: Mapping[str, Any]
    extra: Mapping[str, Any]
    buckets: tuple[BucketResult, ...]


@dataclass(frozen=True)
class Verdict:
    """Accept or refuse, why (plain words, one reason per check that decided), and the validation score
    of the proposed model when it was measured."""

    accept: bool
    reasons: tuple[str, ...]
    score: float | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _refuse(reason: str, score: float | None = None) -> Verdict:
    return Verdict(False, (reason,), score)


def _accept(reason: str, score: float | None = None) -> Verdict:
    return Verdict(True, (reason,), score)


def check_proposal(
    proposal: Proposal,
    *,
    config: RoundConfig,
    prev: Block,
    spec: ModelSpec,
    base: np.ndarray,
    policy: Policy,
    validator_id: str,
    data: Dataset | None,
) -> Verdict:
    """The verdict of validator ``validator_id`` on ``proposal`` for the round ``config`` (already verified
    against the authority's key), after the certified block ``prev`` whose model is ``base``.

    Raises NotAllowed when the validator is not on the round's committee and InvalidInput when the request
    does not fit together (a previous block of another round, a base model that does not fit its
    architecture): those are not proposals to vote on."""
    if validator_id not in {m.node_id for m in config.committee}:
        raise NotAllowed(f"this validator is not on the committee of round {config.round}")
    if prev.header.round + 1 != config.round:
        raise InvalidInput(f"the previous block is round {prev.header.round}, not {config.round - 1}")
    if not prev.header.is_genesis:
        try:
            check_quorum(prev.header, prev.votes)
        except LedgerError as e:
            return _refuse(f"previous block not certified: {e}")
    model = make_model(spec.kind, spec.n_features, spec.hidden)
    if base.size != model.n_params:
        raise InvalidInput("the base model does not fit its architecture")
    used = [r for r in proposal.buckets if not r.abandoned]
    if not used:
        return _refuse("no bucket sums to aggregate")
    broken = policy_violation(
        proposal.rule,
        proposal.rule_params,
        len(used),
        expected_rule=policy.rule,
        expected_f=policy.f,
        defences=policy.defences,
    )
    if broken:
        return _refuse(broken)
    if policy.defences:  # the recorded norm bound must be the one policy and history give
        wrong = bound_problem(
            prev.header.extra,
            proposal.rule_params,
            proposal.extra,
            adaptive=policy.adaptive,
            ceiling=policy.norm_ceiling,
        )
        if wrong:
            return _refuse(wrong)
    sums = np.stack([r.total for r in used])
    counts = [r.count for r in used]
    try:
        header, new_model = next_header(
            prev,
            base,
            sums,
            counts,
            rule=proposal.rule,
            rule_params=proposal.rule_params,
            committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
            config_hash=config.hash(),
            quorum=config.quorum,
            extra=proposal.extra,
        )
    except ValueError as e:
        return _refuse(f"cannot recompute the aggregate: {e}")
    if header.hash() != proposal.block_hash:
        return _refuse("the recomputed block differs from the proposal (aggregate or inputs tampered)")
    if policy.adaptive:
        wrong = history_problem(prev.header.extra, header.extra, sums, counts, header.flagged)
        if wrong:
            return _refuse(wrong)
    if not np.all(np.isfinite(new_model)):
        return _refuse("the proposed model has non-finite values")
    return _score(policy, spec, model, base, new_model, data)


def _score(
    policy: Policy,
    spec: ModelSpec,
    model: Model,
    base: np.ndarray,
    new_model: np.ndarray,
    data: Dataset | None,
) -> Verdict:
    """The recomputation matched: accept unless the model does worse on the validator's data than the
    allowed margin (checked only with the defences on and data of the model's schema)."""
    if not policy.defences:
        return _accept("recomputation matches; defences off, score not checked")
    if data is None:
        return _accept("recomputation matches; no validation data of this schema, score not checked")
    if data.d != spec.n_features:
        return _accept("recomputation matches; validation data has another schema, score not checked")
    before = evaluate(model, base, data)
    after = evaluate(model, new_model, data)
    margin = policy.validation_margin
    if after.accuracy < before.accuracy - margin:
        return _refuse(
            f"accuracy on validation data drops from {before.accuracy:.3f} to "
            f"{after.accuracy:.3f} (more than the allowed {margin:.3f})",
            after.accuracy,
        )
    return _accept(f"recomputation matches; validation accuracy {after.accuracy:.3f}", after.accuracy)
