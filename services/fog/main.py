"""`hfl serve fog`."""

from __future__ import annotations

from hfl.memory import tune_allocator
from hfl.proto.v1 import fog_pb2_grpc
from hfl.rpc.enrolment import pinned_authority_key
from hfl.rpc.node import load_identity, register
from hfl.rpc.server import Channels, serve_until_stopped, start_server
from hfl.rpc.settings import FogSettings
from services.fog.faults import fog_class


async def run(settings: FogSettings) -> None:
    # before gRPC starts its threads: less memory kept after busy rounds (hfl/memory.py)
    tune_allocator(return_large_blocks=True)
    node_id = settings.resolved_node_id()
    key = load_identity(settings.state_dir)
    channels = Channels()
    fog = fog_class(settings)(settings, node_id)  # faulty only for experiments (faults.py)
    running = await start_server(
        settings, "fog", lambda s: fog_pb2_grpc.add_FogServiceServicer_to_server(fog, s)
    )
    node = running.node_info(settings, "fog", node_id, key.public_bytes)
    answer = await register(channels, settings.authority, node, pinned_key=pinned_authority_key(settings))
    fog.ready(bytes(answer.authority_public_key))
    await running.mark_ready(settings, "fog", node_id)
    try:
        await serve_until_stopped(running, "fog")
    finally:
        await channels.close()
