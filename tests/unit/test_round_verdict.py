"""The validator's verdict (hfl/round/verdict.py) in memory: an honest proposal is accepted, and each
reason to refuse is refused with a reason that names it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hfl.domain import BucketResult, ModelSpec, RoundConfig
from hfl.errors import InvalidInput, NotAllowed
from hfl.learning.data import load_validation_data
from hfl.learning.models import make_model
from hfl.ledger import Block, CommitteeMember, Vote, genesis_header
from hfl.robust.bound import RECORD_KEY, round_record
from hfl.round.propose import next_header
from hfl.round.verdict import Policy, Proposal, Verdict, check_proposal
from tests.unit.round_fixtures import VALIDATORS
from tests.unit.round_fixtures import signed_config as _config

SPEC = ModelSpec("logreg", 32)
RULE_PARAMS: dict[str, object] = {"f": 1, "clip_update": 3.0}
POLICY = Policy(rule="trimmed_mean", norm_ceiling=3.0)
DATA = load_validation_data("synthetic", seed=0, index=1)




def _inputs(
    sums: np.ndarray | None = None, rule_params: dict[str, object] | None = None, hide_flags: bool = False
) -> tuple[Proposal, RoundConfig, Block, np.ndarray]:
    """An honest leader's proposal for round 1 (after genesis), its configuration, genesis and its model.
    ``hide_flags``: the leader records the norm-bound history as if no bucket had been flagged."""
    base = make_model(SPEC.kind, SPEC.n_features).init_params(0)
    prev = Block(genesis_header(base))
    config = _config()
    sums = np.random.default_rng(5).normal(0, 0.05, size=(4, base.size)) if sums is None else sums
    counts = [3, 3, 3, 3]
    params = RULE_PARAMS if rule_params is None else rule_params
    extra = {"buckets": [b.bucket_id for b in config.buckets]}
    header, _ = next_header(
        prev,
        base,
        sums,
        counts,
        rule="trimmed_mean",
        rule_params=params,
        committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
        config_hash=config.hash(),
        quorum=3,
        extra=extra,
    )
    flagged = [] if hide_flags else header.flagged
    record = round_record(prev.header.extra, sums, counts, flagged, ceiling=3.0)
    header = replace(header, extra={**header.extra, RECORD_KEY: record})
    results = tuple(BucketResult(f"b{i}", "fog-1", sums[i], 3, config.buckets[i].members) for i in range(4))
    proposal = Proposal(header.hash(), "trimmed_mean", params, header.extra, results)
    return proposal, config, prev, base


def _verdict(
    proposal: Proposal,
    config: RoundConfig,
    prev: Block,
    base: np.ndarray,
    policy: Policy = POLICY,
    validator: str = "validator-1",
) -> Verdict:
    return check_proposal(
        proposal,
        config=config,
        prev=prev,
        spec=SPEC,
        base=base,
        policy=policy,
        validator_id=validator,
        data=DATA,
    )


def test_honest_proposal_is_accepted_with_its_score() -> None:
    v = _verdict(*_inputs())
    assert v.accept
    assert v.score is not None and 0.0 <= v.score <= 1.0
    assert v.reasons == (f"recomputation matches; validation accuracy {v.score:.3f}",)


def test_wrong_block_hash_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(replace(proposal, block_hash=bytes(32)), config, prev, base)
    assert not v.accept
    assert "recomputed block differs from the proposal" in v.reason


def test_tampered_bucket_sum_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    buckets = list(proposal.buckets)
    buckets[2] = replace(buckets[2], total=buckets[2].total + 0.5)
    v = _verdict(replace(proposal, buckets=tuple(buckets)), config, prev, base)
    assert not v.accept
    assert "recomputed block differs" in v.reason


def test_wrong_base_model_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(proposal, config, prev, base + 0.1)  # another model than the certified one
    assert not v.accept
    assert "previous model is not the one recorded in block 0" in v.reason
    with pytest.raises(InvalidInput, match="base model does not fit"):
        _verdict(proposal, config, prev, base[:-1])


def test_previous_block_of_another_round_is_invalid_input() -> None:
    proposal, _config1, prev, base = _inputs()
    with pytest.raises(InvalidInput, match="previous block is round 0, not 1"):
        _verdict(proposal, _config(round_=2), prev, base)


def test_weaker_rule_or_parameters_are_refused() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(replace(proposal, rule="mean"), config, prev, base)
    assert not v.accept and "aggregates with 'mean'" in v.reason and "HFL_RULE" in v.reason
    v = _verdict(replace(proposal, rule_params={**RULE_PARAMS, "f": 0}), config, prev, base)
    assert not v.accept and "f = 0" in v.reason and "HFL_F" in v.reason


def test_norm_bound_not_respected_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(replace(proposal, rule_params={**RULE_PARAMS, "clip_update": 30.0}), config, prev, base)
    assert not v.accept
    assert "norm bound C = 30 differs" in v.reason


def test_wrong_flagged_buckets_are_refused() -> None:
    """One bucket far off is flagged by the rule: a proposal whose recorded history leaves out the flags
    (here: a record computed as if no bucket were flagged) is refused."""
    sums = np.random.default_rng(5).normal(0, 0.05, size=(4, make_model(SPEC.kind, SPEC.n_features).n_params))
    sums[0] += 5.0
    honest = _verdict(*_inputs(sums))
    assert honest.accept or "accuracy" in honest.reason  # the inputs pass; only the flags are at stake
    v = _verdict(*_inputs(sums, hide_flags=True))
    assert not v.accept
    assert "norm-bound history" in v.reason


def test_validator_not_on_the_committee_cannot_vote() -> None:
    proposal, config, prev, base = _inputs()
    with pytest.raises(NotAllowed, match="not on the committee of round 1"):
        _verdict(proposal, config, prev, base, validator="validator-9")


def test_previous_block_without_a_quorum_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    # A round-1 block with a single vote: not certified (the quorum is 3).
    header, _ = next_header(
        prev,
        base,
        np.stack([b.total for b in proposal.buckets]),
        [3, 3, 3, 3],
        rule="trimmed_mean",
        rule_params=RULE_PARAMS,
        committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
        config_hash=config.hash(),
        quorum=3,
        extra={},
    )
    one = Vote.create(VALIDATORS["validator-1"], 1, header.hash(), "validator-1", True)
    v = _verdict(proposal, _config(round_=2), Block(header, (one,)), base)
    assert not v.accept
    assert v.reason.startswith("previous block not certified")


def test_no_bucket_sums_is_refused() -> None:
    proposal, config, prev, base = _inputs()
    gone = tuple(replace(b, abandoned=True) for b in proposal.buckets)
    v = _verdict(replace(proposal, buckets=gone), config, prev, base)
    assert v == Verdict(False, ("no bucket sums to aggregate",), None)


def test_without_defences_the_score_is_not_checked() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(proposal, config, prev, base, policy=replace(POLICY, defences=False))
    assert v.accept and v.score is None
    assert "defences off" in v.reason


def test_validator_without_data_checks_recomputation_only() -> None:
    proposal, config, prev, base = _inputs()
    v = check_proposal(
        proposal,
        config=config,
        prev=prev,
        spec=SPEC,
        base=base,
        policy=POLICY,
        validator_id="validator-1",
        data=None,
    )
    assert v.accept and v.score is None and "no validation data" in v.reason


def test_worse_model_is_refused_with_its_score() -> None:
    proposal, config, prev, base = _inputs()
    v = _verdict(proposal, config, prev, base, policy=replace(POLICY, validation_margin=-1.0))
    assert not v.accept and v.score is not None
    assert "accuracy on validation data drops from" in v.reason
