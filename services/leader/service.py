"""The leader: drives rounds, aggregates bucket sums, asks the committee, commits to the ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hfl.control import apply, reason_of
from hfl.domain import (
    BucketEvaluation,
    Metrics,
    ModelSpec,
    NodeInfo,
    RoundConfig,
    RoundEvent,
    SpecialtyResult,
    TrainingPlan,
)
from hfl.errors import HflError, NotReady
from hfl.learning.metrics import clinical_metrics, specialty_results
from hfl.ledger import Block, LedgerError, LedgerStore, Vote
from hfl.oplog import OperatorLog
from hfl.proto.v1 import (
    authority_pb2,
    authority_pb2_grpc,
    fog_pb2,
    fog_pb2_grpc,
    leader_pb2,
    leader_pb2_grpc,
    validator_pb2,
    validator_pb2_grpc,
)
from hfl.proto.v1 import common_pb2 as pb
from hfl.repeats import Repeats
from hfl.round.leader import (
    AskCommittee,
    Command,
    Commit,
    Evaluate,
    Finish,
    LeaderPolicy,
    LeaderRound,
    RefusedInput,
    Report,
    RunFogs,
    next_attempt,
    retry_pause,
)
from hfl.rpc import authz, serde
from hfl.rpc.client import ByteCount, call, describe_rpc_error
from hfl.rpc.metrics import (
    COMMITS,
    FLAGGED_BUCKETS,
    LAST_COMMIT,
    MODEL_ACCURACY,
    MODEL_AUC,
    MODEL_LOSS,
    NORM_BOUND,
    ROUND,
    ROUND_DURATION,
    ROUND_INTERVAL,
    SECAGG_DROPOUTS,
    SPECIALTY_ACCURACY,
    SPECIALTY_AUC,
)
from hfl.rpc.server import Channels
from hfl.rpc.settings import LeaderSettings
from hfl.rpc.tls import AUTHORITY, Peer
from hfl.secagg import QuantConfig
from services.leader.rounds import RoundClock, checked_evaluations, fog_request, fog_views, publish_topology

log = logging.getLogger("hfl.leader")

FOG_CHECK_S = 5.0  # how long a fog without buckets has to answer the leader's health check


@dataclass
class Traffic:
    """One attempt's bytes: the leader's own (``own``) and fog <-> facility, as the fogs report it."""

    own: ByteCount = field(default_factory=ByteCount)
    fac: ByteCount = field(default_factory=ByteCount)


class Leader(leader_pb2_grpc.LeaderServiceServicer):
    """Wiring for the leader: it asks the authority for each round's configuration, performs what the
    round machine (hfl/round/leader.py) asks for (gRPC calls to fogs, validators and the authority, the
    ledger store) and feeds back what happened; timing (RoundClock) and metrics stay here."""

    def __init__(
        self,
        settings: LeaderSettings,
        channels: Channels,
        store: LedgerStore,
        spec: ModelSpec,
        plan: TrainingPlan,
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.store = store
        self.spec = spec
        self.plan = plan
        head = store.head()
        if head is None:
            raise RuntimeError("the ledger has no genesis block")
        self.model = store.model(head.header.model_hash)
        self.authority_key = b""
        self.events: list[RoundEvent] = []
        self.changed = asyncio.Condition()
        self.state = "starting"
        self.finished = False
        self.last_metrics = Metrics()
        self.bucket_configs: list[pb.RoundConfig] = []
        self.clock = RoundClock()
        self.epsilon_spent = float("nan")  # largest privacy loss of any facility, from the authority
        self.end_detail = "all planned rounds are done"  # said by the last WatchRounds event
        self.oplog = OperatorLog(settings.state_dir / "operator.db")  # controls and who used them
        self.waiting = Repeats(log)  # "not ready yet" is said once per reason, not every second

    @property
    def policy(self) -> LeaderPolicy:
        """How this leader aggregates (HFL_RULE, HFL_F, the plan's norm bound, HFL_DEFENCES,
        HFL_ADAPTIVE_BOUND)."""
        s = self.settings
        return LeaderPolicy(
            rule=s.rule,
            f=s.f,
            clip_update=float(self.plan.clip_update),
            defences=s.defences,
            adaptive_bound=s.adaptive_bound,
        )

    @property
    def adaptive_bound(self) -> bool:
        """Each round's norm bound follows the committed history (HFL_ADAPTIVE_BOUND, defences on)."""
        return self.policy.adaptive

    def authority(self) -> authority_pb2_grpc.AuthorityServiceStub:
        return authority_pb2_grpc.AuthorityServiceStub(self.channels.get(self.settings.authority, AUTHORITY))

    # ------------------------------------------------------------------ the round loop
    async def run(self, stop: asyncio.Event) -> None:
        attempt: int | None = 0
        try:
            while attempt is not None and not stop.is_set():
                attempt = await self.step(attempt)
        finally:
            self.finished = True
            self.state = f"finished: {self.end_detail}"
            await self.publish(
                RoundEvent(
                    round=self.store.head().header.round,  # type: ignore[union-attr]
                    committed=False,
                    done=True,
                    detail=self.end_detail,
                )
            )

    async def step(self, attempt: int) -> int | None:
        """One pass of the round loop: the attempt number to go on with, or None when training is over."""
        head = self.store.head()
        assert head is not None
        control = self.oplog.control()
        last = control.last_round(self.settings.rounds)
        if last and head.header.round >= last:
            if last != self.settings.rounds:
                self.end_detail = f"stopped after round {head.header.round} by the operator"
            return None
        if control.paused:
            self.state = f"paused by the operator: {control.pause_reason}"
            await asyncio.sleep(0.5)
            return attempt
        try:
            config = await self.round_config(head, attempt)
        except grpc.aio.AioRpcError as e:
            return await self.not_ready(head.header.round + 1, attempt, e)
        self.state = f"running round {config.round}"
        try:
            event = await self.run_round(config, head)
        except Exception as e:  # a bad round must not stop the federation
            log.exception("round %d failed", config.round)
            event = RoundEvent(round=config.round, committed=False, detail=f"round failed: {e}")
            await asyncio.sleep(1.0)
        attempt = next_attempt(attempt, event.committed)
        await self.publish(event)
        interval = self.oplog.control().interval(self.settings.round_interval)
        ROUND_INTERVAL.set(interval)
        pause = max(interval, retry_pause(attempt))
        # Between rounds the state says what happened, not "running round N" (which `hfl status` would
        # show next to "N rounds committed" for the whole pause).
        outcome = "committed" if event.committed else "not committed"
        again = "next round" if event.committed else "tried again"
        self.state = f"round {config.round} {outcome}; {again} in {pause:.3g} s"
        if pause > 0:
            await asyncio.sleep(pause)
        return attempt

    async def round_config(self, head: Block, attempt: int) -> RoundConfig:
        """The authority's signed configuration for the round after ``head`` (checked), with the
        per-bucket views forwarded to the fogs; starts this attempt's RoundClock."""
        t_config = time.monotonic()
        request = authority_pb2.GetRoundConfigRequest(
            round=head.header.round + 1, attempt=attempt, ledger_head=head.hash
        )
        resp = await call(self.authority().GetRoundConfig, request, peer="authority", timeout=30)
        config = serde.config_from_proto(resp.config)
        config.verify(self.authority_key)
        self.bucket_configs = list(resp.bucket_configs)  # forwarded to the fogs (rounds.py)
        self.clock = RoundClock(
            config_s=time.monotonic() - t_config,
            config_bytes_in=resp.ByteSize(),
            config_bytes_out=request.ByteSize(),
        )
        return config

    async def not_ready(self, round_: int, attempt: int, e: grpc.aio.AioRpcError) -> int | None:
        """The authority has no configuration for ``round_``: wait and ask again, or end training."""
        if e.code() == grpc.StatusCode.OUT_OF_RANGE and self.settings.rounds:
            # Every facility has spent its privacy budget: no later round can train, so a federation
            # with a planned number of rounds ends here instead of waiting forever.
            self.end_detail = f"training ended after round {round_ - 1}: {e.details()}"
            log.warning("%s", self.end_detail)
            return None
        self.state = f"waiting: {e.details()}"
        self.waiting.say(logging.INFO, f"round {round_}: not ready yet ({e.details()})")
        await asyncio.sleep(1.0)
        return attempt

    async def publish(self, event: RoundEvent) -> None:
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    async def run_round(self, config: RoundConfig, head: Block) -> RoundEvent:
        """One attempt: perform the round machine's commands until it finishes."""
        t0 = time.monotonic()
        traffic = Traffic()
        self.clock.lap("prepare")  # the clock was made fresh for this attempt by round_config()
        machine = LeaderRound(config, head, self.model, self.policy)
        cmd: Command = machine.start()
        while not isinstance(cmd, Finish):
            cmd = await self.perform(machine, cmd, traffic)
        return self._finish(t0, traffic, cmd.event)

    async def perform(self, machine: LeaderRound, cmd: Command, traffic: Traffic) -> Command:
        """Carry out one command of the round machine; returns the machine's next command."""
        if isinstance(cmd, RunFogs):
            return await self.run_fogs(machine, cmd, traffic)
        if isinstance(cmd, AskCommittee):
            return await self.ask_committee(machine, cmd, traffic.own)
        if isinstance(cmd, Commit):
            return await self.commit(machine, cmd)
        if isinstance(cmd, Evaluate):
            return await self.evaluate_model(machine, traffic.own)
        if isinstance(cmd, Report):
            return await self.report(machine, cmd)
        raise TypeError(f"the leader cannot perform {cmd!r}")

    def _finish(self, t0: float, traffic: Traffic, event: RoundEvent) -> RoundEvent:
        self.clock.lap("report")
        duration = time.monotonic() - t0
        ROUND_DURATION.observe(duration)
        counter, fac = traffic.own, traffic.fac
        return replace(
            event,
            duration_s=duration,
            bytes_sent=counter.sent + counter.received + fac.sent + fac.received,
            cost=self.clock.cost(counter, fac),
            epsilon=self.epsilon_spent,
        )

    # ------------------------------------------------------------------ the fogs
    async def run_fogs(self, machine: LeaderRound, cmd: RunFogs, traffic: Traffic) -> AskCommittee | Report:
        """Every fog with buckets runs the round (the others are health-checked), then the proposal."""
        config = machine.config
        NORM_BOUND.set(cmd.clip)  # facilities clip their update to it; the block records it
        if self.adaptive_bound:
            log.info(
                "round %d: norm bound C = %.4g (adaptive, at most %g)",
                config.round,
                cmd.clip,
                self.plan.clip_update,
            )
        plan = replace(self.plan, clip_update=cmd.clip)
        request = fog_pb2.RunRoundRequest(
            config=serde.config_to_proto(config),
            model=serde.model_to_proto(self.spec, self.model, config.round),
            plan=serde.plan_to_proto(plan),
        )
        publish_topology(config)
        idle = [f for f in config.fogs if f.node_id in cmd.idle]
        quant = serde.bucket_quant_configs(plan, config.buckets)  # to read the fogs' secure sums
        await asyncio.gather(
            *(self.run_fog(machine, request, f, traffic, quant) for f in cmd.fogs),
            *(self.check_fog(machine, f) for f in idle),
        )
        self.clock.fogs_done()
        SECAGG_DROPOUTS.inc(machine.dropouts)
        proposal = machine.close_fogs()
        if isinstance(proposal, AskCommittee):
            FLAGGED_BUCKETS.inc(len(proposal.flags))
            self.clock.lap("robust_aggregation")
        else:  # no usable bucket: the attempt ends here; say so, as a refused vote does
            log.warning("round %d: not committed: %s", config.round, machine.detail)
        return proposal

    async def run_fog(
        self,
        machine: LeaderRound,
        request: fog_pb2.RunRoundRequest,
        fog_id: str,
        traffic: Traffic,
        quant: dict[str, QuantConfig],
    ) -> None:
        round_, node = machine.config.round, machine.config.node(fog_id)
        stub = fog_pb2_grpc.FogServiceStub(self.channels.get(node.address, Peer("fog", node.node_id)))
        started = time.monotonic()
        try:
            resp = await call(
                stub.RunRound,
                fog_request(request, self.bucket_configs, fog_id),
                peer="fog",
                timeout=self.plan.timeout_s + 60,
                counter=traffic.own,
            )
        except grpc.aio.AioRpcError as e:
            log.warning("round %d: fog %s failed: %s", round_, fog_id, describe_rpc_error(e))
            # UNAVAILABLE: it could not be reached, it is down (the authority is told)
            machine.fog_failed(fog_id, unreachable=e.code() == grpc.StatusCode.UNAVAILABLE)
            return
        machine.fog_answered(fog_id)
        traffic.fac.add("facility", int(resp.bytes_to_facilities), int(resp.bytes_from_facilities))
        self.clock.fog_answered(fog_id, started, resp.phases_s, int(resp.bytes_from_facilities))
        for b in resp.buckets:
            try:
                result = serde.bucket_result_from_proto(b, expected_length=self.model.size, quant=quant)
                machine.add_bucket(fog_id, result)
            except ValueError as e:
                log.warning("round %d: fog %s sent a malformed bucket: %s", round_, fog_id, e)
            except RefusedInput as e:
                log.warning("round %d: %s", round_, e)

    async def check_fog(self, machine: LeaderRound, fog: NodeInfo) -> None:
        """Ask a fog that has no bucket this round whether it is serving (the standard health check), so
        the authority learns when a fog that was down is back."""
        stub = health_pb2_grpc.HealthStub(self.channels.get(fog.address, Peer("fog", fog.node_id)))
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=FOG_CHECK_S)
            serving = answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError as e:
            log.info("round %d: fog %s does not answer: %s", machine.config.round, fog.node_id, e.code().name)
            serving = False
        machine.fog_checked(fog.node_id, serving)

    # ------------------------------------------------------------------ the committee
    async def ask_committee(
        self, machine: LeaderRound, cmd: AskCommittee, counter: ByteCount
    ) -> Commit | Report:
        """Every committee member votes on the proposal; then commit or report the refusal."""
        config, head = machine.config, machine.head
        request = validator_pb2.VoteRequest(
            config=serde.config_to_proto(config),
            base_model=serde.model_to_proto(self.spec, self.model, head.round),
            buckets=[serde.bucket_result_to_proto(r) for r in cmd.buckets],
            rule=cmd.header.rule,
            rule_params=serde.rule_params_to_proto(cmd.header.rule_params),
            prev_block=serde.block_to_proto(head),
            extra=serde.extra_to_proto(cmd.header.extra),
            block_hash=cmd.block_hash,
        )
        members = config.committee
        answers = await asyncio.gather(
            *(self.ask_validator(request, config.round, m, counter) for m in members)
        )
        for m, vote in zip(members, answers, strict=True):
            try:
                if vote is not None:
                    machine.add_vote(m.node_id, vote)
            except RefusedInput as e:
                log.warning("round %d: %s", config.round, e)
        self.clock.lap("committee")
        decision = machine.close_votes()
        if isinstance(decision, Report):
            log.warning("round %d: not committed: %s", config.round, machine.detail)
            COMMITS.labels(outcome="rejected").inc()
        return decision

    async def ask_validator(
        self, request: validator_pb2.VoteRequest, round_: int, member: NodeInfo, counter: ByteCount
    ) -> Vote | None:
        node_id = member.node_id
        stub = validator_pb2_grpc.ValidatorServiceStub(
            self.channels.get(member.address, Peer("validator", node_id))
        )
        try:
            resp = await call(
                stub.Vote, request, peer="validator", timeout=self.settings.vote_timeout, counter=counter
            )
            return serde.vote_from_proto(resp)
        except grpc.aio.AioRpcError as e:
            log.warning("round %d: validator %s did not vote: %s", round_, node_id, describe_rpc_error(e))
        except ValueError as e:
            log.warning("round %d: validator %s sent a malformed vote: %s", round_, node_id, e)
        return None

    # ------------------------------------------------------------------ commit, evaluate, report
    async def commit(self, machine: LeaderRound, cmd: Commit) -> Evaluate:
        await asyncio.to_thread(self.store.append, cmd.block, cmd.model, cmd.sums)
        self.clock.lap("commit")
        self.model = cmd.model
        ROUND.set(cmd.block.round)
        COMMITS.labels(outcome="committed").inc()
        LAST_COMMIT.set_to_current_time()
        return machine.committed()

    async def evaluate_model(self, machine: LeaderRound, counter: ByteCount) -> Report:
        metrics, specialties = await self.evaluate(machine.config, counter)
        self.clock.lap("evaluate")
        self.last_metrics = metrics
        MODEL_ACCURACY.set(metrics.accuracy)
        MODEL_LOSS.set(metrics.loss)
        clinical = clinical_metrics(metrics)
        if clinical is not None:
            MODEL_AUC.set(clinical.auc)
        for r in specialties:
            if not r.not_reported:
                SPECIALTY_ACCURACY.labels(specialty=r.specialty).set(r.accuracy)
                SPECIALTY_AUC.labels(specialty=r.specialty).set(
                    r.clinical.auc if r.clinical else float("nan")
                )
        log.info(
            "round %d committed: accuracy %.3f on the facilities' test patients (%d of them)",
            machine.config.round,
            metrics.accuracy,
            metrics.total,
        )
        self.waiting.clear()
        return machine.evaluated(metrics, specialties)

    async def evaluate(
        self, config: RoundConfig, counter: ByteCount
    ) -> tuple[Metrics, tuple[SpecialtyResult, ...]]:
        """The committed model's test results: each fog returns one sum per evaluation bucket (masked
        like the updates when the round uses secure aggregation); pooled and per specialty here."""
        request = fog_pb2.EvaluateRequest(
            model=serde.model_to_proto(self.spec, self.model, config.round),
            config=serde.config_to_proto(config),
            plan=serde.plan_to_proto(self.plan),
        )

        async def one(fog_id: str) -> list[BucketEvaluation]:
            stub = fog_pb2_grpc.FogServiceStub(
                self.channels.get(config.node(fog_id).address, Peer("fog", fog_id))
            )
            req = fog_pb2.EvaluateRequest()
            req.CopyFrom(request)
            req.bucket_configs.extend(fog_views(self.bucket_configs, fog_id, evaluation=True))
            try:
                resp = await call(stub.Evaluate, req, peer="fog", timeout=120, counter=counter)
            except grpc.aio.AioRpcError as e:
                log.warning("evaluation through fog %s failed: %s", fog_id, describe_rpc_error(e))
                return []
            return checked_evaluations(config, fog_id, resp.buckets)

        parts = await asyncio.gather(*(one(f) for f in sorted({b.fog_id for b in config.eval_buckets})))
        evaluations = [e for part in parts for e in part]
        for e in evaluations:
            if e.problem:
                log.warning(
                    "round %d: evaluation bucket %s gave no result: %s", config.round, e.bucket_id, e.problem
                )
        return specialty_results(evaluations, {n.node_id: n.specialty for n in config.facilities})

    async def report(self, machine: LeaderRound, cmd: Report) -> Finish:
        """Tell the authority how the attempt went; its answer is the quarantine list (and the largest
        privacy loss so far)."""
        config = machine.config
        request = authority_pb2.ReportRoundRequest(
            round=config.round,
            attempt=config.attempt,
            committed=cmd.block is not None,
            block_hash=cmd.block.hash if cmd.block else b"",
            flagged_buckets=list(cmd.flagged),
            report=serde.round_report_to_proto(cmd.report),
        )
        try:
            resp = await call(self.authority().ReportRound, request, peer="authority", timeout=30)
        except grpc.aio.AioRpcError as e:
            log.warning("could not report round %d to the authority: %s", config.round, describe_rpc_error(e))
            return machine.reported(())
        if resp.has_privacy_spend:
            self.epsilon_spent = float(resp.max_epsilon_spent)
        return machine.reported(tuple(resp.quarantined))

    # ------------------------------------------------------------------ RPCs
    async def GetStatus(
        self, request: leader_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.GetStatusResponse:
        head = self.store.head()
        if head is None:
            raise NotReady("the ledger is not initialised yet")
        return leader_pb2.GetStatusResponse(
            committed_round=head.header.round,
            head_hash=head.hash,
            target_rounds=self.settings.rounds,
            finished=self.finished,
            state=self.state,
            control=serde.training_control_to_proto(self.oplog.control()),
        )

    async def ControlTraining(
        self, request: leader_pb2.ControlTrainingRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.ControlTrainingResponse:
        """Operator only (hfl/rpc/authz.py): pause, resume, stop after a round, change the interval."""
        action = serde.control_action_from_proto(request.action)
        head = self.store.head()
        assert head is not None
        before = self.oplog.control()
        after = apply(
            before,
            action,
            request.reason,
            committed_round=head.header.round,
            round_=int(request.round),
            seconds=float(request.seconds),
            planned=self.settings.rounds,
            ended=self.end_detail if self.finished else "",
        )
        self.oplog.set_control(after)
        target = {"stop_after": str(request.round), "round_interval": f"{request.seconds:g} s"}.get(
            action, ""
        )
        self.oplog.record(authz.caller_id() or "operator", action, target, reason_of(request.reason), "done")
        log.warning("training control by the operator: %s %s (%s)", action, target, reason_of(request.reason))
        return leader_pb2.ControlTrainingResponse(control=serde.training_control_to_proto(after))

    async def ListOperatorActions(
        self, request: pb.ListOperatorActionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOperatorActionsResponse:
        """Operator only: the training controls used, oldest first."""
        return pb.ListOperatorActionsResponse(
            actions=[serde.operator_action_to_proto(a) for a in self.oplog.actions()]
        )

    async def GetModel(
        self, request: leader_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> leader_pb2.GetModelResponse:
        head = self.store.head()
        round_ = head.header.round if head else 0
        return leader_pb2.GetModelResponse(model=serde.model_to_proto(self.spec, self.model, round_))

    async def GetLedger(
        self, request: leader_pb2.GetLedgerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[leader_pb2.LedgerBlock]:
        """Every stored block up to the head at the time of the call, as stored: the caller verifies."""
        rounds = await asyncio.to_thread(self.store.rounds)
        if not rounds:
            raise NotReady("the ledger is not initialised yet")
        for r in rounds:
            try:
                record = await asyncio.to_thread(self.store.record, r)
            except LedgerError as e:
                log.warning("GetLedger: block %d cannot be read: %s", r, e)
                raise HflError(f"the leader cannot read block {r} of its ledger: {e}") from None
            yield serde.ledger_block_to_proto(record)

    async def WatchRounds(
        self, request: leader_pb2.WatchRoundsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[leader_pb2.WatchRoundsResponse]:
        index = 0
        while True:
            async with self.changed:
                if request.replay_only and index >= len(self.events):
                    return  # the history so far, without waiting for the next round
                while index >= len(self.events):
                    await self.changed.wait()
                batch = self.events[index:]
                index = len(self.events)
            for event in batch:
                if event.round > request.after_round or event.done:
                    yield serde.event_to_proto(event)
                if event.done:
                    return
