"""A validator: re-computes the proposed global model from the bucket sums, scores it on its own
validation data, and signs an accept or reject vote."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np

from hfl import bounds
from hfl.crypto.signing import SigningKey
from hfl.errors import InvalidInput, NotAllowed, NotReady
from hfl.learning.data import Dataset
from hfl.learning.models import evaluate, make_model
from hfl.ledger import CommitteeMember, LedgerError, Vote, check_quorum
from hfl.proto.v1 import validator_pb2, validator_pb2_grpc
from hfl.robust.bound import bound_problem, history_problem
from hfl.robust.rules import policy_violation
from hfl.round.propose import next_header
from hfl.rpc import serde
from hfl.rpc.metrics import ROUND, VOTES
from hfl.rpc.settings import Settings

log = logging.getLogger("hfl.validator")


class Validator(validator_pb2_grpc.ValidatorServiceServicer):
    def __init__(self, settings: Settings, node_id: str, key: SigningKey, data: Dataset | None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.key = key
        self.data = data
        self.authority_key = b""

    def ready(self, authority_key: bytes) -> None:
        self.authority_key = authority_key

    def _vote(self, round_: int, block_hash: bytes, accept: bool, reason: str, score: float | None) -> Vote:
        reason = bounds.shorten(reason)  # part of the signed vote; leaders refuse longer ones
        VOTES.labels(decision="accept" if accept else "reject").inc()
        log.info("round %d: %s (%s)", round_, "ACCEPT" if accept else "REJECT", reason)
        return Vote.create(
            self.key,
            round=round_,
            block_hash=block_hash,
            validator_id=self.node_id,
            accept=accept,
            reason=reason,
            score=score,
        )

    def check(self, request: validator_pb2.VoteRequest) -> Vote:
        if not self.authority_key:
            raise NotReady("this validator is still starting")
        config = serde.config_from_proto(request.config)
        config.verify(self.authority_key)
        if self.node_id not in {m.node_id for m in config.committee}:
            raise NotAllowed(f"this validator is not on the committee of round {config.round}")
        proposed = bytes(request.block_hash)
        prev = serde.block_from_proto(request.prev_block)
        if prev.header.round + 1 != config.round:
            raise InvalidInput(f"the previous block is round {prev.header.round}, not {config.round - 1}")
        if not prev.header.is_genesis:
            try:
                check_quorum(prev.header, prev.votes)
            except LedgerError as e:
                return self._vote(config.round, proposed, False, f"previous block not certified: {e}", None)
        spec, base, _ = serde.model_from_proto(request.base_model)
        model = make_model(spec.kind, spec.n_features, spec.hidden)
        if base.size != model.n_params:
            raise InvalidInput("the base model does not fit its architecture")
        results = [serde.bucket_result_from_proto(b, expected_length=base.size) for b in request.buckets]
        used = [r for r in results if not r.abandoned]
        if not used:
            return self._vote(config.round, proposed, False, "no bucket sums to aggregate", None)
        extra = serde.extra_from_proto(request.extra)
        rule_params = serde.rule_params_from_proto(request.rule_params)
        broken = policy_violation(
            request.rule,
            rule_params,
            len(used),
            expected_rule=self.settings.rule,
            expected_f=self.settings.f,
            defences=self.settings.defences,
        )
        if broken:
            return self._vote(config.round, proposed, False, broken, None)
        adaptive = self.settings.adaptive_bound and self.settings.defences
        if self.settings.defences:  # the recorded norm bound must be the one policy and history give
            wrong = bound_problem(
                prev.header.extra,
                rule_params,
                extra,
                adaptive=adaptive,
                ceiling=self.settings.norm_ceiling,
            )
            if wrong:
                return self._vote(config.round, proposed, False, wrong, None)
        sums = np.stack([r.total for r in used])
        counts = [r.count for r in used]
        try:
            header, new_model = next_header(
                prev,
                base,
                sums,
                counts,
                rule=request.rule,
                rule_params=rule_params,
                committee=[CommitteeMember(m.node_id, m.sign_public_key) for m in config.committee],
                config_hash=config.hash(),
                quorum=config.quorum,
                extra=extra,
            )
        except ValueError as e:
            return self._vote(config.round, proposed, False, f"cannot recompute the aggregate: {e}", None)
        if header.hash() != proposed:
            return self._vote(
                config.round,
                proposed,
                False,
                "the recomputed block differs from the proposal (aggregate or inputs tampered)",
                None,
            )
        if adaptive:
            wrong = history_problem(prev.header.extra, header.extra, sums, counts, header.flagged)
            if wrong:
                return self._vote(config.round, proposed, False, wrong, None)
        if not np.all(np.isfinite(new_model)):
            return self._vote(config.round, proposed, False, "the proposed model has non-finite values", None)
        if not self.settings.defences:
            return self._vote(
                config.round, proposed, True, "recomputation matches; defences off, score not checked", None
            )
        if self.data is None:
            return self._vote(
                config.round,
                proposed,
                True,
                "recomputation matches; no validation data of this schema, score not checked",
                None,
            )
        if self.data.d != spec.n_features:
            return self._vote(
                config.round,
                proposed,
                True,
                "recomputation matches; validation data has another schema, score not checked",
                None,
            )
        before = evaluate(model, base, self.data)
        after = evaluate(model, new_model, self.data)
        margin = self.settings.validation_margin
        if after.accuracy < before.accuracy - margin:
            return self._vote(
                config.round,
                proposed,
                False,
                f"accuracy on validation data drops from {before.accuracy:.3f} to "
                f"{after.accuracy:.3f} (more than the allowed {margin:.3f})",
                after.accuracy,
            )
        return self._vote(
            config.round,
            proposed,
            True,
            f"recomputation matches; validation accuracy {after.accuracy:.3f}",
            after.accuracy,
        )

    async def Vote(
        self, request: validator_pb2.VoteRequest, context: grpc.aio.ServicerContext
    ) -> validator_pb2.VoteResponse:
        vote = await asyncio.to_thread(self.check, request)
        ROUND.set(vote.round)
        return serde.vote_to_proto(vote)
