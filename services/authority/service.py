"""The trusted authority: registration, round scheduling (buckets, committee), round reports."""

from __future__ import annotations

import datetime as dt
import logging
import time

import grpc

from hfl import bounds
from hfl.control import reason_of
from hfl.crypto.pow import PowError, check, pow_challenge
from hfl.crypto.signing import PUBLIC_KEY_LEN, SigningKey
from hfl.domain import ROLES, SPECIALTIES, NodeInfo, RoundConfig, RoundReport
from hfl.errors import ConfigError, HflError, InvalidInput, NotAllowed, NotFound, NotReady, clip
from hfl.hashing import HASH_LEN
from hfl.oplog import OperatorLog
from hfl.pki.tokens import add_enrol_token
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.proto.v1 import common_pb2 as pb
from hfl.robust.reputation import Reputation, quarantine_sentence
from hfl.robust.rules import get_rule
from hfl.robust.sizing import Sizing, size_federation, withstands_buckets
from hfl.round.report import round_record, take_report
from hfl.round.schedule import Federation, ScheduleSettings, check_ready, draw_committee, schedule_round
from hfl.rpc import authz, serde
from hfl.rpc.metrics import LEFT_OUT, MISSED_ROUNDS, QUARANTINED, REPUTATION, WITHSTANDS
from hfl.rpc.settings import AuthoritySettings
from hfl.schedule import EQUAL_BUCKETS_ROUNDS, MIN_SECURE_BUCKET, Attendance, FogStatus, home_fogs
from services.authority.enrol import CertificateService
from services.authority.privacy import PrivacyBook
from services.authority.registry import Registry
from services.authority.security import HISTORY_ROUNDS, security_report

log = logging.getLogger("hfl.authority")


