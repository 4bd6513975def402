"""The fog's end of the facilities' connections (FogService.Connect): one stream per facility, opened by
the facility, over which the fog makes its calls. Framing and call bookkeeping are in hfl.rpc.link.

A call to a facility that is not connected, or whose connection drops while the call waits, fails with
UNAVAILABLE, and one that gets no answer in time with DEADLINE_EXCEEDED: to the round, the facility did
not answer (the same as a facility that is down). A facility that connects again replaces its old
stream; calls still waiting on the old one fail, so a facility that reconnects mid-round is a dropout
for that round and takes part in the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hfl.errors import HflError, clip
from hfl.rpc import link
from hfl.rpc.client import ByteCount
from hfl.rpc.metrics import BYTES_RECEIVED, BYTES_SENT, LINKS

log = logging.getLogger("hfl.fog")


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a call to a facility fails with, shaped like a failed gRPC call so that callers treat
    both transports alike (hfl.rpc.client.describe_rpc_error, services/fog/secure.no_answer)."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


INBOUND_BUDGET = 32 * 1024 * 1024
"""Bytes of facilities' answers the fog holds before it has taken them in (decoded and, for masked
inputs, added to their bucket's sum). Past it, no connection reads on until answers are taken in, so
the rest waits at the facilities under gRPC's flow control: what the fog holds of the answers does not
grow with the number of facilities that answer at once (gRPC's own buffers still do, about 4 MB per
connection: bench/results/NOTES-speed.md)."""


class InboundBudget:
    """The fog's budget for facilities' answers it holds before taking them in (``INBOUND_BUDGET``). The
    first frame of an answer says how large the whole answer is; the connection then waits, holding that
    one frame, until the budget has room for it (or is empty, for an answer larger than the budget), and
    reads the rest at once. So the fog holds at most the budget plus one frame per connection, however many
    facilities answer at once, and an answer it has begun to read is never held up by others."""

    def __init__(self, limit: int = INBOUND_BUDGET) -> None:
        if limit < 1:
            raise ValueError("the inbound budget must be at least 1 byte")
        self.limit = limit
        self.held = 0
        self._room = asyncio.Event()
        self._room.set()

    async def admit(self, size: int) -> int:
        """Wait until ``size`` more bytes fit (or nothing is held), hold them and return how many were held
        (at most ``limit``: a larger answer takes the whole budget)."""
        size = min(size, self.limit)
        while self.held and self.held + size > self.limit:
            self._room.clear()
            await self._room.wait()
        self.held += size
        return size

    def give(self, size: int) -> None:
        self.held -= size
        self._room.set()  # every waiter looks again; those that still do not fit wait again


class FacilityLink:
    """One facility's stream: frames to send, and the calls waiting for their answers."""

    def __init__(self, node_id: str, budget: InboundBudget | None = None) -> None:
        self.node_id = node_id
        self.budget = budget or InboundBudget()
        self.held: dict[int, int] = {}  # call id -> bytes of its answer, delivered but not yet taken in
        self._reading = 0  # bytes of the budget held by the answer being read
        self._reading_call = 0  # the call it answers
        # Messages to send, cut into frames only as the stream takes them: the fog never holds more than
        # one frame per connection besides the message itself, which all members of a bucket share.
        self.outbox: asyncio.Queue[tuple[int, link.Message] | None] = asyncio.Queue()
        self.book = link.CallBook()
        self.waiting: dict[int, asyncio.Future[bytes | memoryview]] = {}
        self.closed = False
        self.failure: HflError | None = None  # the facility's bad input that closed the stream, if any

    async def read(self, frames_in: AsyncIterator[link.Frame]) -> None:
        """Take the facility's frames and deliver its answers until its side of the stream ends; then
        close the stream (bad input from the facility is kept in ``failure``)."""
        node_id = self.node_id
        asm = link.Assembler()
        frames = aiter(frames_in)
        try:
            while True:
                frame = await self._next_frame(frames, asm.partial)
                if frame is None:
                    break
                self._feed(asm, frame)
                del frame  # not kept while waiting for the next: a whole answer, when it is one frame
            asm.check_ended()
            self.close(f"facility {node_id} closed its connection")
        except HflError as e:
            log.warning("closing the connection of %s: %s", node_id, e)
            self.failure = e
            self.close(f"the connection of facility {node_id} was closed: {e}")
        except (asyncio.CancelledError, grpc.aio.AioRpcError) as e:
            self.close(f"facility {node_id} lost its connection")
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.budget.give(self._reading)  # a message cut short, or frames read past a failure
            self._reading = 0

    def _feed(self, asm: link.Assembler, frame: link.Frame) -> None:
        got = asm.feed(frame)
        if got is not None:
            self.deliver(*got)

    async def _next_frame(self, frames: AsyncIterator[link.Frame], continuing: bool) -> link.Frame | None:
        """The next frame (None at the end of the stream). The first frame of an answer to a call the fog
        awaits waits for the budget to admit the whole answer (``InboundBudget.admit``); its share stays
        in ``_reading`` until the answer is delivered."""
        frame = await anext(frames, None)
        if frame is not None and not continuing and frame.call_id in self.book.pending:
            self._reading = await self.budget.admit(frame.total)
            self._reading_call = frame.call_id  # admitted: from here on, stopping is the facility's doing
        return frame

    def send(self, call_id: int, data: link.Message) -> None:
        link.check_size(data)
        self.outbox.put_nowait((call_id, data))  # a message's frames stay together on the stream

    def deliver(self, call_id: int, data: bytes | memoryview) -> None:
        reading, self._reading, self._reading_call = self._reading, 0, 0  # now the answer's share
        if self.book.answer(call_id) is None:
            log.info("%s answered call %d after the fog stopped waiting; dropped", self.node_id, call_id)
            self.budget.give(reading)
            return
        fut = self.waiting.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(data)
            self.held[call_id] = reading
        else:
            self.budget.give(reading)

    def taken(self, call_id: int) -> None:
        """The answer to ``call_id`` was taken in, or the fog stopped waiting for it: its bytes leave the
        budget. A facility stopped in the middle of that answer is cut off (it would hold the budget)."""
        size = self.held.pop(call_id, 0)
        if size:
            self.budget.give(size)
        if self._reading_call == call_id:
            log.warning("%s stopped in the middle of its answer to call %d", self.node_id, call_id)
            self.close(f"facility {self.node_id} stopped in the middle of an answer")

    def close(self, why: str) -> None:
        """End the stream; every call still waiting fails with UNAVAILABLE."""
        if self.closed:
            return
        self.closed = True
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(rpc_error(grpc.StatusCode.UNAVAILABLE, why))
        self.waiting.clear()
        self.outbox.put_nowait(None)


