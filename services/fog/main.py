"""`hfl serve fog`."""

from __future__ import annotations

from hfl.domain import NodeInfo
from hfl.proto.v1 import fog_pb2_grpc
from hfl.rpc.metrics import UP
from hfl.rpc.node import load_identity, register
from hfl.rpc.server import Channels, serve_until_stopped, start_server, write_ready_file
from hfl.rpc.settings import Settings
from services.fog.service import Fog


async def run(settings: Settings) -> None:
    node_id = settings.resolved_node_id()
    key = load_identity(settings.state_dir)
    channels = Channels()
    fog = Fog(settings, node_id, channels)
    running = await start_server(
        settings, "fog", lambda s: fog_pb2_grpc.add_FogServiceServicer_to_server(fog, s)
    )
    node = NodeInfo(
        node_id=node_id,
        role="fog",
        address=running.address,
        sign_public_key=key.public_bytes,
        metrics_address=f"{settings.resolved_advertise_host()}:{running.metrics_port}",
    )
    answer = await register(channels, settings.authority, node)
    fog.ready(bytes(answer.authority_public_key))
    await running.set_serving()
    UP.labels(role="fog").set(1)
    write_ready_file(
        settings.ready_file,
        {"role": "fog", "node_id": node_id, "address": running.address, "metrics_port": running.metrics_port},
    )
    try:
        await serve_until_stopped(running, "fog")
    finally:
        await channels.close()
