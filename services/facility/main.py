"""`hfl serve facility`."""

from __future__ import annotations

import logging

from hfl.domain import NodeInfo
from hfl.learning.data import load_facility_data
from hfl.proto.v1 import facility_pb2_grpc
from hfl.rpc.metrics import UP
from hfl.rpc.node import load_identity, register
from hfl.rpc.server import Channels, serve_until_stopped, start_server, write_ready_file
from hfl.rpc.settings import Settings
from services.facility.service import Facility, parse_shard

log = logging.getLogger("hfl.facility")


async def run(settings: Settings) -> None:
    node_id = settings.resolved_node_id()
    shard = parse_shard(settings.shard)
    key = load_identity(settings.state_dir)
    channels = Channels()
    facility = Facility(settings, node_id, channels)
    # Bind first (registration needs our address), then register (the authority may assign the
    # specialty), then load the data; RPCs answer UNAVAILABLE until then.
    running = await start_server(settings, "facility",
                                 lambda s: facility_pb2_grpc.add_FacilityServiceServicer_to_server(facility, s))
    node = NodeInfo(node_id=node_id, role="facility", address=running.address, sign_public_key=key.public_bytes,
                    specialty=settings.specialty,
                    metrics_address=f"{settings.resolved_advertise_host()}:{running.metrics_port}")
    answer = await register(channels, settings.authority, node)
    specialty = answer.specialty or settings.specialty or "hospital"
    data = load_facility_data(settings.dataset, specialty=specialty, shard=shard, seed=settings.seed,
                              label=settings.label, n_patients=settings.n_patients)
    log.info("loaded %d training and %d test records (%s, %s)", data.train.n, data.test.n, specialty,
             settings.dataset)
    facility.ready(data, bytes(answer.authority_public_key))
    await running.set_serving()
    UP.labels(role="facility").set(1)
    write_ready_file(settings.ready_file, {"role": "facility", "node_id": node_id, "address": running.address,
                                           "metrics_port": running.metrics_port, "specialty": specialty})
    try:
        await serve_until_stopped(running, "facility")
    finally:
        await channels.close()
