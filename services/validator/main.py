"""`hfl serve validator`."""

from __future__ import annotations

import logging

from hfl.learning.data import load_validation_data
from hfl.proto.v1 import validator_pb2_grpc
from hfl.rpc.enrolment import pinned_authority_key
from hfl.rpc.node import load_identity, register
from hfl.rpc.server import Channels, serve_until_stopped, start_server
from hfl.rpc.settings import ValidatorSettings
from services.validator.faults import validator_class

log = logging.getLogger("hfl.validator")


def validator_index(node_id: str) -> int:
    digits = "".join(c for c in node_id if c.isdigit())
    return int(digits[-6:]) if digits else 0


async def run(settings: ValidatorSettings) -> None:
    node_id = settings.resolved_node_id()
    key = load_identity(settings.state_dir)
    data = load_validation_data(
        settings.dataset, seed=settings.seed, index=validator_index(node_id), label=settings.label
    )
    log.info("validation data: %s", f"{data.n} records" if data is not None else "none (recomputation only)")
    channels = Channels()
    validator = validator_class(settings)(settings, node_id, key, data)  # faulty only for experiments
    running = await start_server(
        settings,
        "validator",
        lambda s: validator_pb2_grpc.add_ValidatorServiceServicer_to_server(validator, s),
    )
    node = running.node_info(settings, "validator", node_id, key.public_bytes)
    answer = await register(channels, settings.authority, node, pinned_key=pinned_authority_key(settings))
    validator.ready(bytes(answer.authority_public_key))
    await running.mark_ready(settings, "validator", node_id)
    try:
        await serve_until_stopped(running, "validator")
    finally:
        await channels.close()
