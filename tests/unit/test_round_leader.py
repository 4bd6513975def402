"""The leader's round as a state machine (hfl/round/leader.py), driven in memory with fake fogs and fake
validators that sign real votes: commits, retried attempts, abandoned buckets, faulty validators and
Byzantine facilities reaching the proposal through the robust rule."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, BucketResult, Metrics, NodeInfo, RoundConfig
from hfl.ledger import Block, Vote, check_quorum, genesis_header, quorum_size
from hfl.robust.attacks import ATTACKS, apply_attack
from hfl.robust.bound import RECORD_KEY, bound_for, round_record
from hfl.round.leader import (
    AskCommittee,
    Commit,
    Evaluate,
    Finish,
    LeaderPolicy,
    LeaderRound,
    LeaderRoundError,
    RefusedInput,
    Report,
    RoundStage,
    RoundStageError,
    RunFogs,
    next_attempt,
    retry_pause,
)
from hfl.round.propose import next_header
from hfl.rpc.settings import VALIDATOR_FAULTS

D = 8
C = 1.0
FOGS = ("fog-1", "fog-2")
BASE = np.zeros(D)
HEAD = Block(genesis_header(BASE))
POLICY = LeaderPolicy(rule="trimmed_mean", f=-1, clip_update=C, defences=True, adaptive_bound=False)


def _keys(n: int) -> dict[str, SigningKey]:
    return {
        f"validator-{i}": SigningKey.from_private_bytes(bytes([7, i]) + bytes(30)) for i in range(1, n + 1)
    }


def _config(n_validators: int = 4, attempt: int = 0, n_buckets: int = 6) -> RoundConfig:
    """Round 1: ``n_buckets`` buckets of 3 facilities, dealt to fog-1 and fog-2 in turn; fog-3 has none."""
    committee = tuple(
        NodeInfo(v, "validator", f"{v}:1", k.public_bytes) for v, k in _keys(n_validators).items()
    )
    buckets = tuple(Bucket(f"b{i}", FOGS[i % 2], (f"h{i}a", f"h{i}b", f"h{i}c"), 3) for i in range(n_buckets))
    fogs = tuple(NodeInfo(f, "fog", f"{f}:1") for f in (*FOGS, "fog-3"))
    return RoundConfig(
        round=1,
        attempt=attempt,
        seed=b"\x01" * 32,
        ledger_head=HEAD.hash,
        epoch=0,
        buckets=buckets,
        committee=committee,
        quorum=quorum_size(n_validators),
        facilities=(),
        fogs=fogs,
    )


def _honest(config: RoundConfig, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Each facility's honest update: small (norm about 0.15, well inside C) and alike."""
    rng = np.random.default_rng(seed)
    return {b.bucket_id: [rng.normal(0.05, 0.02, D) for _ in b.members] for b in config.buckets}


@dataclass
class FakeFog:
    """Sums its buckets' member updates. ``down``: unreachable; ``abandon``: buckets it gives up on."""

    fog_id: str
    updates: dict[str, list[np.ndarray]]
    down: bool = False
    abandon: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # members whose malformed update it refused (left out of the sum)

    def run(self, machine: LeaderRound) -> None:
        if self.down:
            machine.fog_failed(self.fog_id, unreachable=True)
            return
        machine.fog_answered(self.fog_id)
        for b in machine.config.buckets:
            if b.fog_id != self.fog_id:
                continue
            if b.bucket_id in self.abandon:
                result = BucketResult(b.bucket_id, self.fog_id, np.zeros(D), 0, b.members, b.members, True)
            else:
                total = np.sum(self.updates[b.bucket_id], axis=0)
                result = BucketResult(
                    b.bucket_id,
                    self.fog_id,
                    total,
                    len(b.members),
                    b.members,
                    refused=tuple(m for m in b.members if m in self.refused),
                )
            machine.add_bucket(self.fog_id, result)


@dataclass
class FakeValidator:
    """Recomputes the proposal from the inputs it is sent and signs a real vote; or misbehaves as
    hfl.rpc.settings.VALIDATOR_FAULTS says (reject_all, accept_all, silent)."""

    node_id: str
    key: SigningKey
    fault: str = "none"

    def vote(
        self, head: Block, model: np.ndarray, ask: AskCommittee, sent: tuple[BucketResult, ...]
    ) -> Vote | None:
        if self.fault == "silent":
            return None
        header = ask.header
        try:
            mine, new_model = next_header(
                head,
                model,
                np.stack([r.total for r in sent]),
                [r.count for r in sent],
                rule=header.rule,
                rule_params=header.rule_params,
                committee=header.committee,
                config_hash=header.config_hash,
                quorum=header.quorum,
                extra=header.extra,
            )
            accept = mine.hash() == ask.block_hash and bool(np.all(np.isfinite(new_model)))
            reason = "recomputation matches" if accept else "the proposal does not follow from its inputs"
        except ValueError as e:
            accept, reason = False, f"cannot recompute: {e}"
        if self.fault == "reject_all":
            accept, reason = False, "faulty validator: rejects everything"
        elif self.fault == "accept_all":
            accept, reason = True, "faulty validator: accepts everything"
        return Vote.create(self.key, header.round, ask.block_hash, self.node_id, accept, reason)