class Links:
    """The facilities connected to this fog, by node id."""

    def __init__(self, budget: InboundBudget | None = None) -> None:
        self.by_node: dict[str, FacilityLink] = {}
        self.budget = budget or InboundBudget()

    def connected(self, node_id: str) -> bool:
        return node_id in self.by_node

    async def call(
        self,
        node_id: str,
        kind: str,
        data: link.Message,
        timeout: float,
        counter: ByteCount | None = None,
    ) -> Any:
        """Send a serialised FogCall (hfl.rpc.link.encode_call or encode_call_with) of ``kind`` to
        ``node_id`` and wait up to ``timeout`` seconds for its answer; returns the response message.
        Raises grpc.aio.AioRpcError (UNAVAILABLE, DEADLINE_EXCEEDED, or the facility's own refusal) or
        InvalidInput for an answer that does not fit the call (the facility's stream is closed for it)."""
        ln = self.by_node.get(node_id)
        if ln is None or ln.closed:
            raise rpc_error(
                grpc.StatusCode.UNAVAILABLE, f"facility {clip(node_id)} is not connected to this fog"
            )
        call_id = ln.book.issue(kind)
        try:
            answer = await self._answer(ln, call_id, data, timeout)
            BYTES_RECEIVED.labels(peer="facility").inc(len(answer))
            if counter is not None:
                counter.add("facility", len(data), len(answer))
            try:
                reply = link.decode_reply(answer, kind)
            except HflError as e:
                ln.close(f"closed: {e}")
                raise
        finally:
            ln.taken(call_id)  # decoded (its large field is a view, taken in by the caller at once)
        if isinstance(reply, link.Refused):
            raise rpc_error(reply.code, reply.details)
        return reply

    @staticmethod
    async def _answer(
        ln: FacilityLink, call_id: int, data: link.Message, timeout: float
    ) -> bytes | memoryview:
        """Send call ``call_id`` down ``ln`` and wait for its answer's bytes."""
        fut: asyncio.Future[bytes | memoryview] = asyncio.get_running_loop().create_future()
        ln.waiting[call_id] = fut
        try:
            ln.send(call_id, data)
            BYTES_SENT.labels(peer="facility").inc(len(data))
            async with asyncio.timeout(timeout):  # not wait_for: the caller resumes as soon as it is set
                return await fut
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"facility {ln.node_id} did not answer within {timeout:.0f} s",
            ) from None
        finally:
            if call_id in ln.waiting:
                ln.waiting.pop(call_id, None)
                ln.book.give_up(call_id)

    async def serve(
        self,
        node_id: str,
        frames_in: AsyncIterator[link.Frame],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        """The body of Connect for ``node_id``: yields the frames to send (serialised) while a reader
        takes the facility's frames (read by hfl.rpc.link.parse_frame). Bad input from the facility
        raises (the stream closes with its status)."""
        ln = self._attach(node_id)
        reader = asyncio.create_task(ln.read(frames_in))
        log.info("%s connected", node_id)
        try:
            await context.send_initial_metadata(())  # tells the facility its connection is taken
            while True:
                message = await ln.outbox.get()
                if message is None:
                    break
                for frame in link.frames(*message):
                    yield frame
        finally:
            await self._detach(ln, reader)
        if ln.failure is not None:
            raise ln.failure

    def _attach(self, node_id: str) -> FacilityLink:
        """A new stream for ``node_id``, replacing (and closing) its previous one."""
        old = self.by_node.get(node_id)
        if old is not None:
            log.info("%s connected again; its previous connection is closed", node_id)
            old.close(f"facility {node_id} connected again")
        ln = self.by_node[node_id] = FacilityLink(node_id, self.budget)
        LINKS.set(len(self.by_node))
        return ln

    async def _detach(self, ln: FacilityLink, reader: asyncio.Task[None]) -> None:
        """The stream ended: close it, stop its reader, and forget it unless a newer one replaced it."""
        node_id = ln.node_id
        ln.close(f"the connection of facility {node_id} ended")
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if self.by_node.get(node_id) is ln:
            del self.by_node[node_id]
        LINKS.set(len(self.by_node))
        log.info("%s disconnected", node_id)
