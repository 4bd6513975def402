"""A validator recomputes the proposed block from the inputs it is sent and signs only what it checked:
a tampered aggregate, tampered inputs, a forged configuration or a worse model are refused."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature

from hfl.domain import BucketResult, ModelSpec, RoundConfig
from hfl.errors import InvalidInput
from hfl.learning.data import load_validation_data
from hfl.learning.models import make_model
from hfl.ledger import Block, BlockHeader, CommitteeMember, Vote, genesis_header
from hfl.proto.v1 import validator_pb2
from hfl.robust.bound import RECORD_KEY, round_record
from hfl.round.propose import next_header
from hfl.rpc import serde
from hfl.rpc.settings import Settings
from services.validator.faults import FaultyValidator, validator_class
from services.validator.service import Validator
from tests.unit.round_fixtures import AUTHORITY, VALIDATORS
from tests.unit.round_fixtures import signed_config as _config

SPEC = ModelSpec("logreg", 12)
RULE_PARAMS = {"f": 1, "clip_update": 3.0}




def _round_extra(config: RoundConfig) -> dict[str, object]:
    return {
        "buckets": [b.bucket_id for b in config.buckets],
        "fogs": [b.fog_id for b in config.buckets],
        "members": [list(b.members) for b in config.buckets],
        "committee_draw": config.committee_draw,
    }


def _certified(header: BlockHeader) -> Block:
    """``header`` with accepting votes from the whole committee."""
    votes = tuple(
        Vote.create(VALIDATORS[m.node_id], header.round, header.hash(), m.node_id, True)
        for m in header.committee
    )
    return Block(header, votes)


def _proposal(
    tamper: str = "",
    rule: str = "trimmed_mean",
    rule_params: dict[str, object] | None = None,
    *,
    prev: tuple[Block, np.ndarray] | None = None,
    record: dict[str, object] | str | None = "derived",
) -> tuple[validator_pb2.VoteRequest, bytes]:
    """The leader's request for the round after ``prev`` (block and its model; default: genesis). With
    ``record="derived"`` the block records the adaptive norm-bound history as an honest leader does."""
    rule_params = RULE_PARAMS if rule_params is None else rule_params
    if prev is None:
        base = make_model(SPEC.kind, SPEC.n_features).init_params(0)
        prev = (Block(genesis_header(base)), base)
    prev_block, base = prev
    config = _config(prev_block.round + 1)
    rng = np.random.default_rng(5)
    sums = rng.normal(0, 0.05, size=(4, base.size))
    counts = [3, 3, 3, 3]
    committee = [CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee]
    header, _model = next_header(
        prev_block,
        base,
        sums,
        counts,
        rule=rule,
        rule_params=rule_params,
        committee=committee,
        config_hash=config.hash(),
        quorum=3,
        extra=_round_extra(config),
    )
    if record == "derived":
        record = round_record(prev_block.header.extra, sums, counts, header.flagged, ceiling=3.0)
    if record is not None:
        header = replace(header, extra={**header.extra, RECORD_KEY: record})
    sent = sums.copy()
    if tamper == "inputs":
        sent[2] += 0.5  # the leader shows the committee other sums than it aggregated
    results = [BucketResult(f"b{i}", "fog-1", sent[i], 3, (f"f{i}a", f"f{i}b", f"f{i}c")) for i in range(4)]
    block_hash = header.hash()
    if tamper == "aggregate":
        block_hash = bytes(32)  # the leader claims a block (model) the inputs do not give
    request = validator_pb2.VoteRequest(
        config=serde.config_to_proto(config),
        base_model=serde.model_to_proto(SPEC, base, prev_block.round),
        buckets=[serde.bucket_result_to_proto(r) for r in results],
        rule=rule,
        rule_params=serde.rule_params_to_proto(rule_params),
        prev_block=serde.block_to_proto(prev_block),
        extra=serde.extra_to_proto(header.extra),
        block_hash=block_hash,
    )
    return request, header.hash()


def _validator(data: bool = True, fault: str = "none", **settings: object) -> Validator:
    chosen = Settings(role="validator", byzantine=fault, **settings)
    v = validator_class(chosen)(  # as services/validator/main.py picks it
        chosen,
        "validator-1",
        VALIDATORS["validator-1"],
        load_validation_data("synthetic", seed=0, index=1) if data else None,
    )
    v.ready(AUTHORITY.public_bytes)
    return v


def test_honest_proposal_is_accepted_and_signed() -> None:
    request, block_hash = _proposal()
    vote = _validator().check(request)
    assert vote.accept and vote.block_hash == block_hash
    vote.verify(VALIDATORS["validator-1"].public_bytes)


@pytest.mark.parametrize("tamper", ["aggregate", "inputs"])
def test_tampered_proposal_is_refused(tamper: str) -> None:
    request, _ = _proposal(tamper)
    vote = _validator().check(request)
    assert not vote.accept
    assert "differs from the proposal" in vote.reason


def test_forged_round_configuration_is_refused() -> None:
    request, _ = _proposal()
    request.config.quorum = 1  # no longer what the authority signed
    with pytest.raises(InvalidSignature):
        _validator().check(request)


def test_validator_without_data_checks_recomputation_only_and_says_so() -> None:
    request, _ = _proposal()
    vote = _validator(data=False).check(request)
    assert vote.accept and "score not checked" in vote.reason


@pytest.mark.parametrize(("fault", "accept"), [("reject_all", False), ("accept_all", True)])
def test_faulty_validator_modes(fault: str, accept: bool) -> None:
    request, _ = _proposal("" if fault == "reject_all" else "inputs")
    vote = _validator(fault=fault).check(request)
    assert vote.accept is accept


@pytest.mark.parametrize("fault", ["reject_all", "accept_all", "silent"])
def test_faults_live_in_a_subclass_chosen_only_when_set(fault: str) -> None:
    assert validator_class(Settings(role="validator")) is Validator
    assert validator_class(Settings(role="validator", byzantine=fault)) is FaultyValidator


def test_a_silent_validator_never_answers_and_an_honest_one_does() -> None:
    request, _ = _proposal()

    async def answers(v: Validator, within: float) -> bool:
        try:
            await asyncio.wait_for(v.Vote(request, None), within)  # type: ignore[arg-type]
            return True
        except TimeoutError:
            return False

    assert asyncio.run(answers(_validator(), 60.0))
    assert not asyncio.run(answers(_validator(fault="silent"), 1.0))


@pytest.mark.parametrize(
    ("rule", "params", "why"),
    [
        ("mean", {"f": 0, "clip_update": 3.0}, "uses 'trimmed_mean'"),
        ("trimmed_mean", {"f": 0, "clip_update": 3.0}, "f = 1"),
        ("trimmed_mean", {"f": 1, "clip_update": None}, "norm bound off"),
        ("trimmed_mean", {"f": 1, "clip_update": 3.0, "screen": False}, "outlier screen off"),
    ],
)
def test_proposal_that_weakens_the_aggregation_is_refused(
    rule: str, params: dict[str, object], why: str
) -> None:
    """The recomputation would match, but the leader chose a weaker rule than the federation's policy."""
    request, _ = _proposal(rule=rule, rule_params=params)
    vote = _validator().check(request)
    assert not vote.accept
    assert why in vote.reason