def _validators(n: int, faults: dict[str, str] | None = None) -> list[FakeValidator]:
    return [FakeValidator(v, k, (faults or {}).get(v, "none")) for v, k in _keys(n).items()]


@dataclass
class Outcome:
    finish: Finish
    report: Report
    proposal: AskCommittee | None
    commit: Commit | None


def _drive(
    machine: LeaderRound,
    fogs: dict[str, FakeFog],
    validators: list[FakeValidator],
    *,
    tamper: bool = False,
) -> Outcome:
    """Perform the machine's commands in memory, as services/leader does over gRPC. ``tamper``: the
    leader sends the validators a changed bucket (what a dishonest leader would do)."""
    start = machine.start()
    assert isinstance(start, RunFogs) and start.clip == machine.clip
    for f in start.fogs:
        fogs[f].run(machine)
    for f in start.idle:
        machine.fog_checked(f, True)
    cmd: AskCommittee | Commit | Report = machine.close_fogs()
    proposal, commit = None, None
    if isinstance(cmd, AskCommittee):
        proposal = cmd
        sent = cmd.buckets
        if tamper:
            sent = (replace(sent[0], total=sent[0].total + 0.5), *sent[1:])
        for v in validators:
            vote = v.vote(machine.head, machine.model, cmd, sent)
            if vote is not None:
                machine.add_vote(v.node_id, vote)
        cmd = machine.close_votes()
        if isinstance(cmd, Commit):
            commit = cmd
            evaluate = machine.committed()
            assert isinstance(evaluate, Evaluate) and evaluate.model is cmd.model
            cmd = machine.evaluated(Metrics(correct=9, total=10, loss_sum=3.0), ())
    assert isinstance(cmd, Report)
    finish = machine.reported(("h0a",) if cmd.flagged else ())
    assert machine.stage is RoundStage.DONE
    return Outcome(finish, cmd, proposal, commit)


def _fogs(updates: dict[str, list[np.ndarray]], **kw: Any) -> dict[str, FakeFog]:
    """fog-1 and fog-2 over ``updates``; ``kw``: fog id -> FakeFog settings (down, abandon)."""
    return {f: FakeFog(f, updates, **kw.get(f, {})) for f in FOGS}


def _round(config: RoundConfig, policy: LeaderPolicy = POLICY) -> LeaderRound:
    return LeaderRound(config, HEAD, BASE, policy)


# ------------------------------------------------------------------------------------------ a round


def test_a_full_round_commits_a_certified_block() -> None:
    config = _config()
    fogs = _fogs(_honest(config), **{"fog-1": {"refused": ("h2b",)}})
    out = _drive(_round(config), fogs, _validators(4))
    event = out.finish.event
    assert event.committed and not out.finish.retry and event.detail == "committed"
    assert out.report.report.refused == ("h2b",)
    assert out.commit is not None and out.report.block is out.commit.block
    block = out.commit.block
    check_quorum(block.header, block.votes)  # a real quorum certificate
    assert len(block.votes) == 4 and block.header.round == 1 and block.header.prev_hash == HEAD.hash
    assert block.header.extra["buckets"] == [f"b{i}" for i in range(6)]
    assert event.block_hash == block.hash and (event.accepts, event.rejects) == (4, 0)
    assert event.participants == 18 and event.accuracy == pytest.approx(0.9)
    assert np.allclose(out.commit.sums, [np.sum(u, axis=0) for u in _honest(config).values()])
    assert np.linalg.norm(out.commit.model - BASE) <= C
    assert out.report.report.fogs_up == ("fog-1", "fog-2", "fog-3") and not out.report.report.fogs_down
    assert out.report.report.votes == tuple((v, True) for v in _keys(4))
    assert next_attempt(config.attempt, event.committed) == 0


def test_the_ledger_head_must_be_the_rounds_predecessor() -> None:
    with pytest.raises(LeaderRoundError, match="ledger head"):
        LeaderRound(replace(_config(), round=2), HEAD, BASE, POLICY)


