"""The facility dials out: it keeps one mutual-TLS connection open to its home fog and answers the
fog's calls over it (FogService.Connect; framing in hfl.rpc.link). Nothing connects to a facility, so a
hospital firewall needs no inbound rule.

Which fog: the authority names this facility's home fog (ListNodes' ``home_fog``, hfl.schedule.home_fogs:
a fog of its region when one is up), read again every FOG_REFRESH_S and soon after a connection fails,
since the authority moves the facilities of a fog that is down, and a restarted fog may listen at a new
address. A connection that fails or drops is opened again after a pause that doubles up to RETRY_MAX_S,
with jitter so that many facilities do not all come back at the same instant; calls that were under way
on it are abandoned (the fog counts this facility as a dropout for that round). Whenever a connection is
made, ``on_connect`` runs: the facility registers again saying which fog it is connected to, so the
authority schedules it there from the next round (and again, if it was left out for missing rounds).
gRPC keepalive pings (hfl.rpc.server.CHANNEL_OPTIONS) notice a dead fog within about 40 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from hfl.crypto.x509 import Identity
from hfl.domain import NodeInfo
from hfl.errors import HflError
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.repeats import Repeats
from hfl.rpc import authz, link, serde
from hfl.rpc.client import call, describe_rpc_error
from hfl.rpc.errors import MAX_DETAILS, status_for
from hfl.rpc.metrics import FOG_LINKS
from hfl.rpc.server import Channels
from hfl.rpc.tls import AUTHORITY, Peer

log = logging.getLogger("hfl.facility")

FOG_REFRESH_S = 10.0  # how often the home fog is read again from the authority
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
STEADY_S = 10.0  # a connection that lasted this long resets the pause before the next attempt
REFRESH_MIN_S = 2.0  # the list of fogs is read at most this often
OUTAGE_REFRESH_S = 5.0  # ... and at least this often while a connection to a fog is down


def retry_pause(attempt: int, low: float = RETRY_MIN_S, high: float = RETRY_MAX_S) -> float:
    """Seconds to wait before connection attempt ``attempt`` (0 = the first retry): exponential
    backoff with full jitter, between ``low`` and the doubled step (at most ``high``)."""
    step = min(high, low * (2 ** min(attempt, 30)))
    return low + (step - low) * secrets.randbelow(1_000_001) / 1_000_000


class FogDialer:
    """Keeps this facility connected to its home fog; ``serve`` looks up the facility method that answers
    a call (the FacilityService method names of hfl.rpc.link.CALLS)."""

    def __init__(
        self,
        node_id: str,
        channels: Channels,
        authority: str,
        serve: Callable[[str], Callable[[Any], Any]],
        tls_on: bool,
        on_contact: Callable[[], None] | None = None,
        on_connect: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.channels = channels
        self.authority = authority
        self.serve = serve
        self.tls_on = tls_on
        self.on_contact = on_contact
        # called with the fog's id whenever a connection is made, and whether it is one made before
        self.on_connect = on_connect
        self.refresh = asyncio.Event()  # set when a connection fails: the fog may have moved
        self._ever: set[str] = set()
        self.fogs: dict[str, NodeInfo] = {}
        self.connected: set[str] = set()
        self.changed = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ which fogs
    async def list_fogs(self) -> dict[str, NodeInfo]:
        """This facility's home fog, as the authority names it (empty: none is up yet)."""
        stub = authority_pb2_grpc.AuthorityServiceStub(self.channels.get(self.authority, AUTHORITY))
        request = authority_pb2.ListNodesRequest(node_id=self.node_id)
        resp = await call(stub.ListNodes, request, peer="authority", timeout=10)
        for n in resp.nodes:
            node = serde.node_from_proto(n)
            if node.role == "fog" and node.address and node.node_id == resp.home_fog:
                return {node.node_id: node}
        return {}

    def follow(self, fogs: dict[str, NodeInfo]) -> None:
        """Connect to these fogs (and drop connections to fogs no longer listed)."""
        for fog_id in sorted(set(self._tasks) - set(fogs)):
            now = ", ".join(sorted(fogs)) or "none for now"
            log.info("the authority moved this facility from fog %s (its home fog is now %s)", fog_id, now)
            self._tasks.pop(fog_id).cancel()
        for fog_id, node in sorted(fogs.items()):
            known = self.fogs.get(fog_id)
            if fog_id in self._tasks and known is not None and known.address != node.address:
                self._tasks.pop(fog_id).cancel()  # it moved: dial the new address
            if fog_id not in self._tasks:
                self._tasks[fog_id] = asyncio.create_task(self.keep_connected(node))
        self.fogs = dict(fogs)

    async def run(self) -> None:
        """Follow the registry's fogs for as long as the facility runs."""
        said = Repeats(log)  # a refused certificate fails the same way every few seconds: say it once
        try:
            while True:
                self.refresh.clear()
                try:
                    self.follow(await self.list_fogs())
                    said.clear()
                except (grpc.aio.AioRpcError, HflError) as e:
                    said.say(
                        logging.WARNING, f"could not read the list of fogs from the authority: {_reason(e)}"
                    )
                # While no fog is known yet, or one is unreachable, look more often: it may be
                # starting, or back at a new address.
                settled = bool(self.fogs) and set(self.fogs) <= self.connected
                every = FOG_REFRESH_S if settled else OUTAGE_REFRESH_S
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.refresh.wait(), every)
                await asyncio.sleep(REFRESH_MIN_S)  # at most this often, however many connections fail
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every fog known so far has taken this facility's connection (at most
        ``timeout`` seconds); returns whether it did."""
        deadline = time.monotonic() + timeout
        while not self.fogs or set(self.fogs) - self.connected:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    # ------------------------------------------------------------------ one fog
    async def keep_connected(self, fog: NodeInfo) -> None:
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                await self.session(fog)
                why = "the fog closed the connection"
            except grpc.aio.AioRpcError as e:
                why = describe_rpc_error(e)
            except HflError as e:
                why = f"it sent something this facility refuses ({e})"
            except Exception as e:  # never give up on a fog: log it and dial again
                log.exception("connection to fog %s failed unexpectedly", fog.node_id)
                why = f"unexpected error ({type(e).__name__})"
            if time.monotonic() - began > STEADY_S:
                attempt = 0
            self.refresh.set()  # read the list of fogs again: a restarted fog may have a new address
            pause = retry_pause(attempt)
            attempt += 1
            log.warning("connection to fog %s ended: %s; connecting again in %.1f s", fog.node_id, why, pause)
            await asyncio.sleep(pause)

    async def session(self, fog: NodeInfo) -> None:
        """One connection to ``fog``: answer its calls until it ends. Raises on bad input from the fog
        (the connection is then closed) and when the connection fails."""
        outbox: asyncio.Queue[tuple[int, link.Message] | None] = asyncio.Queue()  # answers, framed as sent
        stream = self._open(fog, outbox)
        # The fog's certificate was checked against its name when the connection was made (hfl.rpc.tls.Peer).
        fog_identity = (
            Identity("fog", fog.node_id, 0, dt.datetime.max.replace(tzinfo=dt.UTC)) if self.tls_on else None
        )
        handlers: set[asyncio.Task[None]] = set()
        try:
            await stream.wait_for_connection()  # the fog took the connection (raises when it did not)
            self._connected(fog)
            await self._receive(stream, outbox, fog_identity, handlers)
        finally:
            self._mark(fog.node_id, False)
            for task in handlers:
                task.cancel()
            outbox.put_nowait(None)
            stream.cancel()

    def _open(
        self, fog: NodeInfo, outbox: asyncio.Queue[tuple[int, link.Message] | None]
    ) -> grpc.aio.StreamStreamCall[bytes, Any]:
        """Open the Connect stream to ``fog``; what is put in ``outbox`` is sent on it (None ends it)."""
        channel = self.channels.get(fog.address, Peer("fog", fog.node_id))
        # Frames are written already serialised and read by hand (hfl.rpc.link): no protobuf object holds
        # a copy of a model on the way.
        connect = channel.stream_stream(
            link.CONNECT, request_serializer=None, response_deserializer=link.parse_frame
        )
        return connect(_outgoing(outbox), metadata=(("hfl-node", self.node_id),))

    def _connected(self, fog: NodeInfo) -> None:
        self._mark(fog.node_id, True)
        log.info("connected to fog %s at %s", fog.node_id, fog.address)
        if self.on_connect is not None:
            self.on_connect(fog.node_id, fog.node_id in self._ever)
        self._ever.add(fog.node_id)

    async def _receive(
        self,
        stream: grpc.aio.StreamStreamCall[bytes, Any],
        outbox: asyncio.Queue[tuple[int, link.Message] | None],
        fog: Identity | None,
        handlers: set[asyncio.Task[None]],
    ) -> None:
        """Read the fog's calls until the stream ends; each is answered by a task of its own (in
        ``handlers`` while it runs)."""
        asm = link.Assembler()
        order = link.CallOrder()
        async for frame in stream:
            got = asm.feed(frame)
            if got is None:
                continue
            call_id, data = got
            order.accept(call_id)
            kind, request = link.decode_call(data)
            task = asyncio.create_task(self._answer(outbox, call_id, kind, request, fog))
            handlers.add(task)
            task.add_done_callback(handlers.discard)
        asm.check_ended()

    async def _answer(
        self,
        outbox: asyncio.Queue[tuple[int, link.Message] | None],
        call_id: int,
        kind: str,
        request: Any,
        fog: Identity | None,
    ) -> None:
        if self.on_contact is not None:
            self.on_contact()
        token = authz.acting_for(fog)
        try:
            response = await self.serve(link.CALLS[kind])(request)
            data: link.Message = link.reply_message(kind, response)  # a masked vector is not copied
            link.check_size(data)  # too large: refused as RESOURCE_EXHAUSTED below, never sent
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, msg = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unexpected error answering %s", link.CALLS[kind])
            else:
                log.info("refused %s from the fog: %s", link.CALLS[kind], msg)
            data = link.encode_refusal(code, msg[:MAX_DETAILS])
        finally:
            authz.done_acting(token)
        outbox.put_nowait((call_id, data))  # one message: its frames stay together on the stream

    def _mark(self, fog_id: str, up: bool) -> None:
        if up and fog_id not in self.connected:
            self.connected.add(fog_id)
            FOG_LINKS.inc()  # summed over the facilities of a process (services/facility/host.py)
        elif not up and fog_id in self.connected:
            self.connected.discard(fog_id)
            FOG_LINKS.dec()
        self.changed.set()


def _reason(e: BaseException) -> str:
    return describe_rpc_error(e) if isinstance(e, grpc.aio.AioRpcError) else str(e)


async def _outgoing(outbox: asyncio.Queue[tuple[int, link.Message] | None]) -> AsyncIterator[bytes]:
    """The frames of each answer put in ``outbox``, until None."""
    while True:
        message = await outbox.get()
        if message is None:
            return
        for frame in link.frames(*message):
            yield frame
