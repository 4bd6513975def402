"""What every service does at start-up: identity key, logging, registration with the authority."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import grpc

from hfl.crypto.pow import pow_challenge, solve
from hfl.crypto.signing import SigningKey
from hfl.domain import NodeInfo
from hfl.files import private_dir, write_secret
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc import serde
from hfl.rpc.client import call
from hfl.rpc.enrolment import check_authority_key
from hfl.rpc.server import Channels
from hfl.rpc.settings import NodeSettings
from hfl.rpc.tls import AUTHORITY

log = logging.getLogger("hfl.node")


def setup_logging(settings: NodeSettings, role: str) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {role}[{settings.resolved_node_id()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def load_identity(state_dir: Path, name: str = "identity.key") -> SigningKey:
    """The node's Ed25519 identity key, created on first start and kept in the state directory."""
    private_dir(state_dir)  # 0700: keys, certificates and databases are this service's alone
    path = state_dir / name
    if path.exists():
        return SigningKey.from_private_bytes(path.read_bytes())
    key = SigningKey.generate()
    write_secret(path, key.private_bytes())
    return key


async def register(
    channels: Channels,
    authority: str,
    node: NodeInfo,
    *,
    attempts: int = 120,
    pinned_key: bytes | None = None,
) -> authority_pb2.RegisterResponse:
    """Register with the authority, retrying while it starts. Returns its answer (incl. its public key).

    Validators first solve the authority's registration proof of work."""
    stub = authority_pb2_grpc.AuthorityServiceStub(channels.get(authority, AUTHORITY))
    delay = 0.2
    for i in range(attempts):
        try:
            nonce = 0
            if node.role == "validator":
                info = await call(
                    stub.ListNodes, authority_pb2.ListNodesRequest(), peer="authority", timeout=10
                )
                if info.pow_difficulty:
                    challenge = pow_challenge(
                        bytes(info.authority_public_key), node.node_id, node.sign_public_key
                    )
                    log.info("solving the registration proof of work (%d bits) ...", info.pow_difficulty)
                    nonce = await asyncio.to_thread(solve, challenge, int(info.pow_difficulty))
            request = authority_pb2.RegisterRequest(node=serde.node_to_proto(node), pow_nonce=nonce)
            answer = await call(stub.Register, request, peer="authority", timeout=10)
            check_authority_key(bytes(answer.authority_public_key), pinned_key)
            return answer
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if i % 10 == 0:
                log.info("waiting for the authority at %s ...", authority)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
    raise ConnectionError(f"the authority at {authority} did not answer; is it running?")
