"""`hfl serve facilities`: many facilities in one OS process.

Each hosted facility is still its own node: its own identity key and state directory, its own data,
its own connections to the fogs, and its own client channels (no connection is shared between two
facilities). Only the Python interpreter, the event loop and the /metrics endpoint are shared. This is
how `hfl demo` and `hfl bench federation` run hundreds of facilities on a small machine; one process
per facility (`hfl serve facility`) stays the realistic deployment.

The process reads HFL_FACILITIES_FILE, a JSON file::

    {"facilities": [{"HFL_NODE_ID": "facility-01", "HFL_STATE_DIR": "...", "HFL_SHARD": "0/200"}, ...]}

Each entry holds HFL_* settings for one facility; they override the process's own environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hfl.errors import ConfigError
from hfl.hosting import hosted_entries
from hfl.memory import tune_allocator
from hfl.rpc.link import CALLS
from hfl.rpc.metrics import start_metrics
from hfl.rpc.server import Channels, shutdown, write_ready_file
from hfl.rpc.settings import FacilitySettings, load_settings
from services.facility.main import StartedFacility, start
from services.facility.service import Facility

log = logging.getLogger("hfl.facility")

START_AT_ONCE = 5
# Which hosted facility the current task works for; added to every log line.
CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("hfl_hosted_facility", default="")


class _Tag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        node = CURRENT.get()
        if node and not getattr(record, "_hfl_tagged", False):
            record.msg = f"[{node}] {record.msg}"
            record._hfl_tagged = True
        return True


def _install_log_tag() -> None:
    root = logging.getLogger()
    for handler in root.handlers or []:
        handler.addFilter(_Tag())


def _tag_rpcs(node_id: str) -> Callable[[Facility], None]:
    """Wrap the methods that answer the fogs' calls so that everything they log (and the tasks they
    start) names the facility."""

    def prepare(facility: Facility) -> None:
        for name in CALLS.values():
            method = getattr(facility, name)
            if inspect.iscoroutinefunction(method):  # every call a fog makes is request -> answer
                setattr(facility, name, _tag_unary(method, node_id))

    return prepare


def _tag_unary(method: Callable[..., Any], node_id: str) -> Callable[..., Any]:
    @functools.wraps(method)
    async def wrapped(request: Any, context: Any) -> Any:
        CURRENT.set(node_id)
        return await method(request, context)

    return wrapped


def read_hosted(path: str) -> list[dict[str, str]]:
    """The per-facility settings of HFL_FACILITIES_FILE, checked (plain errors, never half-started;
    the checks are hfl/hosting.py's)."""
    if not path:
        raise ConfigError(
            "HFL_FACILITIES_FILE is not set: `hfl serve facilities` needs the JSON list of the "
            "facilities to host"
        )
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"HFL_FACILITIES_FILE {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"HFL_FACILITIES_FILE {path} is not valid JSON ({e})") from None
    out = hosted_entries(doc, path, set(FacilitySettings.model_fields))
    states = [Path(e["HFL_STATE_DIR"]).resolve() for e in out]
    if len(set(states)) != len(states):
        raise ConfigError(f"{path}: two facilities share a state directory; each needs its own")
    return out


def facility_settings(entry: dict[str, str]) -> FacilitySettings:
    overrides = {k.removeprefix("HFL_").lower(): v for k, v in entry.items()}
    return load_settings(role="facility", metrics_port=-1, **overrides)


def _raise_fd_limit() -> None:
    """Each facility keeps its own connections; make room for them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            target = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run(settings: FacilitySettings) -> None:
    # before gRPC starts its threads: less memory kept after busy rounds (hfl/memory.py)
    tune_allocator(return_large_blocks=False)
    entries = read_hosted(settings.facilities_file)
    every = [facility_settings(e) for e in entries]  # all settings checked before anything starts
    _install_log_tag()
    _raise_fd_limit()
    metrics_port = start_metrics(settings.metrics_port, settings.listen_host)
    host_id = settings.resolved_node_id()
    log.info("hosting %d facilities in this process (%s)", len(every), host_id)
    started, failed = await _start_all(every, metrics_port)
    try:
        _refuse_failed(failed, len(every))
        write_ready_file(
            settings.ready_file,
            {
                "role": "facilities",
                "node_id": host_id,
                "metrics_port": metrics_port,
                "facilities": [f.info for f in started],
            },
        )
        log.info("all %d facilities are serving", len(started))
        await _until_stopped()
        log.info("stopping %d facilities", len(started))
    finally:
        await asyncio.gather(*(_stop(f) for f in started), return_exceptions=True)


async def _start_all(
    every: list[FacilitySettings], metrics_port: int
) -> tuple[list[StartedFacility], list[tuple[str, BaseException]]]:
    """Start every hosted facility; returns those that started and (node id, error) of those that did not."""
    gate = asyncio.Semaphore(START_AT_ONCE)

    async def one(s: FacilitySettings) -> StartedFacility:
        node_id = s.resolved_node_id()
        CURRENT.set(node_id)
        # A few at a time: enrolment and registration are not a stampede on the authority. The slot is
        # given back before the facility waits for its fog (named once enough facilities registered).
        return await start(
            s,
            channels=Channels(own_connections=True),
            metrics_port=metrics_port,
            prepare=_tag_rpcs(node_id),
            gate=gate,
        )

    results = await asyncio.gather(*(one(s) for s in every), return_exceptions=True)
    started = [r for r in results if isinstance(r, StartedFacility)]
    failed = [
        (s.resolved_node_id(), r) for s, r in zip(every, results, strict=True) if isinstance(r, BaseException)
    ]
    return started, failed


def _refuse_failed(failed: list[tuple[str, BaseException]], hosted: int) -> None:
    """The process serves all its facilities or none: name each that could not start."""
    if not failed:
        return
    for node_id, err in failed:
        log.error("facility %s could not start: %s", node_id, err)
    raise RuntimeError(
        f"{len(failed)} of {hosted} hosted facilities could not start (first: {failed[0][0]}: {failed[0][1]})"
    )


async def _until_stopped() -> None:
    """Wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _stop(f: StartedFacility) -> None:
    try:
        await shutdown(f.running, "facility")  # also ends certificate renewal and re-registration
    finally:
        await f.channels.close()
