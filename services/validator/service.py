"""A validator: re-computes the proposed global model from the bucket sums, scores it on its own
validation data, and signs an accept or reject vote."""

from __future__ import annotations

import asyncio
import logging

import grpc

from hfl import bounds
from hfl.crypto.signing import SigningKey
from hfl.errors import NotReady
from hfl.learning.data import Dataset
from hfl.ledger import Vote
from hfl.proto.v1 import validator_pb2, validator_pb2_grpc
from hfl.round.verdict import Policy, Proposal, check_proposal
from hfl.rpc import serde
from hfl.rpc.metrics import ROUND, VOTES
from hfl.rpc.settings import ValidatorSettings

log = logging.getLogger("hfl.validator")


class Validator(validator_pb2_grpc.ValidatorServiceServicer):
    def __init__(
        self, settings: ValidatorSettings, node_id: str, key: SigningKey, data: Dataset | None
    ) -> None:
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

    def policy(self) -> Policy:
        s = self.settings
        return Policy(
            rule=s.rule,
            f=s.f,
            defences=s.defences,
            adaptive_bound=s.adaptive_bound,
            norm_ceiling=s.norm_ceiling,
            validation_margin=s.validation_margin,
        )

    def check(self, request: validator_pb2.VoteRequest) -> Vote:
        """Convert the request, take the verdict (hfl/round/verdict.py) and sign it as a vote."""
        if not self.authority_key:
            raise NotReady("this validator is still starting")
        config = serde.config_from_proto(request.config)
        config.verify(self.authority_key)
        prev = serde.block_from_proto(request.prev_block)
        spec, base, _ = serde.model_from_proto(request.base_model)
        proposal = Proposal(
            block_hash=bytes(request.block_hash),
            rule=request.rule,
            rule_params=serde.rule_params_from_proto(request.rule_params),
            extra=serde.extra_from_proto(request.extra),
            buckets=tuple(
                serde.bucket_result_from_proto(b, expected_length=base.size) for b in request.buckets
            ),
        )
        verdict = check_proposal(
            proposal,
            config=config,
            prev=prev,
            spec=spec,
            base=base,
            policy=self.policy(),
            validator_id=self.node_id,
            data=self.data,
        )
        return self._vote(config.round, proposal.block_hash, verdict.accept, verdict.reason, verdict.score)

    async def Vote(
        self, request: validator_pb2.VoteRequest, context: grpc.aio.ServicerContext
    ) -> validator_pb2.VoteResponse:
        vote = await asyncio.to_thread(self.check, request)
        ROUND.set(vote.round)
        return serde.vote_to_proto(vote)
