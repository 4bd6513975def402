"""Server and channel factory: every gRPC server and channel in hfl is made here, so transport
security (mTLS) and limits are decided in one place."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from hfl.domain import NodeInfo
from hfl.rpc import limits
from hfl.rpc.authz import AuthInterceptor, EnrolInterceptor
from hfl.rpc.enrolment import OwnIdentity, ensure_identity, maintain
from hfl.rpc.errors import ErrorInterceptor
from hfl.rpc.metrics import UP, start_metrics
from hfl.rpc.settings import FOG_RECEIVE_WINDOW_KIB, FogFields, NodeSettings
from hfl.rpc.tls import NodeTls, Peer, aio_channel
from hfl.rpc.tls import default as default_tls

log = logging.getLogger("hfl.rpc")

# The largest message anything in hfl sends or receives. A server's receive limit is lowered to what its
# own methods accept (server_options); grpcio cannot set it per method, so each method's own, often
# smaller, limit is checked before parsing (hfl.rpc.limits, enforced by hfl.rpc.errors.ErrorInterceptor).
MAX_MESSAGE_BYTES = limits.MODEL
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
# Servers ping their clients too: a fog notices a facility whose connection silently died (its machine
# gone, a firewall dropping the flow) within about 40 s.
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *_LIMITS,
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]


# A fog's HTTP/2 receive window per connection, fixed (HFL_RECEIVE_WINDOW_KIB; this is its default). With
# gRPC's bandwidth probing the window grows to several MB per connection on a fast link, and gRPC fills
# it before hfl reads a byte: at N=50 that was about 200 MB in the fog while facilities' masked inputs
# waited for the fog's inbound budget (services/fog/links.py). 1 MiB bounds that to 1 MiB per facility;
# a facility a 50 ms round trip away still uploads about 15 MB/s (4 MB in 0.27 s, against 0.11 s with
# probing; bench/receive_window.py). A fog serving facilities far away on fast links can raise it.
FOG_RECEIVE_WINDOW = FOG_RECEIVE_WINDOW_KIB * 1024


def server_options(role: str, receive_window: int = FOG_RECEIVE_WINDOW) -> list[tuple[str, Any]]:
    """SERVER_OPTIONS with gRPC's receive limit lowered to what ``role``'s methods accept (hfl.rpc.limits):
    gRPC refuses a larger message while it arrives, before hfl sees a byte of it. (gRPC takes the FIRST
    value of an option given twice: the limit goes first.)

    Servers that only take small requests (authority, leader) also keep HTTP/2's receive window at its
    64 KiB default (no bandwidth probing): a refused 50 MB request then never has more than that in the
    server's buffers. With probing the window grows to megabytes and the authority's memory grew by
    about 1.4 MB per refused 50 MB call; without it, by 1 MB over 60 calls (measured,
    tests/integration/test_fuzz.py). A fog's window is fixed at ``receive_window`` bytes."""
    limit = limits.server_limit(role)
    if limit <= limits.REPORT:
        window = [("grpc.http2.bdp_probe", 0)]
    elif role == "fog":
        window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", receive_window)]
    else:
        window = []
    return [("grpc.max_receive_message_length", limit), *window, *SERVER_OPTIONS]


def _node_info(
    settings: NodeSettings,
    role: str,
    node_id: str,
    public_key: bytes,
    specialty: str,
    address: str,
    metrics_port: int,
) -> NodeInfo:
    host = settings.resolved_advertise_host()
    return NodeInfo(
        node_id=node_id,
        role=role,
        address=address,
        sign_public_key=public_key,
        specialty=specialty,
        metrics_address=f"{host}:{metrics_port}",
        region=settings.region,
    )


