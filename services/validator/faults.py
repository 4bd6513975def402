"""Validators that misbehave on purpose, for experiments only (HFL_BYZANTINE on a validator, e.g.
`hfl demo --validator-faults`). The honest validator (service.py) has no code for any of this:
``validator_class`` picks FaultyValidator only when a fault is set.

- ``reject_all`` / ``accept_all``: signs a reject (accept) vote for every proposal, whatever the check
  found;
- ``silent``: takes the vote request and never answers (sleeps an hour), like a validator that hangs.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from typing_extensions import override  # mypy checks that each overridden validator method still exists

from hfl.ledger import Vote
from hfl.proto.v1 import validator_pb2
from hfl.rpc.settings import ValidatorSettings
from services.validator.service import Validator

log = logging.getLogger("hfl.validator")

SILENT_S = 3600.0  # how long a silent validator keeps a vote request waiting


class FaultyValidator(Validator):
    """A validator with one of the faults of hfl.rpc.settings.VALIDATOR_FAULTS."""

    @override
    def _vote(self, round_: int, block_hash: bytes, accept: bool, reason: str, score: float | None) -> Vote:
        fault = self.settings.byzantine
        if fault == "reject_all":
            accept, reason = False, "faulty validator: rejects everything"
        elif fault == "accept_all":
            accept, reason = True, "faulty validator: accepts everything"
        return super()._vote(round_, block_hash, accept, reason, score)

    @override
    async def Vote(
        self, request: validator_pb2.VoteRequest, context: grpc.aio.ServicerContext
    ) -> validator_pb2.VoteResponse:
        if self.settings.byzantine == "silent":
            await asyncio.sleep(SILENT_S)
        return await super().Vote(request, context)


def validator_class(settings: ValidatorSettings) -> type[Validator]:
    """The validator a process runs: the honest one unless a fault is set for an experiment."""
    if settings.byzantine != "none":
        log.warning("this validator is FAULTY for experiments: %r", settings.byzantine)
        return FaultyValidator
    return Validator
