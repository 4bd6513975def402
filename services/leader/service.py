"""The leader: drives rounds, aggregates bucket sums, asks the committee, commits to the ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hfl.control import apply, reason_of
from hfl.domain import (
    BucketEvaluation,
    BucketResult,
    Metrics,
    ModelSpec,
    NodeInfo,
    RoundConfig,
    RoundEvent,
    RoundReport,
    SpecialtyResult,
    TrainingPlan,
)
from hfl.errors import HflError, NotReady
from hfl.learning.metrics import clinical_metrics, specialty_results
from hfl.ledger import Block, BlockHeader, CommitteeMember, LedgerError, LedgerStore, Vote, select_quorum
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
from hfl.robust.bound import RECORD_KEY, bound_for, round_record
from hfl.robust.rules import resolve_f
from hfl.round.propose import propose
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
from hfl.rpc.settings import Settings
from hfl.rpc.tls import AUTHORITY, Peer
from services.leader.rounds import (
    RoundClock,
    bucket_records,
    checked_evaluations,
    fog_request,
    fog_views,
    publish_topology,
    vote_records,
)

log = logging.getLogger("hfl.leader")

FOG_CHECK_S = 5.0  # how long a fog without buckets has to answer the leader's health check
RETRY_PAUSE_MAX_S = 10.0


def retry_pause(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` of a round (0: the round's first attempt, no pause).
    A round that keeps failing (a fog down, too few votes) is tried again after 0.1 s, then twice as
    long each time up to RETRY_PAUSE_MAX_S, so a federation that cannot make progress does not retry
    many times a second (each attempt is numbered, and the privacy ledger numbers at most 1000 attempts
    per round: hfl.bounds.SLOTS_PER_ROUND)."""
    return 0.0 if attempt <= 0 else min(RETRY_PAUSE_MAX_S, 0.1 * 2 ** min(attempt - 1, 10))


