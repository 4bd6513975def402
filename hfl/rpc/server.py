"""Server and channel factory: every gRPC server and channel in hfl is made here, so transport
security (mTLS) and limits are decided in one place."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hfl.rpc.errors import ErrorInterceptor
from hfl.rpc.metrics import UP, start_metrics
from hfl.rpc.settings import Settings

log = logging.getLogger("hfl.rpc")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_LIMITS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# Clients ping idle connections every 30 s so a dead peer is noticed; servers accept pings that often.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_LIMITS,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *_LIMITS,
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    address: str
    metrics_port: int
    health: HealthServicer

    async def set_serving(self, serving: bool = True) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)


async def start_server(
    settings: Settings, role: str, register: Callable[[grpc.aio.Server], None]
) -> RunningServer:
    """Bind the service (port 0: the OS picks), add health and error mapping, start metrics."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=SERVER_OPTIONS)
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"could not listen on {settings.listen}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics_port = start_metrics(settings.metrics_port)
    address = f"{settings.resolved_advertise_host()}:{port}"
    UP.labels(role=role).set(0)
    log.info("%s listening on %s (metrics on :%s)", role, address, metrics_port)
    return RunningServer(server, port, address, metrics_port, health)


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    """Atomically write where this service can be reached (used by `hfl demo`)."""
    if not path:
        return
    p = Path(path)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, p)


async def serve_until_stopped(running: RunningServer, role: str, stop: asyncio.Event | None = None) -> None:
    """Wait for SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await stop.wait()
    log.info("%s shutting down", role)
    UP.labels(role=role).set(0)
    await running.health.enter_graceful_shutdown()
    await running.server.stop(grace=2.0)


class Channels:
    """A cache of client channels, one per peer address."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = ch
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
