"""Client calls with byte accounting and plain-language failures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from hfl.rpc.metrics import BYTES_RECEIVED, BYTES_SENT


@dataclass
class ByteCount:
    sent: int = 0
    received: int = 0
    by_peer: dict[str, int] = field(default_factory=dict)

    def add(self, peer: str, sent: int, received: int) -> None:
        self.sent += sent
        self.received += received
        self.by_peer[peer] = self.by_peer.get(peer, 0) + sent + received


async def call(
    method: Callable[..., Any],
    request: Any,
    *,
    peer: str,
    timeout: float,
    counter: ByteCount | None = None,
) -> Any:
    """Call a unary RPC, counting the bytes of request and response under ``peer`` (a role name)."""
    sent = request.ByteSize()
    BYTES_SENT.labels(peer=peer).inc(sent)
    response = await method(request, timeout=timeout)
    received = response.ByteSize()
    BYTES_RECEIVED.labels(peer=peer).inc(received)
    if counter is not None:
        counter.add(peer, sent, received)
    return response


def describe_rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"
