"""The fog's budget for answers it has received but not taken in yet (services/fog/links.py): many
facilities answering at once cost the fog a bounded amount of memory, an answer it has begun to read is
never held up, a facility that stops in the middle of an answer is cut off, and the reader keeps no
answer alive while it waits for the next frame."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator

import grpc
import pytest

from hfl.proto.v1 import common_pb2, facility_pb2
from hfl.rpc import link
from services.fog.links import FacilityLink, InboundBudget, Links


class Chunk(bytearray):
    """A frame's bytes that a weak reference can watch (bytes cannot be)."""


class Feed:
    """A facility's side of the stream: frames put in by the test, read by the fog's reader."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[link.Frame | None] = asyncio.Queue()
        self.read = 0  # frames the fog has taken off the stream

    async def frames(self) -> AsyncIterator[link.Frame]:
        while True:
            frame = await self.queue.get()
            if frame is None:
                return
            self.read += 1
            yield frame
            del frame  # as gRPC's stream: a frame read is not kept here

    def answer(self, call_id: int, data: bytes, chunk: int) -> None:
        for raw in link.frames(call_id, data, chunk=chunk):
            f = link.parse_frame(raw)
            self.queue.put_nowait(link.Frame(f.call_id, f.seq, f.total, Chunk(f.chunk)))


KIND = "secagg_masked_input"


def _reply(data: bytes) -> bytes:
    vec = common_pb2.Vector(dtype=common_pb2.D_TYPE_UINT32, length=len(data) // 4, data=data)
    return link.encode_reply(KIND, facility_pb2.SecAggMaskedInputResponse(sender="f", masked=vec))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_the_budget_admits_what_fits_and_a_large_answer_only_alone() -> None:
    async def main() -> None:
        budget = InboundBudget(100)
        assert await budget.admit(60) == 60
        waiter = asyncio.create_task(budget.admit(50))
        await _settle()
        assert not waiter.done()  # 60 + 50 > 100: it waits
        budget.give(60)
        assert await waiter == 50
        big = asyncio.create_task(budget.admit(1000))
        await _settle()
        assert not big.done()  # larger than the budget: only once nothing else is held
        budget.give(50)
        assert await big == 100 and budget.held == 100  # it takes the whole budget, not more

    asyncio.run(main())
    with pytest.raises(ValueError):
        InboundBudget(0)


def test_a_second_answer_waits_at_its_first_frame_until_the_first_is_taken_in() -> None:
    """Two facilities answer at once with a budget for one answer: the fog reads the first answer whole,
    holds only the first frame of the second, and reads the rest once the first is taken in."""

    async def main() -> None:
        links = Links(InboundBudget(80))
        feeds = {n: Feed() for n in ("f-1", "f-2")}
        links.by_node = {n: FacilityLink(n, links.budget) for n in feeds}
        readers = [asyncio.create_task(links.by_node[n].read(feeds[n].frames())) for n in feeds]
        for ln in links.by_node.values():
            ln.outbox = asyncio.Queue()  # nothing reads the outbox here
        calls = [asyncio.create_task(links.call(n, KIND, b"", 5.0)) for n in feeds]
        await _settle()
        feeds["f-1"].answer(1, _reply(b"a" * 20), chunk=16)  # 4 frames
        await _settle()
        feeds["f-2"].answer(1, _reply(b"b" * 20), chunk=16)
        first = await calls[0]
        assert bytes(first.data) == b"a" * 20
        second = await calls[1]
        assert bytes(second.data) == b"b" * 20
        assert links.budget.held == 0
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(main())


def test_the_reader_holds_only_the_first_frame_of_an_answer_the_budget_cannot_take_yet() -> None:
    async def main() -> None:
        budget = InboundBudget(50)
        ln = FacilityLink("f-1", budget)
        feed = Feed()
        reader = asyncio.create_task(ln.read(feed.frames()))
        ln.book.issue(KIND)
        ln.waiting[1] = asyncio.get_running_loop().create_future()
        budget.held = 50  # someone else's answers fill the budget
        budget._room.clear()
        feed.answer(1, _reply(b"c" * 30), chunk=10)
        await _settle()
        assert feed.read == 1  # the first frame only; the rest waits at the facility
        budget.give(50)
        await _settle()
        assert feed.read == feed.read and ln.waiting == {} and 1 in ln.held  # delivered, counted
        ln.taken(1)
        assert budget.held == 0
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(main())


def test_a_facility_that_stops_in_the_middle_of_an_answer_is_cut_off_and_frees_the_budget() -> None:
    async def main() -> None:
        links = Links(InboundBudget(1000))
        feed = Feed()
        ln = links.by_node["f-1"] = FacilityLink("f-1", links.budget)
        reader = asyncio.create_task(ln.read(feed.frames()))
        call = asyncio.create_task(links.call("f-1", KIND, b"", 0.2))
        await _settle()
        frames = [link.parse_frame(f) for f in link.frames(1, _reply(b"d" * 40), chunk=10)]
        feed.queue.put_nowait(frames[0])  # the first frame, then nothing
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ln.closed and ln.outbox.get_nowait() == (1, b"")  # the call went out
        assert ln.outbox.get_nowait() is None  # then the stream ends: Links.serve stops its reader
        assert links.budget.held > 0
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        assert links.budget.held == 0

    asyncio.run(main())


def test_the_reader_keeps_no_answer_alive_while_it_waits_for_the_next_frame() -> None:
    """A regression: the reader's loop variables kept each connection's last answer (a whole masked
    input, when it came in one frame), so 50 facilities cost 50 model-sized buffers after every round."""

    async def main() -> None:
        links = Links()
        feed = Feed()
        ln = links.by_node["f-1"] = FacilityLink("f-1", links.budget)
        reader = asyncio.create_task(ln.read(feed.frames()))

        async def take_in() -> None:  # as the fog's driver does: decode, add to a sum, let go
            answer = await links.call("f-1", KIND, b"", 5.0)
            assert bytes(answer.data) == b"e" * 40

        call = asyncio.create_task(take_in())
        await _settle()
        feed.answer(1, _reply(b"e" * 40), chunk=link.SEND_CHUNK)  # one frame
        watched = weakref.ref(feed.queue._queue[0].chunk)  # type: ignore[attr-defined]
        await call
        await _settle()
        gc.collect()
        assert watched() is None and not reader.done()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    asyncio.run(main())
