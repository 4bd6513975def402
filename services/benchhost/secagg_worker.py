"""Worker processes of `hfl bench secagg`: one fog, or several bench facilities in one process.

Bench facilities are the real Facility (same calls over the same connection to the fog, same
secure-aggregation code) with two
changes for benchmarking only: no local data or training (the update is `bench_update`, a random
clipped vector on the quantisation grid, so the driver can recompute the exact expected sum), and no
check of the model against local features. Transport: mutual TLS with the certificates the driver
issued (``--tls``), or plaintext loopback. It lives outside `hfl` because it hosts services, which the
library never imports; hfl.bench.secagg starts it by module name. Usage:
python -m services.benchhost.secagg_worker fog|facilities ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import override  # mypy checks that each overridden facility method still exists

from hfl.bench.secagg import bench_rng, bench_update  # light: numpy only
from hfl.domain import NodeInfo, RoundConfig, TrainingPlan
from hfl.memory import tune_allocator
from hfl.proto.v1 import fog_pb2_grpc
from hfl.rpc.node import load_identity
from hfl.rpc.server import Channels, start_server, write_ready_file
from hfl.rpc.settings import FacilitySettings, FogSettings
from hfl.rpc.tls import NodeTls
from services.fog.service import Fog

if TYPE_CHECKING:
    from hfl.learning.data import FacilityData

# The facilities' modules (data, training, privacy accounting) are imported by the facilities' worker
# only: the fog's worker then holds what `hfl serve fog` holds (74 MB after imports, not 144).


def _node(node_id: str, state: Path, seed: int, tls: bool) -> dict[str, Any]:
    """What the bench's fog and facilities share: loopback, no metrics, quiet logs."""
    return {
        "node_id": node_id,
        "listen": "127.0.0.1:0",
        "metrics_port": -1,
        "state_dir": state,
        "tls": tls,
        "seed": seed,
        "log_level": "WARNING",
    }


def _fog_settings(node_id: str, state: Path, seed: int, tls: bool) -> FogSettings:
    return FogSettings(role="fog", **_node(node_id, state, seed, tls))


def _facility_settings(node_id: str, state: Path, seed: int, tls: bool) -> FacilitySettings:
    # the bench's facilities take plain rounds too, for the comparison
    return FacilitySettings(role="facility", secagg=False, **_node(node_id, state, seed, tls))


def _tiny_data() -> FacilityData:
    from hfl.learning.data import Dataset, FacilityData

    ds = Dataset(np.zeros((2, 1)), np.array([0, 1]), ("x",))
    return FacilityData(ds, ds, "hospital", "bench")


async def run_fog(out: Path, authority_pub: bytes, seed: int, tls: bool) -> dict[str, Any]:
    settings = _fog_settings("fog-1", out / "fog-1", seed, tls)
    fog = Fog(settings, "fog-1")
    running = await start_server(
        settings, "fog", lambda s: fog_pb2_grpc.add_FogServiceServicer_to_server(fog, s)
    )
    fog.ready(authority_pub)
    key = load_identity(settings.state_dir)
    return {"fog-1": {"address": running.address, "key": key.public_bytes.hex(), "_running": running}}


def _answering(facility: Any) -> Callable[[str], Callable[[Any], Any]]:
    return lambda name: lambda request: getattr(facility, name)(request, None)


def _bench_facility_class(n_max: int) -> Any:
    """BenchFacility with the update stream the driver recomputes (imported here: facilities' modules only
    in the facilities' worker)."""
    from services.facility.bench import BenchFacility

    class BenchSecAggFacility(BenchFacility):
        """BenchFacility with the update stream the driver recomputes to check the unmasked sums."""

        @override
        def round_rng(self, config: RoundConfig) -> np.random.Generator:
            return bench_rng(self.settings.seed, self.node_id, config.round)

        @override
        def local_update(
            self,
            model: Any,
            params: np.ndarray,
            plan: TrainingPlan,
            rng: np.random.Generator,
            *args: Any,
            **kwargs: Any,
        ) -> np.ndarray:
            return bench_update(rng, params.size, plan.clip_update, n_max)

    return BenchSecAggFacility


async def run_facilities(
    out: Path,
    ids: list[str],
    authority_pub: bytes,
    seed: int,
    n_max: int,
    fog_address: str,
    tls: bool,
    drop_rate: float = 0.0,
) -> dict[str, Any]:
    """Start bench facilities in this process; with ``drop_rate`` each drops out of secure aggregation
    at a random stage with that chance (the plain path of the comparison never drops out)."""
    from services.facility.dial import FogDialer
    from services.facility.faults import FaultySecureAggregation

    BenchSecAggFacility = _bench_facility_class(n_max)
    started: dict[str, Any] = {}
    fog = NodeInfo("fog-1", "fog", fog_address, b"")
    for node_id in ids:
        settings = _facility_settings(node_id, out / node_id, seed, tls).model_copy(
            update={"drop_rate": drop_rate}
        )
        channels = Channels(own_connections=True, tls=_identity("facility", node_id, out) if tls else None)
        fac = BenchSecAggFacility(settings, node_id, channels)
        if drop_rate > 0:
            fac.secure = FaultySecureAggregation(fac, settings)
        fac.ready(_tiny_data(), authority_pub)
        dialer = FogDialer(node_id, channels, "", _answering(fac), tls_on=tls)
        dialer.follow({"fog-1": fog})  # no authority in this benchmark: the fog is given
        started[node_id] = {"address": "", "key": fac.signing_key.public_bytes.hex(), "_dialer": dialer}
    for v in started.values():
        if not await v["_dialer"].wait_connected(60):
            raise RuntimeError(f"a bench facility could not connect to the fog at {fog_address}")
    return started


def _identity(role: str, node_id: str, out: Path) -> NodeTls:
    """The certificate the driver issued to this node (several facilities share this process, so each
    connects with its own rather than the process's first)."""
    folder = out / node_id / "tls"
    return NodeTls(
        role,
        node_id,
        folder,
        (folder / "ca.pem").read_bytes(),
        (folder / "key.pem").read_bytes(),
        (folder / "cert.pem").read_bytes(),
    )


async def main_async(args: argparse.Namespace) -> None:
    # as `hfl serve fog` and `hfl serve facility` do (hfl/memory.py)
    tune_allocator(return_large_blocks=args.kind == "fog")
    out = Path(args.dir)
    pub = bytes.fromhex(args.authority_pub)
    if args.kind == "fog":
        started = await run_fog(out, pub, args.seed, args.tls)
    else:
        ids = args.ids.split(",")
        started = await run_facilities(
            out, ids, pub, args.seed, args.n_max, args.fog, args.tls, args.drop_rate
        )
    info = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in started.items()}
    write_ready_file(args.ready, {"pid": os.getpid(), "nodes": info})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for v in started.values():
        if "_running" in v:
            await v["_running"].server.stop(grace=0.5)


def main() -> None:
    p = argparse.ArgumentParser(prog="services.benchhost.secagg_worker")
    p.add_argument("kind", choices=("fog", "facilities"))
    p.add_argument("--dir", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--authority-pub", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ids", default="")
    p.add_argument("--n-max", type=int, default=8)
    p.add_argument("--fog", default="", help="the fog's address (facilities dial it)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="chance a facility drops out (secure path)")
    p.add_argument("--tls", action="store_true", help="mutual TLS with the certificates in DIR/<node>/tls")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s bench-worker %(levelname)s %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