def test_events_out_of_order_are_refused() -> None:
    config = _config()
    machine = _round(config)
    with pytest.raises(RoundStageError):
        machine.close_votes()
    machine.start()
    _fogs(_honest(config))["fog-1"].run(machine)
    with pytest.raises(RoundStageError):
        machine.committed()
    machine.close_fogs()
    with pytest.raises(RoundStageError):
        machine.fog_answered("fog-2")  # too late: the proposal is made


def test_a_bucket_from_the_wrong_fog_and_a_repeated_bucket_are_refused() -> None:
    config = _config()
    machine = _round(config)
    machine.start()
    b0 = config.buckets[0]  # run by fog-1
    result = BucketResult(b0.bucket_id, "fog-1", np.ones(D) * 0.1, 3, b0.members)
    with pytest.raises(RefusedInput, match="does not run"):
        machine.add_bucket("fog-2", replace(result, fog_id="fog-2"))
    machine.add_bucket("fog-1", result)
    with pytest.raises(RefusedInput, match="twice"):
        machine.add_bucket("fog-1", result)
    assert [r.bucket_id for r in machine.results] == ["b0"]


def test_votes_signed_as_someone_else_or_repeated_are_refused() -> None:
    config = _config()
    machine = _round(config)
    machine.start()
    for fog in _fogs(_honest(config)).values():
        fog.run(machine)
    ask = machine.close_fogs()
    assert isinstance(ask, AskCommittee)
    v1, v2, *_ = _validators(4)
    vote = v1.vote(HEAD, BASE, ask, ask.buckets)
    assert vote is not None and vote.accept
    with pytest.raises(RefusedInput, match="signed as"):
        machine.add_vote(v2.node_id, vote)
    machine.add_vote(v1.node_id, vote)
    with pytest.raises(RefusedInput, match="twice"):
        machine.add_vote(v1.node_id, vote)
    outsider = FakeValidator("validator-9", SigningKey.generate())
    foreign = outsider.vote(HEAD, BASE, ask, ask.buckets)
    assert foreign is not None
    with pytest.raises(RefusedInput, match="not on the committee"):
        machine.add_vote("validator-9", foreign)
    assert machine.votes == [vote]


# ------------------------------------------------------------------------------------------ retries


def test_when_every_fog_fails_the_attempt_is_reported_and_retried() -> None:
    config = _config()
    updates = _honest(config)
    down = _fogs(updates, **{f: {"down": True} for f in FOGS})
    out = _drive(_round(config), down, _validators(4))
    assert out.proposal is None and out.commit is None
    assert out.finish.retry and out.finish.event.detail == "no bucket sums arrived"
    assert out.report.report.fogs_down == FOGS and out.report.report.fogs_up == ("fog-3",)
    assert out.report.report.votes == ()  # nothing was proposed: no evidence about votes
    assert all(b.abandoned for b in out.finish.event.buckets)
    attempt = next_attempt(config.attempt, out.finish.event.committed)
    assert attempt == 1 and retry_pause(attempt) > 0
    again = _drive(_round(_config(attempt=attempt)), _fogs(updates), _validators(4))
    assert again.finish.event.committed and again.commit is not None


def test_a_refused_proposal_is_retried_with_a_new_attempt() -> None:
    config = _config()
    updates = _honest(config)
    faulty = {"validator-1": "reject_all", "validator-2": "reject_all"}  # 2 accepts < quorum 3
    out = _drive(_round(config), _fogs(updates), _validators(4, faulty))
    event = out.finish.event
    assert not event.committed and out.finish.retry and out.commit is None
    assert event.detail.startswith("block 1: only 2 valid accepting votes; 3 of 4 needed")
    assert "faulty validator: rejects everything" in event.detail
    assert (event.accepts, event.rejects) == (2, 2)
    assert out.report.block is None and out.report.report.votes[0] == ("validator-1", False)
    again = _drive(_round(_config(attempt=next_attempt(0, False))), _fogs(updates), _validators(4))
    assert again.finish.event.committed


def test_a_fog_that_fails_leaves_its_buckets_out_and_the_round_goes_on() -> None:
    config = _config()
    fogs = _fogs(_honest(config), **{"fog-2": {"down": True}})
    out = _drive(_round(config), fogs, _validators(4))
    assert out.finish.event.committed and out.commit is not None
    assert out.commit.block.header.extra["fogs"] == ["fog-1"] * 3
    assert out.report.report.fogs_down == ("fog-2",)
    assert [b.abandoned for b in out.finish.event.buckets] == [False, True] * 3