class Authority(CertificateService, authority_pb2_grpc.AuthorityServiceServicer):
    def __init__(self, settings: AuthoritySettings, key: SigningKey, registry: Registry) -> None:
        self.settings = settings
        self.key = key
        self.registry = registry
        budget = settings.dp_epsilon or 0.0  # no HFL_DP_EPSILON: no budget to enforce
        self.privacy = PrivacyBook(settings.state_dir / "privacy.db", budget)  # privacy.py
        self.oplog = OperatorLog(settings.state_dir / "operator.db")  # what operators did, and why
        state = registry.get_json("reputation")
        # The quarantine test is sized for the federation (its false-positive rate: docs/robustness.md);
        # it replaces a stored one, so changed settings apply to the evidence already gathered.
        test = settings.quarantine_test(len(registry.nodes("facility")))
        self.reputation = (
            Reputation.from_dict(state, test=test) if isinstance(state, dict) else Reputation(test=test)
        )
        seen = registry.get_json("attendance")
        limit = settings.absent_rounds
        self.attendance = Attendance.from_dict(seen, limit) if isinstance(seen, dict) else Attendance(limit)
        fogs = registry.get_json("fog_status")
        self.fog_status = FogStatus.from_dict(fogs) if isinstance(fogs, dict) else FogStatus()
        homes = registry.get_json("homes")
        self._homes = {str(k): str(v) for k, v in homes.items()} if isinstance(homes, dict) else {}
        self._publish_reputation()
        self._withstands: int | None = None
        sizing = size_federation(
            max(1, settings.min_facilities),
            rule=settings.rule,
            bucket_size=settings.bucket_size,
            max_byzantine=settings.max_byzantine,
            f=settings.f,
            secagg=settings.secagg,
        )  # refused at start-up already when it raises (hfl/rpc/settings.py)
        log.info("planned federation: %s", sizing.sentence())
        log.info("quarantine: %s", quarantine_sentence(test))

    def _check_threat(self, n_facilities: int, n_buckets: int) -> None:
        """Say when this round's buckets withstand fewer misbehaving facilities than the federation declared
        (facilities away, quarantined or out of privacy budget, or split over fogs, leave fewer buckets)."""
        s = self.settings
        can = withstands_buckets(s.rule, n_buckets)
        sizing = Sizing(n_facilities, s.bucket_size, s.rule, can if s.f is None else min(can, s.f), n_buckets)
        WITHSTANDS.set(sizing.withstands)
        if sizing.withstands != self._withstands:
            self._withstands = sizing.withstands
            short = s.max_byzantine is not None and sizing.withstands < s.max_byzantine
            (log.warning if short else log.info)(
                "this round: %s%s",
                sizing.sentence(),
                f", fewer than the {s.max_byzantine} declared (HFL_MAX_BYZANTINE)" if short else "",
            )

    def _resize_quarantine(self) -> None:
        """The federation grew beyond the size its quarantine test was stated for: restate it (the false-
        positive rate is added up over the facilities, so more of them need a slightly higher bound)."""
        registered = len(self.registry.nodes("facility"))
        if registered <= self.reputation.test.facilities:
            return
        try:
            test = self.settings.quarantine_test(registered)
        except ValueError as e:  # cannot happen for a larger federation; keep the test it has
            log.warning("quarantine test kept for %d facilities: %s", self.reputation.test.facilities, e)
            return
        self.reputation = Reputation.from_dict(self.reputation.to_dict(), test=test)
        log.info(
            "quarantine restated for %d registered facilities: %s", registered, quarantine_sentence(test)
        )

    @property
    def quarantined(self) -> frozenset[str]:
        return self.reputation.quarantined

    def _publish_reputation(self) -> None:
        quarantined = self.quarantined
        for node in self.registry.nodes():
            if node.role in ("facility", "validator"):
                REPUTATION.labels(node=node.node_id, role=node.role).set(self.reputation.score(node.node_id))
            if node.role == "facility":
                QUARANTINED.labels(facility=node.node_id).set(int(node.node_id in quarantined))
                MISSED_ROUNDS.labels(facility=node.node_id).set(self.attendance.missed(node.node_id))
                LEFT_OUT.labels(facility=node.node_id).set(int(node.node_id in self.attendance.inactive))

    def registration_challenge(self, node: NodeInfo) -> bytes:
        """What a validator must solve to register: binds the authority, the node id and its key."""
        return pow_challenge(self.key.public_bytes, node.node_id, node.sign_public_key)

    # ------------------------------------------------------------------ registration
    def _check_node(self, node: NodeInfo) -> None:
        if node.role not in ROLES or node.role == "authority":
            raise InvalidInput(f"cannot register a node with role {clip(node.role)}")
        if len(node.sign_public_key) != PUBLIC_KEY_LEN:
            raise InvalidInput("the node's public key must be 32 bytes (Ed25519)")
        if node.role not in ("leader", "facility") and not node.address:  # facilities only dial out
            raise InvalidInput("the node must say at which address it can be reached")
        if node.specialty and node.specialty not in SPECIALTIES:
            raise InvalidInput(
                f"unknown specialty {clip(node.specialty)}; choose one of {', '.join(SPECIALTIES)}"
            )

    async def Register(
        self, request: authority_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.RegisterResponse:
        node = serde.node_from_proto(request.node)
        self._check_node(node)
        known = self.registry.get(node.node_id)
        if known is not None and known.sign_public_key != node.sign_public_key:
            raise NotAllowed(f"node id {clip(node.node_id)} is already registered with a different key")
        if node.role == "validator" and self.settings.pow_difficulty > 0:
            try:
                check(self.registration_challenge(node), int(request.pow_nonce), self.settings.pow_difficulty)
            except PowError as e:
                raise NotAllowed(f"validator registration refused: {e}") from None
        if node.role == "facility" and not node.specialty:
            node = NodeInfo(**{**node.to_dict(), "specialty": self._next_specialty(known)})
        self.registry.upsert(node)
        if node.role == "facility" and self.attendance.present(node.node_id):
            self.registry.put_json("attendance", self.attendance.to_dict())
            log.info("facility %s registered again; it is scheduled again", node.node_id)
        if node.role == "fog" and self.fog_status.registered(node.node_id):
            self.registry.put_json("fog_status", self.fog_status.to_dict())
            log.info("fog %s registered again; it takes facilities again", node.node_id)
        notes = [node.specialty] if node.specialty else []
        if not node.address:  # facilities only dial out
            notes.append("dials out, listens on no port")
        log.info(
            "registered %s %s%s%s",
            node.role,
            node.node_id,
            f" at {node.address}" if node.address else "",
            f" ({'; '.join(notes)})" if notes else "",
        )
        return authority_pb2.RegisterResponse(
            authority_public_key=self.key.public_bytes, specialty=node.specialty
        )

    def _next_specialty(self, known: NodeInfo | None) -> str:
        if known is not None and known.specialty:
            return known.specialty
        count = len(self.registry.nodes("facility"))
        return SPECIALTIES[count % len(SPECIALTIES)]

    # ------------------------------------------------------------------ scheduling
    def homes(self, nodes: list[NodeInfo] | None = None) -> dict[str, str]:
        """Each facility's home fog (hfl.schedule.home_fogs): every facility that may still take part
        (not quarantined, budget not used up; one that is away keeps its home), over the fogs that are up.
        When every fog seems down, all of them are tried. None before HFL_MIN_FACILITIES have registered.
        ``nodes``: the registry, when the caller has read it already."""
        nodes = self.registry.nodes() if nodes is None else nodes
        registered = [n for n in nodes if n.role == "facility"]
        if len(registered) < max(1, self.settings.min_facilities):
            return {}  # rounds wait for them anyway, and homes given to the first few would soon change
        gone = self.quarantined | self.privacy.exhausted
        facilities = {n.node_id: n.region for n in registered if n.node_id not in gone}
        fogs = {n.node_id: n.region for n in nodes if n.role == "fog"}
        up = {f: r for f, r in fogs.items() if f not in self.fog_status.down} or fogs
        smallest = MIN_SECURE_BUCKET if self.settings.secagg else 1
        homes = home_fogs(
            facilities, up, self.settings.bucket_size, smallest, self._homes, self.settings.fog_min_buckets
        )
        if homes != self._homes:  # a facility keeps its home while it can, so only a down fog's move
            self._homes = homes
            self.registry.put_json("homes", homes)
        return homes

    def schedule_settings(self) -> ScheduleSettings:
        s = self.settings
        return ScheduleSettings(
            bucket_size=s.bucket_size,
            committee_size=s.committee_size,
            min_facilities=s.min_facilities,
            secagg=s.secagg,
            epoch_rounds=s.epoch_rounds,
            experiment_seed=s.experiment_seed,
            # a robust rule and a federation that expects misbehaving facilities (HFL_MAX_BYZANTINE
            # unset or above 0): after an unexplained flag, buckets of one size and the remainder resting
            # (hfl.schedule.equal_buckets_now)
            equal_buckets=get_rule(s.rule).tolerates_bad_buckets and s.max_byzantine != 0,
        )

    def _committee_draw(
        self, settings: ScheduleSettings, federation: Federation, round_: int, head: bytes
    ) -> dict:
        """The epoch's committee draw: stored once per epoch, drawn again when a member is gone."""
        epoch = settings.epoch(round_)
        draw = self.registry.get_json(f"committee_draw/{epoch}")
        if not isinstance(draw, dict) or any(self.registry.get(v) is None for v in draw["members"]):
            weights = {v.node_id: self.reputation.weight(v.node_id) for v in federation.validators}
            draw = draw_committee(settings, federation.validators, weights, head, epoch)
            self.registry.put_json(f"committee_draw/{epoch}", draw)
            log.info("epoch %d committee: %s", epoch, ", ".join(draw["members"]))  # type: ignore[arg-type]
        return draw

    def make_config(self, round_: int, attempt: int, head: bytes) -> RoundConfig:
        """Gather the inputs, take the schedule (hfl/round/schedule.py), sign and record it."""
        settings = self.schedule_settings()
        federation = self._federation()
        check_ready(settings, federation)
        draw = self._committee_draw(settings, federation, round_, head)
        committee = tuple(self.registry.get(str(v)) for v in draw["members"])
        plan = schedule_round(
            settings,
            federation,
            round_=round_,
            attempt=attempt,
            head=head,
            homes=self.homes(),
            committee=committee,  # type: ignore[arg-type]
            committee_draw=draw,
        )
        if plan.sit_out:
            log.info(
                "round %d: %s sit%s out: too few facilities are at %s this round for a bucket",
                round_,
                ", ".join(plan.sit_out),
                "s" if len(plan.sit_out) == 1 else "",
                ", ".join(plan.sit_out_fogs),
            )
        if plan.resting and federation.last_flagged_round is not None:
            log.info(
                "round %d: %s rest%s this round (not called; nothing is wrong with %s): a bucket was "
                "flagged in round %d and none of its facilities is quarantined, so until round %d every "
                "bucket has exactly %d facilities, and the few left over take turns resting",
                round_,
                ", ".join(plan.resting),
                "s" if len(plan.resting) == 1 else "",
                "it" if len(plan.resting) == 1 else "them",
                federation.last_flagged_round,
                federation.last_flagged_round + EQUAL_BUCKETS_ROUNDS,
                settings.bucket_size,
            )
        self._check_threat(len(plan.config.facilities) + len(plan.resting), len(plan.config.buckets))
        config = plan.config.sign(self.key)
        self._record_config(config, head)
        return config

    def _federation(self) -> Federation:
        """The registry as the schedule sees it: who is registered, who may not take part, and the last
        round with a flag no quarantine explains (the reputation's observations are attempt slots,
        hfl.bounds)."""
        flagged = self.reputation.last_unexplained_flag
        return Federation(
            facilities=tuple(self.registry.nodes("facility")),
            fogs=tuple(self.registry.nodes("fog")),
            validators=tuple(self.registry.nodes("validator")),
            quarantined=self.quarantined,
            out_of_budget=frozenset(self.privacy.exhausted),  # never schedule a facility that spent it
            away=frozenset(self.attendance.inactive),  # missed their last rounds; back when they register
            last_flagged_round=None if flagged is None else bounds.slot_round(flagged),
        )

    def _record_config(self, config: RoundConfig, head: bytes) -> None:
        """Remember an issued configuration: its buckets' members and the fog each was drawn in (for the
        round report, ReportRound)."""
        buckets = config.buckets
        self.registry.record_config(
            config.round,
            config.attempt,
            config.hash(),
            head,
            {b.bucket_id: list(b.members) for b in buckets},
            {b.bucket_id: b.fog_id for b in buckets},
        )

    async def GetRoundConfig(
        self, request: authority_pb2.GetRoundConfigRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.GetRoundConfigResponse:
        if request.round < 1:
            raise InvalidInput("rounds are numbered from 1")
        if len(request.ledger_head) != HASH_LEN:
            raise InvalidInput("the ledger head must be a 32-byte hash")
        round_, attempt = bounds.round_attempt(int(request.round), int(request.attempt))
        config = self.make_config(round_, attempt, bytes(request.ledger_head))
        # Per-bucket signed views: facilities get only their bucket's part (linear total traffic, not N^2).
        views = [
            config.bucket_view(b.bucket_id).sign(self.key) for b in (*config.buckets, *config.eval_buckets)
        ]
        return authority_pb2.GetRoundConfigResponse(
            config=serde.config_to_proto(config), bucket_configs=[serde.config_to_proto(v) for v in views]
        )

    async def ReportRound(
        self, request: authority_pb2.ReportRoundRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.ReportRoundResponse:
        """The leader's evidence after a round attempt (hfl/round/report.py): absences, fogs down or back,
        and (when a block was proposed) flagged buckets and votes for the reputation."""
        round_, attempt = bounds.round_attempt(int(request.round), int(request.attempt))
        layout = self.registry.config_layout(round_, attempt)  # buckets and the fog each was drawn in
        if layout is None:
            raise InvalidInput(f"no configuration was issued for round {round_} attempt {attempt}")
        buckets, pools = layout
        report = serde.round_report_from_proto(request.report)
        fogs = {n.node_id for n in self.registry.nodes("fog")}
        observation = bounds.attempt_slot(round_, attempt)  # round × 1000 + attempt, stored: see hfl.bounds
        evidence = take_report(report, buckets, fogs, self.attendance, observation)
        self._observe_fogs(report)
        newly: list[str] = []
        votes = dict(report.votes)
        if report.committee:  # without one nothing was proposed: no evidence about updates or votes
            self._resize_quarantine()
            pools = pools or None  # buckets are drawn per fog; None: one pool
            newly = self.reputation.observe(observation, evidence.groups, evidence.flags, pools)
            self.reputation.observe_votes(observation, list(report.committee), votes, bool(request.committed))
        self.registry.put_json("reputation", self.reputation.to_dict())
        record = round_record(
            attempt, request.committed, request.block_hash, evidence, votes, newly, self.reputation
        )
        self.registry.record_report(round_, record)
        self._announce_left_out(newly, evidence.gone)
        self.registry.put_json("attendance", self.attendance.to_dict())
        self.revoke_quarantined(newly)
        self._publish_reputation()
        top = self.privacy.max_spent()
        return authority_pb2.ReportRoundResponse(
            quarantined=sorted(self.quarantined),
            max_epsilon_spent=top or 0.0,
            has_privacy_spend=top is not None,
        )

    def _observe_fogs(self, report: RoundReport) -> None:
        """Fogs the leader could not reach lose their facilities to other fogs; answering again, they
        take facilities again."""
        down, back = self.fog_status.observe(report.fogs_down, report.fogs_up)
        for fog in down:
            log.warning("fog %s did not answer the leader; its facilities are moved to other fogs", fog)
        for fog in back:
            log.info("fog %s answers again; it takes facilities again", fog)
        if down or back:
            self.registry.put_json("fog_status", self.fog_status.to_dict())

    def _announce_left_out(self, quarantined: list[str], gone: list[str]) -> None:
        for f in quarantined:
            if f in self.reputation.named:
                log.warning(
                    "quarantined facility %s: the buckets over the norm bound cannot be explained without it",
                    f,
                )
            else:
                log.warning("quarantined facility %s: it was in flagged buckets too often", f)
        for f in gone:
            log.warning(
                "facility %s missed %d rounds in a row; it is left out until it registers again",
                f,
                self.attendance.missed(f),
            )

    async def ReportPrivacySpend(
        self, request: authority_pb2.ReportPrivacySpendRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.ReportPrivacySpendResponse:
        report = serde.spend_from_proto(request.spend)
        node = self.registry.get(report.facility_id)
        total = self.privacy.record(
            report, node.sign_public_key if node else None, node.role if node else None
        )
        return authority_pb2.ReportPrivacySpendResponse(
            epsilon_spent=total, exhausted=self.privacy.is_exhausted(report.facility_id, total)
        )

    async def GetPrivacySpend(
        self, request: authority_pb2.GetPrivacySpendRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.GetPrivacySpendResponse:
        """The operator sees every facility's ε; a facility (hfl/rpc/authz.py) only its own."""
        spent, exhausted = self.privacy.spent(), sorted(self.privacy.exhausted)
        if not authz.sees_everything():
            me = authz.caller_id()
            spent = {k: v for k, v in spent.items() if k == me}
            exhausted = [f for f in exhausted if f == me]
        s = self.settings
        return authority_pb2.GetPrivacySpendResponse(
            epsilon_spent=spent,
            exhausted=exhausted,
            budget=s.dp_epsilon or 0.0,
            delta=s.dp_delta if s.dp_epsilon is not None else 0.0,
            mechanism=s.dp_mechanism if s.dp_epsilon is not None else "",
        )

    async def GetSecurityReport(
        self, request: authority_pb2.GetSecurityReportRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.GetSecurityReportResponse:
        """Operator only (hfl/rpc/authz.py): the console's Security view."""
        reports = self.registry.reports(HISTORY_ROUNDS)
        ca = self.ca() if self.settings.tls else None
        return serde.security_to_proto(security_report(self.reputation.to_dict(), reports, ca))

    async def ReleaseFacility(
        self, request: authority_pb2.ReleaseFacilityRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.ReleaseFacilityResponse:
        """Operator only (hfl/rpc/authz.py): lift a quarantine after an investigation. The facility's
        suspicion starts again from zero; its revoked certificates stay revoked, but it may enrol again
        with a new one-time token."""
        node_id = bounds.node_id(request.node_id.strip(), "the facility to release")
        reason = " ".join(bounds.reason(request.reason).split())
        if not reason:
            raise InvalidInput(f"give the reason for the release in 1 to {bounds.MAX_REASON} characters")
        node = self.registry.get(node_id)
        if node is None or node.role != "facility":
            raise NotFound(f"no facility {clip(node_id)} is registered")
        if node_id not in self.quarantined:
            raise HflError(f"facility {node_id} is not quarantined")
        self.reputation.release(node_id)
        self.registry.put_json("reputation", self.reputation.to_dict())
        releases = self.registry.get_json("releases")
        history = list(releases) if isinstance(releases, list) else []
        self.registry.put_json("releases", [*history, {"facility": node_id, "reason": reason}])
        if self.settings.tls:
            self.ca().release_node(node_id, reason)
        log.warning("released facility %s from quarantine (operator: %s)", node_id, reason)
        self._publish_reputation()
        self.oplog.record(authz.caller_id() or "operator", "release", node_id, reason, "released")
        return authority_pb2.ReleaseFacilityResponse(quarantined=sorted(self.quarantined))

    async def QuarantineFacility(
        self, request: authority_pb2.QuarantineFacilityRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.QuarantineFacilityResponse:
        """Operator only: quarantine a facility by hand; as for an automatic quarantine it is left out and
        its certificates are revoked, until `hfl release`."""
        node_id = bounds.node_id(request.node_id.strip(), "the facility to quarantine")
        reason = reason_of(request.reason)
        node = self.registry.get(node_id)
        if node is None or node.role != "facility":
            raise NotFound(f"no facility {clip(node_id)} is registered")
        if node_id in self.quarantined:
            raise HflError(f"facility {node_id} is already quarantined")
        self.reputation.quarantine(node_id)
        self.registry.put_json("reputation", self.reputation.to_dict())
        self.revoke_quarantined([node_id])
        self._publish_reputation()
        log.warning("quarantined facility %s by hand (operator: %s)", node_id, reason)
        self.oplog.record(authz.caller_id() or "operator", "quarantine", node_id, reason, "quarantined")
        return authority_pb2.QuarantineFacilityResponse(quarantined=sorted(self.quarantined))

    async def IssueEnrolmentToken(
        self, request: authority_pb2.IssueEnrolmentTokenRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.IssueEnrolmentTokenResponse:
        """Operator only: a one-time token for a named new facility, returned once (only its hash is kept)."""
        node_id = bounds.node_id(request.node_id.strip(), "the new facility's name")
        hours = float(request.hours) or 24.0
        if not self.settings.tls:
            raise NotReady("this federation runs without TLS (HFL_TLS=false); nodes do not enrol")
        try:
            token = add_enrol_token(self.settings.state_dir, "facility", node_id, hours)
        except ConfigError as e:
            raise InvalidInput(str(e)) from None
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours)).isoformat(timespec="minutes")
        self.oplog.record(
            authz.caller_id() or "operator", "enrolment token", node_id, f"valid {hours:g} h", "issued"
        )
        return authority_pb2.IssueEnrolmentTokenResponse(token=token, expires=expires)

    async def ListOperatorActions(
        self, request: pb.ListOperatorActionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOperatorActionsResponse:
        """Operator only: releases, revocations, hand quarantines and tokens issued, oldest first."""
        return pb.ListOperatorActionsResponse(
            actions=[serde.operator_action_to_proto(a) for a in self.oplog.actions()]
        )

    def forget_node(self, node_id: str) -> None:
        if self.registry.remove(node_id):
            log.warning("%s is no longer scheduled (revoked)", node_id)

    async def ListNodes(
        self, request: authority_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> authority_pb2.ListNodesResponse:
        """The operator sees the whole registry; any other node its own entry, the fogs (where a facility
        connects to) and what it needs to register (the proof-of-work difficulty), not the other sites'
        entries or standing."""
        nodes = self.registry.nodes()
        me = authz.caller_id() or bounds.text(request.node_id, "node id", bounds.MAX_ID)
        asking = next((n for n in nodes if n.node_id == me), None)  # only a facility has a home fog
        home = self.homes(nodes).get(me, "") if asking is not None and asking.role == "facility" else ""
        if not authz.sees_everything():
            return authority_pb2.ListNodesResponse(
                nodes=[serde.node_to_proto(n) for n in nodes if n.node_id == me or n.role == "fog"],
                authority_public_key=self.key.public_bytes,
                pow_difficulty=self.settings.pow_difficulty,
                time_unix_ms=int(time.time() * 1000),
                home_fog=home,
            )
        return authority_pb2.ListNodesResponse(
            nodes=[serde.node_to_proto(n) for n in nodes],
            authority_public_key=self.key.public_bytes,
            quarantined=sorted(self.quarantined),
            pow_difficulty=self.settings.pow_difficulty,
            inactive=sorted(self.attendance.inactive),
            time_unix_ms=int(time.time() * 1000),
            home_fog=home,
        )