def test_without_defences_the_committee_checks_recomputation_only() -> None:
    params = {"f": 0, "clip_update": None, "screen": False}  # what the leader records for mean then
    request, block_hash = _proposal(rule="mean", rule_params=params)
    vote = _validator(rule="mean", defences=False).check(request)
    assert vote.accept and vote.block_hash == block_hash
    assert "defences off" in vote.reason
    tampered, _ = _proposal("aggregate", rule="mean", rule_params=params)
    assert not _validator(rule="mean", defences=False).check(tampered).accept


def test_malformed_aggregation_settings_are_invalid_input() -> None:
    request, _ = _proposal()
    request.rule_params.no_norm_bound = True  # and a bound, both
    with pytest.raises(InvalidInput, match="give a norm bound and say there is none"):
        _validator().check(request)
    request, _ = _proposal()
    request.rule_params.tau = float("inf")
    with pytest.raises(InvalidInput, match="tau must be a finite number"):
        _validator().check(request)
    request, _ = _proposal()
    request.extra.round.buckets.append("b" * 100)
    with pytest.raises(InvalidInput, match="the block's buckets"):
        _validator().check(request)
    request, _ = _proposal()
    request.prev_block.header.prev_hash = b"short"
    with pytest.raises(InvalidInput, match="the block header of round 0 is malformed"):
        _validator().check(request)