def _ready(
    settings: NodeSettings, role: str, node_id: str, address: str, metrics_port: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """hfl_up=1 and the ready file for `hfl demo` (its content is returned)."""
    UP.labels(role=role).set(1)
    info = {"role": role, "node_id": node_id, "address": address, "metrics_port": metrics_port, **extra}
    write_ready_file(settings.ready_file, info)
    return info


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    address: str
    metrics_port: int
    health: HealthServicer
    tls: NodeTls | None = None
    upkeep: asyncio.Task[None] | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)  # the role's own loops

    def cancel_background(self) -> None:
        """Stop certificate upkeep and the role's background loops (before stopping the server)."""
        for task in [self.upkeep, *self.background]:
            if task is not None:
                task.cancel()

    async def set_serving(self, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    def node_info(
        self,
        settings: NodeSettings,
        role: str,
        node_id: str,
        public_key: bytes,
        specialty: str = "",
        metrics_port: int | None = None,
    ) -> NodeInfo:
        """How this node registers with the authority: its advertised gRPC and metrics addresses.
        ``metrics_port`` overrides the advertised /metrics port (a host process shares one among its
        facilities)."""
        return _node_info(
            settings, role, node_id, public_key, specialty, self.address, metrics_port or self.metrics_port
        )

    async def mark_ready(
        self,
        settings: NodeSettings,
        role: str,
        node_id: str,
        *,
        metrics_port: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Ready to serve: health SERVING, hfl_up=1, and the ready file for `hfl demo` (its content is
        returned). ``metrics_port`` as in node_info."""
        await self.set_serving()
        return _ready(settings, role, node_id, self.address, metrics_port or self.metrics_port, extra)


@dataclass
class DialingNode:
    """A node that serves nothing and only dials out (a facility): no port, no health service; its
    /metrics stay on its own machine. Same life cycle as RunningServer."""

    tls: NodeTls | None
    metrics_port: int
    upkeep: asyncio.Task[None] | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def cancel_background(self) -> None:
        for task in [self.upkeep, *self.background]:
            if task is not None:
                task.cancel()

    def node_info(
        self,
        settings: NodeSettings,
        role: str,
        node_id: str,
        public_key: bytes,
        specialty: str = "",
        metrics_port: int | None = None,
    ) -> NodeInfo:
        """How this node registers: no address (nobody calls it), and where its metrics are."""
        return _node_info(
            settings, role, node_id, public_key, specialty, "", metrics_port or self.metrics_port
        )

    async def mark_ready(
        self,
        settings: NodeSettings,
        role: str,
        node_id: str,
        *,
        metrics_port: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return _ready(settings, role, node_id, "", metrics_port or self.metrics_port, extra)


async def start_dialing_node(settings: NodeSettings, role: str) -> DialingNode:
    """Everything a node needs that serves nothing: its certificate (enrolment the first time, then
    renewal) and its metrics endpoint."""
    tls = await ensure_identity(settings, role)
    if tls is None:
        log.warning(
            "HFL_TLS=false: this %s connects WITHOUT encryption or authentication (debugging only)", role
        )
    metrics_port = start_metrics(settings.metrics_port, settings.listen_host)
    UP.labels(role=role).set(0)
    log.info(
        "%s: listens on no port, connects out only (metrics on %s)",
        role,
        f"{settings.listen_host}:{metrics_port}" if metrics_port >= 0 else "off",
    )
    upkeep = asyncio.create_task(maintain(tls, settings)) if tls is not None else None
    return DialingNode(tls, metrics_port, upkeep)


async def start_server(
    settings: NodeSettings,
    role: str,
    register: Callable[[grpc.aio.Server], None],
    own_identity: OwnIdentity | None = None,
) -> RunningServer:
    """Bind the service (port 0: the OS picks), add health and error mapping, start metrics.

    With HFL_TLS (the default) the node first gets its certificate (enrolment.ensure_identity: enrolment
    with HFL_ENROL_TOKEN the first time; ``own_identity`` for the authority, which issues its own), the
    port is mutual TLS, and every RPC passes hfl.rpc.authz."""
    tls = await ensure_identity(settings, role, own_identity)
    # Order: ErrorInterceptor is outermost; it measures each request against hfl.rpc.limits, then runs
    # the AuthInterceptor's certificate and role check, and only then parses the request.
    auth = AuthInterceptor(tls, settings) if tls is not None else None
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ErrorInterceptor(precheck=auth.precheck if auth is not None else None)
    ]
    if auth is not None:
        interceptors.append(auth)
    window = settings.receive_window_kib * 1024 if isinstance(settings, FogFields) else FOG_RECEIVE_WINDOW
    server = grpc.aio.server(interceptors=interceptors, options=server_options(role, window))
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if tls is None:
        log.warning(
            "HFL_TLS=false: this %s serves WITHOUT encryption or authentication (debugging only)", role
        )
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, tls.server_credentials())
    if port == 0:
        raise OSError(f"could not listen on {settings.listen}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics_port = start_metrics(settings.metrics_port, settings.listen_host)
    address = f"{settings.resolved_advertise_host()}:{port}"
    UP.labels(role=role).set(0)
    log.info(
        "%s listening on %s%s (metrics on %s)",
        role,
        address,
        " with mutual TLS" if tls else "",
        f"{settings.listen_host}:{metrics_port}" if metrics_port >= 0 else "off",
    )
    upkeep = asyncio.create_task(maintain(tls, settings)) if tls is not None else None
    return RunningServer(server, port, address, metrics_port, health, tls, upkeep)


async def start_enrol_server(
    settings: NodeSettings, register: Callable[[grpc.aio.Server], None]
) -> tuple[grpc.aio.Server, str] | None:
    """The authority's enrolment port: TLS with the authority's certificate but no client certificate
    (a new node has none yet); only Enroll is served there, small messages only. None without TLS."""
    tls = default_tls()
    if not settings.tls or tls is None:
        return None
    enrol = EnrolInterceptor(settings)
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(precheck=enrol.precheck), enrol],
        options=[("grpc.max_receive_message_length", 64 * 1024)],
    )
    register(server)
    # dynamic like the main port: the authority's renewed certificate is served from the next handshake
    port = server.add_secure_port(settings.enrol_listen, tls.server_credentials(require_client_auth=False))
    if port == 0:
        raise OSError(f"could not listen on {settings.enrol_listen}")
    await server.start()
    address = f"{settings.resolved_advertise_host()}:{port}"
    log.info("enrolment (one-time tokens) on %s", address)
    return server, address


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    """Atomically write where this service can be reached (used by `hfl demo`)."""
    if not path:
        return
    p = Path(path)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, p)


async def serve_until_stopped(
    running: RunningServer | DialingNode, role: str, stop: asyncio.Event | None = None
) -> None:
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
    await shutdown(running, role)


async def shutdown(running: RunningServer | DialingNode, role: str) -> None:
    """Stop one server gracefully: hfl_up=0, health NOT_SERVING, certificate upkeep and the role's
    background loops cancelled, then the server stops (calls in flight get 2 s)."""
    UP.labels(role=role).set(0)
    if isinstance(running, DialingNode):
        running.cancel_background()
        await asyncio.gather(*running.background, return_exceptions=True)
        return
    await running.health.enter_graceful_shutdown()
    running.cancel_background()
    await running.server.stop(grace=2.0)


_BACKGROUND: set[asyncio.Task[None]] = set()


class Channels:
    """A cache of client channels, one per peer address. ``own_connections``: never share a connection
    with other Channels of the same process (gRPC pools them process-wide by default); used when several
    nodes share one process (services/facility/host.py)."""

    def __init__(self, own_connections: bool = False, tls: NodeTls | None = None) -> None:
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._options = (
            [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_connections else CHANNEL_OPTIONS
        )
        self._tls = tls
        self._generation = -1

    def use(self, tls: NodeTls | None) -> None:
        """Connect with this node's certificate (default: the first TLS identity of the process)."""
        self._tls = tls

    def get(self, address: str, peer: Peer) -> grpc.aio.Channel:
        """The channel to ``peer`` at ``address``: with TLS, the handshake fails unless the server there
        holds ``peer``'s certificate (Peer)."""
        tls = self._tls or default_tls()
        if tls is not None and tls.generation != self._generation:
            self._retire()  # a renewed certificate: new connections from now on
            self._generation = tls.generation
        key = (address, peer.name)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = aio_channel(address, tls, self._options, peer)
        return ch

    def _retire(self) -> None:
        old = list(self._channels.values())
        self._channels.clear()
        if old:

            async def close_later() -> None:
                await asyncio.sleep(60)  # let calls in flight finish
                for ch in old:
                    await ch.close(None)

            task = asyncio.get_running_loop().create_task(close_later())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close(None)
        self._channels.clear()