class Leader(leader_pb2_grpc.LeaderServiceServicer):
    def __init__(
        self, settings: Settings, channels: Channels, store: LedgerStore, spec: ModelSpec, plan: TrainingPlan
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

    def rule_params(self, n_buckets: int, clip: float | None = None) -> dict[str, object]:
        """Recorded in every block: f (HFL_F, or the most the rule tolerates when HFL_F=-1) and the norm
        bound ``clip`` (default: the plan's), so validators and auditors re-run exactly the same
        aggregation."""
        f = resolve_f(self.settings.f, n_buckets, self.settings.rule)
        if not self.settings.defences:  # comparison runs only: no norm bound, no outlier screen
            return {"f": f, "clip_update": None, "screen": False}
        return {"f": f, "clip_update": float(self.plan.clip_update if clip is None else clip)}

    @property
    def adaptive_bound(self) -> bool:
        """Each round's norm bound follows the committed history (HFL_ADAPTIVE_BOUND, defences on)."""
        return self.settings.adaptive_bound and self.settings.defences

    def norm_bound(self, head: Block) -> float:
        """The round after ``head``: the bound facilities clip to and the block records. Adaptive: from
        the history ``head`` records, at most the configured C (hfl/robust/bound.py); else the plan's C.
        With differential privacy the per-record DP clip (the privacy bound) is untouched: this bound
        only clips the finished update, post-processing that costs no privacy."""
        if not self.adaptive_bound:
            return float(self.plan.clip_update)
        return bound_for(head.header.extra, self.plan.clip_update)

    def authority(self) -> authority_pb2_grpc.AuthorityServiceStub:
        return authority_pb2_grpc.AuthorityServiceStub(self.channels.get(self.settings.authority, AUTHORITY))

    # ------------------------------------------------------------------ the round loop
    async def run(self, stop: asyncio.Event) -> None:
        target = self.settings.rounds
        attempt = 0
        try:
            while not stop.is_set():
                head = self.store.head()
                assert head is not None
                control = self.oplog.control()
                last = control.last_round(target)
                if last and head.header.round >= last:
                    if last != target:
                        self.end_detail = f"stopped after round {head.header.round} by the operator"
                    break
                if control.paused:
                    self.state = f"paused by the operator: {control.pause_reason}"
                    await asyncio.sleep(0.5)
                    continue
                round_ = head.header.round + 1
                try:
                    t_config = time.monotonic()
                    config_request = authority_pb2.GetRoundConfigRequest(
                        round=round_, attempt=attempt, ledger_head=head.hash
                    )
                    resp = await call(
                        self.authority().GetRoundConfig, config_request, peer="authority", timeout=30
                    )
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.OUT_OF_RANGE and target:
                        # Every facility has spent its privacy budget: no later round can train, so a
                        # federation with a planned number of rounds ends here instead of waiting forever.
                        self.end_detail = f"training ended after round {round_ - 1}: {e.details()}"
                        log.warning("%s", self.end_detail)
                        break
                    self.state = f"waiting: {e.details()}"
                    log.info("round %d: not ready yet (%s)", round_, e.details())
                    await asyncio.sleep(1.0)
                    continue
                config = serde.config_from_proto(resp.config)
                config.verify(self.authority_key)
                self.bucket_configs = list(resp.bucket_configs)  # forwarded to the fogs (rounds.py)
                self.clock = RoundClock(
                    config_s=time.monotonic() - t_config,
                    config_bytes_in=resp.ByteSize(),
                    config_bytes_out=config_request.ByteSize(),
                )
                self.state = f"running round {round_}"
                try:
                    event = await self.run_round(config, head)
                except Exception as e:  # a bad round must not stop the federation
                    log.exception("round %d failed", round_)
                    event = RoundEvent(round=round_, committed=False, detail=f"round failed: {e}")
                    await asyncio.sleep(1.0)
                attempt = 0 if event.committed else attempt + 1
                await self.publish(event)
                interval = self.oplog.control().interval(self.settings.round_interval)
                ROUND_INTERVAL.set(interval)
                pause = max(interval, retry_pause(attempt))
                if pause > 0:
                    await asyncio.sleep(pause)
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

    async def publish(self, event: RoundEvent) -> None:
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    async def run_round(self, config: RoundConfig, head: Block) -> RoundEvent:
        t0 = time.monotonic()
        round_ = config.round
        counter = ByteCount()  # the leader's own traffic
        fac = ByteCount()  # fog <-> facility traffic, as the fogs report it
        clock = self.clock  # made fresh for this attempt by run()
        clock.lap("prepare")
        model_msg = serde.model_to_proto(self.spec, self.model, round_)
        clip = self.norm_bound(head)  # facilities clip their update to it; the block records it
        NORM_BOUND.set(clip)
        if self.adaptive_bound:
            log.info(
                "round %d: norm bound C = %.4g (adaptive, at most %g)", round_, clip, self.plan.clip_update
            )
        request = fog_pb2.RunRoundRequest(
            config=serde.config_to_proto(config),
            model=model_msg,
            plan=serde.plan_to_proto(replace(self.plan, clip_update=clip)),
        )
        fog_ids = sorted({b.fog_id for b in config.buckets})
        publish_topology(config)
        reach: dict[str, bool] = {}  # fog -> whether it answered this round (for the authority)

        async def run_fog(fog_id: str) -> list[BucketResult]:
            node = config.node(fog_id)
            stub = fog_pb2_grpc.FogServiceStub(self.channels.get(node.address, Peer("fog", node.node_id)))
            started = time.monotonic()
            try:
                resp = await call(
                    stub.RunRound,
                    fog_request(request, self.bucket_configs, fog_id),
                    peer="fog",
                    timeout=self.plan.timeout_s + 60,
                    counter=counter,
                )
            except grpc.aio.AioRpcError as e:
                log.warning("round %d: fog %s failed: %s", round_, fog_id, describe_rpc_error(e))
                if e.code() == grpc.StatusCode.UNAVAILABLE:  # it could not be reached: it is down
                    reach[fog_id] = False
                return []
            reach[fog_id] = True
            fac.add("facility", int(resp.bytes_to_facilities), int(resp.bytes_from_facilities))
            clock.fog_answered(fog_id, started, resp.phases_s, int(resp.bytes_from_facilities))
            out = []
            runs = {x.bucket_id for x in config.buckets if x.fog_id == fog_id}
            for b in resp.buckets:
                try:
                    r = serde.bucket_result_from_proto(b, expected_length=self.model.size)
                except ValueError as e:
                    log.warning("round %d: fog %s sent a malformed bucket: %s", round_, fog_id, e)
                    continue
                if r.fog_id != fog_id or r.bucket_id not in runs:
                    log.warning("round %d: fog %s answered for a bucket it does not run", round_, fog_id)
                    continue
                out.append(r)
            return out

        answers, _ = await asyncio.gather(
            asyncio.gather(*(run_fog(f) for f in fog_ids)), self.check_idle_fogs(config, reach)
        )
        results = sorted((r for rs in answers for r in rs), key=lambda r: r.bucket_id)
        clock.fogs_done()
        used = [r for r in results if not r.abandoned and r.count > 0]
        dropouts = sum(len(r.dropped) for r in results)
        # For the authority: malformed updates the fogs refused, members that never answered at all.
        refused = {m for r in results for m in r.refused}
        absent = {m for r in results for m in r.unreachable} - refused
        SECAGG_DROPOUTS.inc(dropouts)
        base: dict[str, Any] = dict(
            round=round_,
            participants=sum(r.count for r in used),
            dropouts=dropouts,
            abandoned_buckets=sum(1 for r in results if r.abandoned),
            committee=tuple(m.node_id for m in config.committee),
            buckets=bucket_records(config, results, ()),
        )
        if not used:  # nothing to aggregate or vote on; the authority still learns who never answered
            await self.report(config, None, {}, None, refused, absent, reach)
            return self._finish(
                t0, counter, RoundEvent(committed=False, detail="no bucket sums arrived", **base), fac
            )

        sums = np.stack([r.total for r in used])
        counts = [r.count for r in used]
        extra = {
            "buckets": [r.bucket_id for r in used],
            "fogs": [r.fog_id for r in used],
            "members": [list(r.members) for r in used],
            "committee_draw": config.committee_draw,
        }
        rule_params = self.rule_params(len(used), clip)
        header, new_model, result = propose(
            head,
            self.model,
            sums,
            counts,
            rule=self.settings.rule,
            rule_params=rule_params,
            committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
            config_hash=config.hash(),
            quorum=config.quorum,
            extra=extra,
        )
        if self.adaptive_bound:  # this round's accepted buckets join the history the next bound comes from
            record = round_record(
                head.header.extra, sums, counts, header.flagged, ceiling=self.plan.clip_update
            )
            header = replace(header, extra={**header.extra, RECORD_KEY: record})
        flags = {used[i].bucket_id: kind for i, kind in result.flag_kinds.items()}
        flagged = tuple(sorted(flags))
        FLAGGED_BUCKETS.inc(len(flagged))
        clock.lap("robust_aggregation")
        votes = await self.collect_votes(config, head, used, header, counter)
        clock.lap("committee")
        accepts = sum(1 for v in votes if v.accept)
        base.update(
            accepts=accepts,
            rejects=len(votes) - accepts,
            flagged_buckets=flagged,
            votes=vote_records(config, votes),
            buckets=bucket_records(config, results, flagged),
        )
        try:
            qc = select_quorum(header, votes)
        except LedgerError as e:
            reasons = sorted({v.reason for v in votes if not v.accept})
            detail = f"not committed: {e}" + (f" ({'; '.join(reasons)})" if reasons else "")
            log.warning("round %d: %s", round_, detail)
            COMMITS.labels(outcome="rejected").inc()
            quarantined = await self.report(config, None, flags, votes, refused, absent, reach)
            return self._finish(
                t0, counter, RoundEvent(committed=False, detail=detail, quarantined=quarantined, **base), fac
            )
        block = Block(header, qc)
        await asyncio.to_thread(self.store.append, block, new_model, sums)
        clock.lap("commit")
        self.model = new_model
        ROUND.set(round_)
        COMMITS.labels(outcome="committed").inc()
        LAST_COMMIT.set_to_current_time()
        metrics, specialties = await self.evaluate(config, counter)
        clock.lap("evaluate")
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
        quarantined = await self.report(config, block, flags, votes, refused, absent, reach)
        return self._finish(
            t0,
            counter,
            RoundEvent(
                committed=True,
                accuracy=metrics.accuracy,
                loss=metrics.loss,
                clinical=clinical,
                specialties=specialties,
                block_hash=block.hash,
                detail="committed",
                quarantined=quarantined,
                **base,
            ),
            fac,
        )

    def _finish(self, t0: float, counter: ByteCount, event: RoundEvent, fac: ByteCount) -> RoundEvent:
        self.clock.lap("report")
        duration = time.monotonic() - t0
        ROUND_DURATION.observe(duration)
        return replace(
            event,
            duration_s=duration,
            bytes_sent=counter.sent + counter.received + fac.sent + fac.received,
            cost=self.clock.cost(counter, fac),
            epsilon=self.epsilon_spent,
        )

    async def check_idle_fogs(self, config: RoundConfig, reach: dict[str, bool]) -> None:
        """Ask every registered fog that has no bucket this round whether it is serving (the standard
        health check), so the authority learns when a fog that was down is back; results go to
        ``reach``."""
        busy = {b.fog_id for b in config.buckets}

        async def one(fog: NodeInfo) -> None:
            stub = health_pb2_grpc.HealthStub(self.channels.get(fog.address, Peer("fog", fog.node_id)))
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=FOG_CHECK_S)
                reach[fog.node_id] = answer.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError as e:
                log.info("round %d: fog %s does not answer: %s", config.round, fog.node_id, e.code().name)
                reach[fog.node_id] = False

        await asyncio.gather(*(one(f) for f in config.fogs if f.node_id not in busy))

    async def collect_votes(
        self,
        config: RoundConfig,
        head: Block,
        used: list[BucketResult],
        header: BlockHeader,
        counter: ByteCount,
    ) -> list[Vote]:
        block_hash = header.hash()
        request = validator_pb2.VoteRequest(
            config=serde.config_to_proto(config),
            base_model=serde.model_to_proto(self.spec, self.model, head.round),
            buckets=[serde.bucket_result_to_proto(r) for r in used],
            rule=header.rule,
            rule_params=serde.rule_params_to_proto(header.rule_params),
            prev_block=serde.block_to_proto(head),
            extra=serde.extra_to_proto(header.extra),
            block_hash=block_hash,
        )

        async def ask(address: str, node_id: str) -> Vote | None:
            stub = validator_pb2_grpc.ValidatorServiceStub(
                self.channels.get(address, Peer("validator", node_id))
            )
            try:
                resp = await call(
                    stub.Vote, request, peer="validator", timeout=self.settings.vote_timeout, counter=counter
                )
                vote = serde.vote_from_proto(resp)
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "round %d: validator %s did not vote: %s", config.round, node_id, describe_rpc_error(e)
                )
                return None
            except ValueError as e:
                log.warning("round %d: validator %s sent a malformed vote: %s", config.round, node_id, e)
                return None
            if vote.validator_id != node_id:
                log.warning("round %d: validator %s signed as %s", config.round, node_id, vote.validator_id)
                return None
            return vote

        answers = await asyncio.gather(*(ask(m.address, m.node_id) for m in config.committee))
        return [v for v in answers if v is not None]

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

    async def report(
        self,
        config: RoundConfig,
        block: Block | None,
        flags: dict[str, str],
        votes: list[Vote] | None,
        refused: set[str],
        absent: set[str],
        reach: dict[str, bool],
    ) -> tuple[str, ...]:
        """Tell the authority which buckets were flagged, who voted how (``votes`` None: nothing was
        proposed, so there is no evidence about updates or votes), who never answered and which fogs
        answered (``reach``); returns the quarantine list."""
        if not self.settings.defences:  # comparison runs: nobody gains suspicion, nobody is quarantined
            flags, refused = {}, set()
        cast: tuple[tuple[str, bool | None], ...] = ()
        if votes is not None:
            by_voter = {v.validator_id: v.accept for v in votes}
            cast = tuple((m.node_id, by_voter.get(m.node_id)) for m in config.committee)
        report = RoundReport(
            flags=dict(flags),
            refused=tuple(sorted(refused)),
            absent=tuple(sorted(absent)),
            votes=cast,
            fogs_down=tuple(sorted(f for f, ok in reach.items() if not ok)),
            fogs_up=tuple(sorted(f for f, ok in reach.items() if ok)),
        )
        try:
            resp = await call(
                self.authority().ReportRound,
                authority_pb2.ReportRoundRequest(
                    round=config.round,
                    attempt=config.attempt,
                    committed=block is not None,
                    block_hash=block.hash if block else b"",
                    flagged_buckets=sorted(flags),
                    report=serde.round_report_to_proto(report),
                ),
                peer="authority",
                timeout=30,
            )
            if resp.has_privacy_spend:
                self.epsilon_spent = float(resp.max_epsilon_spent)
            return tuple(resp.quarantined)
        except grpc.aio.AioRpcError as e:
            log.warning("could not report round %d to the authority: %s", config.round, describe_rpc_error(e))
            return ()

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