def test_an_abandoned_bucket_is_left_out_of_the_proposal() -> None:
    config = _config()
    fogs = _fogs(_honest(config), **{"fog-2": {"abandon": ("b3",)}})
    out = _drive(_round(config), fogs, _validators(4))
    event = out.finish.event
    assert event.committed and event.abandoned_buckets == 1 and event.participants == 15
    assert out.commit is not None and "b3" not in out.commit.block.header.extra["buckets"]
    assert len(out.commit.block.header.bucket_hashes) == 5
    assert [b.bucket_id for b in event.buckets if b.abandoned] == ["b3"]
    assert event.dropouts == 3


# --------------------------------------------------------------------------------- faulty validators


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("fault", [f for f in VALIDATOR_FAULTS if f != "none"])
@pytest.mark.parametrize("tamper", [False, True], ids=["honest-leader", "tampered-inputs"])
def test_one_faulty_validator_cannot_block_or_force_a_round(n: int, fault: str, tamper: bool) -> None:
    """1 faulty of 4 and of 7: an honest proposal still commits; a proposal whose inputs do not give
    its header is refused by the honest majority even when the faulty one accepts everything."""
    config = _config(n)
    out = _drive(
        _round(config), _fogs(_honest(config)), _validators(n, {"validator-2": fault}), tamper=tamper
    )
    event = out.finish.event
    assert event.committed is not tamper
    honest_accepts = 0 if tamper else n - 1
    assert event.accepts == honest_accepts + (fault == "accept_all")
    records = {r.validator: r for r in event.votes}
    assert records["validator-2"].answered is (fault != "silent")
    if tamper:
        assert out.commit is None and out.finish.retry
    else:
        assert out.commit is not None
        check_quorum(out.commit.block.header, out.commit.block.votes)
        assert len(out.commit.block.votes) >= quorum_size(n)
        assert all(v.accept for v in out.commit.block.votes)


# -------------------------------------------------------------------------------- Byzantine facilities

# Where today's rule (trimmed mean with the norm bound and the outlier screen) flags the attacked
# bucket, with these updates: the blunt and the loud attacks are flagged; label flipping (the update
# itself is honest), ALIE (built to look average) and free riding (zeros) are not.
FLAGGED = {"sign_flip", "scale", "gaussian", "ipm", "nan"}


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_reaches_the_proposal_through_the_rule(attack: str) -> None:
    config = _config()
    updates = _honest(config)
    peers = np.array([u for us in updates.values() for u in us])
    updates["b0"][0] = apply_attack(attack, updates["b0"][0], rng=np.random.default_rng(1), peers=peers)
    out = _drive(_round(config), _fogs(updates), _validators(4))
    assert out.proposal is not None and out.commit is not None and out.finish.event.committed
    model = out.commit.model
    assert np.all(np.isfinite(model)) and np.linalg.norm(model - BASE) <= C  # the model stays sane
    honest_mean = np.mean([u for us in _honest(config).values() for u in us], axis=0)
    assert np.linalg.norm(model - honest_mean) < 0.05
    flagged = attack in FLAGGED
    assert ("b0" in out.proposal.flags) is flagged
    assert out.finish.event.flagged_buckets == (("b0",) if flagged else ())
    assert out.report.flagged == out.finish.event.flagged_buckets
    assert out.report.report.flags == ({"b0": out.proposal.flags["b0"]} if flagged else {})
    if attack == "nan":
        assert out.proposal.flags["b0"] == "norm"


def test_with_the_defences_off_nobody_is_reported() -> None:
    config = _config()
    updates = _honest(config)
    updates["b0"][0] = updates["b0"][0] * -10
    policy = replace(POLICY, defences=False, rule="mean")
    out = _drive(_round(config, policy), _fogs(updates, **{"fog-1": {"refused": ("h2b",)}}), _validators(4))
    assert out.commit is not None and out.report.report.refused == ()
    assert out.commit.block.header.rule_params == {"f": 0, "clip_update": None, "screen": False}
    assert out.report.report.flags == {} and out.report.flagged == ()


def test_an_adaptive_bound_is_recorded_and_used() -> None:
    config = _config()
    machine = _round(config, replace(POLICY, adaptive_bound=True))
    assert machine.clip <= C
    out = _drive(machine, _fogs(_honest(config)), _validators(4))
    assert out.commit is not None
    header = out.commit.block.header
    assert header.extra[RECORD_KEY] == round_record(
        HEAD.header.extra, out.commit.sums, header.bucket_counts, header.flagged, ceiling=C
    )
    assert header.rule_params["clip_update"] == machine.clip == bound_for(HEAD.header.extra, C)
