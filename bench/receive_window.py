"""What the fog's fixed receive window costs a facility far away (issue 17, stop 30).

A fog serves with gRPC's HTTP/2 bandwidth probing off and a fixed window of 1 MiB per connection
(``hfl.rpc.server.FOG_RECEIVE_WINDOW``), so gRPC cannot buffer megabytes per facility before the fog reads
them. A window caps what one connection can carry per round trip: at most window / RTT. This measures it.

A facility-like client uploads a masked input (4 MB at d=10^6, 40 MB at d=10^7) in frames of 256 KiB on
one stream, as a facility's link does, to a server with the fog's options, through a proxy on loopback
that holds every chunk of bytes for a fixed delay in each direction (the proxy stands in for a wide-area
link; the machine has no netem). Compared: the fog's options now, gRPC's default (probing on, what the
fog used before) and HTTP/2's bare 64 KiB window. Plaintext: the window is the same with TLS.

    .venv/bin/python bench/receive_window.py --out bench/results/receive_window.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from hfl.rpc.server import CHANNEL_OPTIONS, server_options

FRAME = 256 * 1024
MODES: dict[str, list[tuple[str, Any]]] = {
    "fog (window fixed at 1 MiB)": server_options("fog"),
    "gRPC default (probing on)": [("grpc.max_receive_message_length", 64 << 20)],
    "bare HTTP/2 (64 KiB)": [("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0)],
}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            chunk = await reader.read(1 << 16)
            await queue.put((time.monotonic() + delay, chunk))
            if not chunk:
                return

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, asyncio.CancelledError):
        writer.close()


async def measure(options: list[tuple[str, Any]], delay_ms: float, size: int, repeats: int) -> list[float]:
    server = aio.server(options=options)

    async def upload(frames: Any, context: Any) -> bytes:
        n = 0
        async for frame in frames:
            n += len(frame)
        return str(n).encode()

    handler = grpc.method_handlers_generic_handler(
        "bench.Window", {"Upload": grpc.stream_unary_rpc_method_handler(upload)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    delay = delay_ms / 1000

    pipes: list[asyncio.Task[Any]] = []

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        pipes.append(asyncio.ensure_future(_pipe(reader, up_writer, delay)))
        pipes.append(asyncio.ensure_future(_pipe(up_reader, writer, delay)))

    proxy = await asyncio.start_server(forward, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    frame = os.urandom(FRAME)
    times: list[float] = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{proxy_port}", options=CHANNEL_OPTIONS) as channel:
            call = channel.stream_unary("/bench.Window/Upload")
            await call(iter([b"x"]), timeout=60)  # connect first: a round's connection is already open
            for _ in range(repeats):
                t0 = time.perf_counter()
                answer = await call(iter([frame] * (size // FRAME)), timeout=600)
                times.append(time.perf_counter() - t0)
                assert int(answer) == size
    finally:
        proxy.close()
        await server.stop(None)
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--delays-ms", type=float, nargs="*", default=[0, 5, 25, 50], help="one way")
    p.add_argument("--sizes-mb", type=int, nargs="*", default=[4, 40])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    rows = []
    for size_mb in a.sizes_mb:
        for delay in a.delays_ms:
            for mode, options in MODES.items():
                load = os.getloadavg()
                times = asyncio.run(measure(options, delay, size_mb * FRAME * 4, a.repeats))
                median = statistics.median(times)
                row = {
                    "upload_mb": size_mb,
                    "one_way_delay_ms": delay,
                    "server": mode,
                    "median_s": round(median, 3),
                    "times_s": [round(t, 3) for t in times],
                    "mb_per_s": round(size_mb / median, 1),
                    "load_before": [round(x, 2) for x in load],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.out:
        a.out.write_text(
            json.dumps(
                {
                    "what": __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
