"""`hfl serve facility`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc

from hfl.domain import NodeInfo
from hfl.learning.data import FacilityData, load_facility_data
from hfl.memory import tune_allocator
from hfl.rpc.enrolment import pinned_authority_key
from hfl.rpc.node import register
from hfl.rpc.server import Channels, DialingNode, serve_until_stopped, start_dialing_node
from hfl.rpc.settings import FacilitySettings
from services.facility.dial import FogDialer
from services.facility.faults import facility_class
from services.facility.service import Facility, parse_shard

log = logging.getLogger("hfl.facility")


CONNECT_WAIT_S = 30.0  # at start, how long to wait for the fogs to take this facility's connection


class _Held:
    """A semaphore slot held until ``release`` (which may be called more than once)."""

    def __init__(self, gate: asyncio.Semaphore | None) -> None:
        self.gate = gate

    def release(self) -> None:
        if self.gate is not None:
            self.gate.release()
            self.gate = None


@dataclass
class StartedFacility:
    """One facility that is registered, has its data and is connected to its fogs (several may share a
    process)."""

    node_id: str
    facility: Facility
    running: DialingNode
    channels: Channels
    info: dict[str, Any]


async def start(
    settings: FacilitySettings,
    channels: Channels | None = None,
    metrics_port: int | None = None,
    prepare: Callable[[Facility], None] | None = None,
    gate: asyncio.Semaphore | None = None,
) -> StartedFacility:
    """Register, load the data and connect one facility to the fogs (``hfl serve facility`` and the
    multi-facility host both use this). ``metrics_port`` overrides the advertised /metrics port when
    a host process shares one metrics endpoint among its facilities; ``prepare`` sees the facility
    before it answers any call; ``gate`` (the multi-facility host's) is held while enrolling, registering
    and loading the data, not while waiting for the fog. A facility listens on no port: it dials out
    (services/facility/dial.py)."""
    held = _Held(gate)
    if gate is not None:
        await gate.acquire()
    try:
        node_id = settings.resolved_node_id()
        shard = parse_shard(settings.shard)
        channels = channels or Channels()
        # the honest facility, or for benchmarks and experiments only a subclass (faults.py)
        facility = facility_class(settings)(settings, node_id, channels)
        if prepare is not None:
            prepare(facility)
        # Certificate first, then register (the authority may assign the specialty), then load the data,
        # then connect to the fogs; calls answer UNAVAILABLE until the data are loaded.
        running, node, answer = await _enrol_and_register(settings, facility, channels, metrics_port)
        specialty = answer.specialty or settings.specialty or "hospital"
        facility.ready(_load_data(settings, node_id, specialty, shard), bytes(answer.authority_public_key))
        dialer = _dial_fogs(settings, facility, channels, running, node)
        held.release()  # the authority names a fog once enough facilities have registered: let them
        await _wait_for_fogs(dialer)
        info = await running.mark_ready(
            settings, "facility", node_id, metrics_port=metrics_port, specialty=specialty
        )
        return StartedFacility(node_id, facility, running, channels, info)
    finally:
        held.release()


async def _enrol_and_register(
    settings: FacilitySettings, facility: Facility, channels: Channels, metrics_port: int | None
) -> tuple[DialingNode, NodeInfo, Any]:
    """This facility's certificate (enrolling if it has none yet), then its registration with the
    authority: (the running node, what it registered as, the authority's answer)."""
    running = await start_dialing_node(settings, "facility")
    channels.use(running.tls)  # this facility's own certificate, also when several share a process
    node = running.node_info(
        settings,
        "facility",
        facility.node_id,
        facility.signing_key.public_bytes,
        settings.specialty,
        metrics_port=metrics_port,
    )
    pinned = pinned_authority_key(settings)
    answer = await register(channels, settings.authority, node, pinned_key=pinned)
    return running, node, answer


def _load_data(settings: FacilitySettings, node_id: str, specialty: str, shard: Any) -> FacilityData:
    # Without HFL_SHARD (scaled containers) the node id picks the data stream, so replicas differ.
    data = load_facility_data(
        settings.dataset,
        specialty=specialty,
        shard=shard,
        seed=settings.seed,
        label=settings.label,
        n_patients=settings.n_patients,
        stream=node_id,
    )
    log.info(
        "loaded %d training and %d test records (%s, %s)",
        data.train.n,
        data.test.n,
        specialty,
        settings.dataset,
    )
    return data


def _dial_fogs(
    settings: FacilitySettings, facility: Facility, channels: Channels, running: DialingNode, node: NodeInfo
) -> FogDialer:
    """Start dialling this facility's fogs (and, with HFL_REREGISTER_S, registering again when no round
    comes); each new connection is told to the authority, which schedules a facility through its fog."""
    rejoining: set[asyncio.Task[None]] = set()
    here = {"node": node}  # what this facility registers as: with the fog it is connected to now

    def connected(fog_id: str, again: bool) -> None:  # be scheduled through this fog from the next round
        here["node"] = replace(node, fog=fog_id)
        task = asyncio.create_task(
            register_again(facility, channels, settings.authority, here["node"], fog_id, again)
        )
        rejoining.add(task)
        task.add_done_callback(rejoining.discard)

    dialer = FogDialer(
        facility.node_id,
        channels,
        settings.authority,
        lambda name: lambda request: getattr(facility, name)(request, None),
        tls_on=running.tls is not None,
        on_connect=connected,
    )
    running.background.append(asyncio.create_task(dialer.run()))
    if settings.reregister_s > 0:
        running.background.append(
            asyncio.create_task(
                keep_registered(facility, channels, settings.authority, here, settings.reregister_s)
            )
        )
    return dialer


async def _wait_for_fogs(dialer: FogDialer) -> None:
    """Wait a little for the fogs to take this facility's connection; rounds go on without it meanwhile."""
    if await dialer.wait_connected(CONNECT_WAIT_S):
        return
    missing = sorted(set(dialer.fogs) - dialer.connected)
    log.warning(
        "%s; rounds go on without this facility until it is connected (it keeps trying)",
        f"not yet connected to fog {', '.join(missing)}"
        if missing
        else "the authority has not named this facility's fog yet (it does once the federation's "
        "first facilities, HFL_MIN_FACILITIES, have registered)",
    )


async def register_again(
    facility: Facility, channels: Channels, authority: str, node: NodeInfo, fog_id: str, again: bool
) -> None:
    """Register once more, now connected to ``fog_id``: the authority schedules a facility through the
    fog it is connected to, and stops scheduling one that missed several rounds until it registers
    again (``again``: the connection was lost and is back)."""
    try:
        await register(channels, authority, node, attempts=1, pinned_key=facility.authority_key or None)
        if again:
            log.info(
                "connected to fog %s again and registered again: the next rounds include this facility",
                fog_id,
            )
        else:
            log.info("connected to fog %s and told the authority so", fog_id)
    except (grpc.aio.AioRpcError, ConnectionError) as e:
        log.warning("connected to fog %s but could not tell the authority: %s", fog_id, e)


async def keep_registered(
    facility: Facility, channels: Channels, authority: str, here: dict[str, NodeInfo], idle_s: float
) -> None:
    """Register again whenever no fog has called on this facility for ``idle_s`` seconds.

    The authority stops scheduling a facility that missed several rounds in a row (it was down, or
    cut off) until it registers again; this brings a facility that is running again back by itself."""
    while True:
        await asyncio.sleep(max(1.0, idle_s / 4))
        if time.monotonic() - facility.last_contact < idle_s:
            continue
        facility.last_contact = time.monotonic()  # try again after another idle_s at the earliest
        try:
            await register(
                channels, authority, here["node"], attempts=1, pinned_key=facility.authority_key or None
            )
            log.info("no round for %.0f s: registered with the authority again", idle_s)
        except (grpc.aio.AioRpcError, ConnectionError) as e:
            log.warning("no round for %.0f s and could not register again: %s", idle_s, e)


async def run(settings: FacilitySettings) -> None:
    # before gRPC starts its threads: less memory kept after busy rounds (hfl/memory.py)
    tune_allocator(return_large_blocks=False)
    started = await start(settings)
    try:
        await serve_until_stopped(started.running, "facility")
    finally:
        await started.channels.close()
