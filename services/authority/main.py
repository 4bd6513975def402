"""`hfl serve authority`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hfl.proto.v1 import authority_pb2_grpc
from hfl.provision import install_authority_state
from hfl.rpc.enrolment import pin_authority_key
from hfl.rpc.node import load_identity
from hfl.rpc.server import serve_until_stopped, start_enrol_server, start_server
from hfl.rpc.settings import AuthoritySettings
from services.authority.enrol import own_identity
from services.authority.registry import Registry
from services.authority.service import Authority

log = logging.getLogger("hfl.authority")


async def run(settings: AuthoritySettings) -> None:
    if settings.ca_from:  # a certificate authority provisioned elsewhere (Docker secrets: stack.yml)
        log.info("%s", install_authority_state(Path(settings.ca_from), settings.state_dir))
    key = load_identity(settings.state_dir)
    registry = Registry(settings.state_dir / "authority.db")  # 0600 (registry.py)
    servicer = Authority(settings, key, registry)
    running = await start_server(
        settings,
        "authority",
        lambda s: authority_pb2_grpc.add_AuthorityServiceServicer_to_server(servicer, s),
        own_identity,
    )
    enrol = await start_enrol_server(
        settings, lambda s: authority_pb2_grpc.add_AuthorityServiceServicer_to_server(servicer, s)
    )
    if running.tls is not None and running.tls.dir is not None:  # beside the root nodes are given (demo)
        pin_authority_key(running.tls.dir, key.public_bytes)
    tls_info: dict[str, Any] = (
        {
            "enrol_address": enrol[1],
            "ca": str(running.tls.dir / "ca.pem") if running.tls and running.tls.dir else "",
        }
        if enrol
        else {}
    )
    await running.mark_ready(
        settings, "authority", settings.resolved_node_id(), public_key=key.public_bytes.hex(), **tls_info
    )
    try:
        await serve_until_stopped(running, "authority")
    finally:
        if enrol:
            await enrol[0].stop(grace=1.0)
        registry.close()