# ------------------------------------------------------------------ the adaptive norm bound


def _round_one(medians: list[float]) -> tuple[Block, np.ndarray]:
    """A certified block 1 whose recorded norm-bound history is ``medians``, and its model."""
    base = make_model(SPEC.kind, SPEC.n_features).init_params(0)
    config = _config(1)
    header, model = next_header(
        Block(genesis_header(base)),
        base,
        np.random.default_rng(1).normal(0, 0.05, size=(4, base.size)),
        [3, 3, 3, 3],
        rule="trimmed_mean",
        rule_params=RULE_PARAMS,
        committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
        config_hash=config.hash(),
        quorum=3,
        extra={**_round_extra(config), RECORD_KEY: {"ceiling": 3.0, "medians": medians}},
    )
    return _certified(header), model


def test_first_round_bound_is_the_configured_one() -> None:
    """No history yet: the bound must be HFL_CLIP_UPDATE, not whatever the leader picks."""
    request, _ = _proposal(rule_params={"f": 1, "clip_update": 2.0})
    vote = _validator().check(request)
    assert not vote.accept
    assert "norm bound C = 2 differs from C = 3, which the committed history gives" in vote.reason


def test_bound_follows_the_committed_history() -> None:
    prev = _round_one([0.2])  # block 1 says: honest updates were about 0.2 long, so C_2 = 2 × 0.2
    request, block_hash = _proposal(rule_params={"f": 1, "clip_update": 0.4}, prev=prev)
    vote = _validator().check(request)
    assert vote.accept and vote.block_hash == block_hash, vote.reason


@pytest.mark.parametrize("clip", [3.0, 0.41, 0.2])
def test_block_with_a_wrong_bound_is_refused(clip: float) -> None:
    """The fixed C, a slightly looser or a tighter one: all refused, with the bound that was due."""
    request, _ = _proposal(rule_params={"f": 1, "clip_update": clip}, prev=_round_one([0.2]))
    vote = _validator().check(request)
    assert not vote.accept
    assert f"norm bound C = {clip:g} differs from C = 0.4, which the committed history gives" in vote.reason


def test_block_with_a_forged_or_missing_history_is_refused() -> None:
    prev = _round_one([0.2])
    forged = {"ceiling": 3.0, "medians": [0.2, 2.5]}  # claims this round's updates were long
    request, _ = _proposal(rule_params={"f": 1, "clip_update": 0.4}, prev=prev, record=forged)
    vote = _validator().check(request)
    assert not vote.accept and "norm-bound history differs from the one its bucket sums give" in vote.reason
    request, _ = _proposal(rule_params={"f": 1, "clip_update": 0.4}, prev=prev, record=None)
    vote = _validator().check(request)
    assert not vote.accept and "does not record its adaptive norm bound" in vote.reason


def test_bound_ceiling_must_be_the_federations() -> None:
    request, _ = _proposal()  # recorded with ceiling 3
    vote = _validator(clip_update=5.0).check(request)
    assert not vote.accept and "ceiling 3.0 is not this federation's C = 5" in vote.reason


def test_fixed_bound_when_adaptive_bound_is_off() -> None:
    request, block_hash = _proposal(record=None)
    vote = _validator(adaptive_bound=False).check(request)
    assert vote.accept and vote.block_hash == block_hash
    request, _ = _proposal(rule_params={"f": 1, "clip_update": 2.0}, record=None)
    vote = _validator(adaptive_bound=False).check(request)
    assert not vote.accept and "norm bound C = 2 is not this federation's C = 3" in vote.reason
    request, _ = _proposal()  # records an adaptive history
    vote = _validator(adaptive_bound=False).check(request)
    assert not vote.accept and "uses a fixed one" in vote.reason
