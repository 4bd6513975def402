"""`hfl bench secagg`: the cost of secure aggregation over real gRPC on loopback.

One fog process and the facilities in other processes (several facilities share a process to save
memory: each keeps its own identity key, certificate and connection to the fog). This driver plays the
authority (it issues the certificates and signs the round configurations) and the leader (it calls
Fog.RunRound). Mutual TLS is on, as in a federation (``--no-tls`` for plaintext loopback;
``--tls-cost`` runs both and reports what TLS adds). Every facility
sends a random update of dimension D instead of training. The same round is run on the secure path and
on the plain path (float32 on the wire) several times; medians are reported.

Exactness: bench updates lie on the quantisation grid, so their quantised value is known; the unmasked
bucket sum must equal the float64 sum of the survivors' updates bit for bit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hfl.crypto import prg
from hfl.secagg import MIN_BUCKET_SIZE, QuantConfig

WORKER = "services.benchhost.secagg_worker"


# ------------------------------------------------------------------------------------ shared with workers
def bench_rng(seed: int, node_id: str, round_: int) -> np.random.Generator:
    """Not secret: the benchmark's per-facility, per-round update stream (also used to check the sum)."""
    digest = hashlib.sha256(f"hfl-bench-secagg/{seed}/{node_id}/{round_}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def bench_update(rng: np.random.Generator, d: int, clip: float, n_max: int) -> np.ndarray:
    """A random update of L2 norm about ``clip``, on the quantisation grid of a bucket of ``n_max`` (the
    coarsest grid any smaller bucket uses too), so quantising it is exact."""
    u = rng.uniform(-1.0, 1.0, d)
    u *= 0.99 * clip / max(float(np.linalg.norm(u)), 1e-12)
    scale = QuantConfig(clip=clip, max_members=n_max).scale
    return np.round(u * scale) / scale


# ------------------------------------------------------------------------------------ driver
def _status_mb(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process, in MiB; None when unknown (non-Linux)."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """Resident memory (VmRSS) of a live process now, in MiB; None when unknown (non-Linux)."""
    return _status_mb(pid, "VmRSS")


def cpu_s(pid: int) -> float | None:
    """CPU time a live process has used so far (user + system), in seconds; None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _cpu_total(pids: list[int]) -> float | None:
    times = [cpu_s(p) for p in pids]
    return None if any(t is None for t in times) else sum(t for t in times if t is not None)


def reset_peak(pid: int) -> bool:
    """Start a process's VmHWM afresh (Linux: writing 5 to /proc/PID/clear_refs), so the peak read after a
    round is that round's; False when the system does not allow it (then peaks cover the whole run)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Bench:
    def __init__(
        self,
        n: int,
        d: int,
        g: int,
        drop_rate: float,
        rounds: int,
        hosts: int,
        seed: int,
        quiet: bool,
        tls: bool = True,
    ) -> None:
        self.n, self.d, self.g, self.drop_rate, self.rounds, self.seed = n, d, g, drop_rate, rounds, seed
        self.tls = tls
        self.leader_tls: Any = None
        self.hosts = max(1, min(hosts, n))
        self.fog_pid = 0  # set by start()
        self.host_pids: list[int] = []  # the facility host processes, set by start()
        self.secure_only = False  # no plain rounds (so the fog's memory in a secure round is its own)
        self.fog_peaks: list[float] = []  # the fog's peak in each round (warm-up included)
        self.quiet = quiet
        self.tmp = Path(tempfile.mkdtemp(prefix="hfl-bench-secagg-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clip = 1.0

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def _spawn(self, kind: str, ready: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(self.tmp / f"{ready.stem}.log", "wb")  # noqa: SIM115 - kept open for the child's life
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    WORKER,
                    kind,
                    "--dir",
                    str(self.tmp),
                    "--ready",
                    str(ready),
                    "--authority-pub",
                    self.authority.public_bytes.hex(),
                    "--seed",
                    str(self.seed),
                    *(["--tls"] if self.tls else []),
                    *extra,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )

    def start(self) -> tuple[dict[str, Any], dict[str, Any], list[int]]:
        from hfl.crypto.signing import SigningKey

        self.authority = SigningKey.generate()
        self.ids = [f"facility-{i + 1:03d}" for i in range(self.n)]
        if self.tls:
            self.certificates()
        readies = [self.tmp / "fog.ready"]
        self._spawn("fog", readies[0])
        self._wait(readies)
        fog_address = json.loads(readies[0].read_text())["nodes"]["fog-1"]["address"]
        for h in range(self.hosts):  # the facilities dial the fog, as in a real federation
            ids = self.ids[h :: self.hosts]
            readies.append(self.tmp / f"host{h}.ready")
            extra = ["--ids", ",".join(ids), "--n-max", str(self.n), "--fog", fog_address]
            extra += ["--drop-rate", str(self.drop_rate)]  # each facility rolls its own drop-outs
            self._spawn("facilities", readies[-1], *extra)
        self._wait(readies)
        infos = [json.loads(r.read_text()) for r in readies]
        fog = infos[0]["nodes"]["fog-1"]
        facilities = {k: v for info in infos[1:] for k, v in info["nodes"].items()}
        self.fog_pid = int(infos[0]["pid"])
        self.host_pids = [int(info["pid"]) for info in infos[1:]]
        return fog, facilities, [info["pid"] for info in infos]

    def certificates(self) -> None:
        """A certificate authority for this run, and a certificate for the fog, each facility and the
        leader this driver plays, as the authority would issue them at enrolment."""
        from hfl.files import write_public, write_secret
        from hfl.pki.ca import close_ca, open_ca
        from hfl.rpc.tls import NodeTls

        ca = open_ca(self.tmp / "authority")
        try:
            for role, node_id in [("fog", "fog-1"), *(("facility", i) for i in self.ids)]:
                key_pem, cert_pem = ca.issue_local(role, node_id, ["127.0.0.1", "localhost"])
                folder = self.tmp / node_id / "tls"
                write_secret(folder / "key.pem", key_pem)
                write_public(folder / "cert.pem", cert_pem)
                write_public(folder / "ca.pem", ca.cert_pem)
            self.leader_tls = NodeTls(
                "leader", "leader", None, ca.cert_pem, *ca.issue_local("leader", "leader", [])
            )
        finally:
            close_ca(self.tmp / "authority")

    def _wait(self, readies: list[Path]) -> None:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a benchmark worker stopped during start-up; logs in {self.tmp}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark workers did not start in 120 s; logs in {self.tmp}")
            time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    def config(self, round_: int, fog: dict[str, Any], facilities: dict[str, Any]) -> Any:
        from hfl.domain import Bucket, NodeInfo, RoundConfig
        from hfl.schedule import assign_buckets, round_seed
        from hfl.secagg import default_threshold

        seed = round_seed(bytes(32), round_, 0)
        plans = assign_buckets(self.ids, ["fog-1"], self.g, seed)
        fog_node = NodeInfo("fog-1", "fog", fog["address"], bytes.fromhex(fog["key"]))
        nodes = tuple(
            NodeInfo(i, "facility", facilities[i]["address"], bytes.fromhex(facilities[i]["key"]))
            for i in self.ids
        )
        return RoundConfig(
            round=round_,
            attempt=0,
            seed=seed,
            ledger_head=bytes(32),
            epoch=0,
            buckets=tuple(
                Bucket(p.bucket_id, "fog-1", p.members, default_threshold(len(p.members))) for p in plans
            ),
            committee=(),
            quorum=1,
            facilities=nodes,
            fogs=(fog_node,),
        ).sign(self.authority)

    async def run_round(
        self, stub: Any, round_: int, secure: bool, fog: dict[str, Any], facilities: dict[str, Any]
    ) -> dict[str, Any]:
        from hfl.domain import ModelSpec, TrainingPlan
        from hfl.proto.v1 import facility_pb2, fog_pb2
        from hfl.rpc import serde

        config = self.config(round_, fog, facilities)
        params = np.zeros(self.d)
        model = serde.model_to_proto(ModelSpec("logreg", self.d - 1), params, round_)
        plan = TrainingPlan(
            lr=0.1,
            epochs=1,
            batch_size=32,
            clip_update=self.clip,
            secure=secure,
            timeout_s=300,
        )
        req = fog_pb2.RunRoundRequest(
            config=serde.config_to_proto(config), model=model, plan=serde.plan_to_proto(plan)
        )
        at_start = rss_mb(self.fog_pid)
        cpu0 = (cpu_s(self.fog_pid), _cpu_total(self.host_pids), time.process_time())
        per_round_peak = reset_peak(self.fog_pid)
        t0 = time.perf_counter()
        resp = await stub.RunRound(req, timeout=600)
        elapsed = time.perf_counter() - t0
        cpu1 = (cpu_s(self.fog_pid), _cpu_total(self.host_pids), time.process_time())
        cpu = [None if a is None or b is None else b - a for a, b in zip(cpu0, cpu1, strict=True)]
        fog_peak = peak_rss_mb(self.fog_pid) if per_round_peak else None
        if fog_peak is not None:
            self.fog_peaks.append(fog_peak)
        setup = facility_pb2.StartRoundRequest(
            config=req.config, model=model, plan=req.plan, bucket_id="b0"
        ).ByteSize()
        total_bytes = int(resp.bytes_to_facilities) + int(resp.bytes_from_facilities)
        per_fac = total_bytes / self.n - setup
        quant = serde.bucket_quant_configs(plan, config.buckets)  # the secure sums come as integers
        results = [
            serde.bucket_result_from_proto(b, expected_length=self.d, quant=quant) for b in resp.buckets
        ]
        exact = True
        max_err = 0.0
        for r in results:
            if r.abandoned:
                continue
            expected = np.zeros(self.d)
            for m in r.members:
                expected += bench_update(bench_rng(self.seed, m, round_), self.d, self.clip, self.n)
            if secure:
                exact = exact and bool(np.array_equal(r.total, expected))
            max_err = max(max_err, float(np.max(np.abs(r.total - expected))))
        return {
            "s": elapsed,
            "bytes_per_facility": per_fac,
            "exact": exact,
            "max_abs_error": max_err,
            "survivors": sum(r.count for r in results if not r.abandoned),
            "dropouts": sum(len(r.dropped) for r in results),
            "abandoned": sum(1 for r in results if r.abandoned),
            "fog_peak_mb": fog_peak,
            "fog_start_mb": at_start,
            # CPU seconds the round took in the fog, in all facility hosts, and in this driver (the leader)
            "cpu_s": cpu,
        }

    async def measure(self, fog: dict[str, Any], facilities: dict[str, Any]) -> dict[str, Any]:
        from hfl.proto.v1 import fog_pb2_grpc
        from hfl.rpc.server import CHANNEL_OPTIONS
        from hfl.rpc.tls import Peer, aio_channel

        secure: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []
        async with aio_channel(fog["address"], self.leader_tls, CHANNEL_OPTIONS, Peer("fog", "fog-1")) as ch:
            stub = fog_pb2_grpc.FogServiceStub(ch)
            round_ = 0
            for k in range(self.rounds + 1):  # the first pair warms up connections and is not counted
                for is_secure, bucket in ((True, secure), (False, plain)):
                    if self.secure_only and not is_secure:
                        continue
                    round_ += 1
                    row = await self.run_round(stub, round_, is_secure, fog, facilities)
                    if k > 0:
                        bucket.append(row)
                    self.say(
                        f"  round {round_}: {'secure' if is_secure else 'plain '} {row['s']:.3f}s "
                        f"{row['bytes_per_facility'] / 1e6:.3f} MB/facility"
                        + (f" exact={row['exact']} dropouts={row['dropouts']}" if is_secure else "")
                    )
        return {"secure": secure, "plain": plain}


def _cpu_summary(path: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the CPU seconds a round of ``path`` took, by process; ``total``, the median of the rounds'
    totals (not the sum of the three medians, which can differ slightly); and the shortest the round could
    take on this machine if every core were busy with it all the time (that total over the cores)."""
    if not rows or any(x is None for r in rows for x in r["cpu_s"]):
        return {}
    fog, facilities, driver = (statistics.median(r["cpu_s"][i] for r in rows) for i in range(3))
    total = statistics.median(sum(r["cpu_s"]) for r in rows)
    return {
        f"{path}_cpu_s": {
            "fog": round(fog, 3),
            "facilities": round(facilities, 3),
            "driver": round(driver, 3),
            "total": round(total, 3),
            "cores": os.cpu_count(),
            "floor_s": round(total / (os.cpu_count() or 1), 3),
        }
    }


def run_bench(
    n: int,
    d: int,
    g: int,
    drop_rate: float = 0.0,
    rounds: int = 3,
    hosts: int = 0,
    seed: int = 0,
    quiet: bool = False,
    tls: bool = True,
    tls_cost: bool = False,
    secure_only: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and return the summary (see the module docstring). ``tls_cost``: run it once
    without TLS first, and report both."""
    if tls_cost:
        bare = run_bench(n, d, g, drop_rate, rounds, hosts, seed, quiet, tls=False, secure_only=secure_only)
        out = run_bench(n, d, g, drop_rate, rounds, hosts, seed, quiet, tls=True, secure_only=secure_only)
        out["no_tls"] = {k: bare[k] for k in ("secure_round_s", "plain_round_s", "peak_rss_mb", "exact")}
        out["tls_cost"] = {
            "secure": round(out["secure_round_s"] / bare["secure_round_s"], 3),
            "plain": round(out["plain_round_s"] / bare["plain_round_s"], 3) if not secure_only else None,
        }
        out["exact"] = out["exact"] and bare["exact"]
        return out
    if n < MIN_BUCKET_SIZE or d < 1 or g < MIN_BUCKET_SIZE or rounds < 1 or not 0 <= drop_rate < 1:
        raise ValueError(
            f"need --facilities >= {MIN_BUCKET_SIZE}, --dim >= 1, --bucket >= {MIN_BUCKET_SIZE}, "
            "--rounds >= 1, 0 <= --drop-rate < 1"
        )
    if 4 * d > 200 * 1024 * 1024:
        raise ValueError("--dim is too large for one gRPC message (the limit is 256 MiB)")
    hosts = hosts or min(4, max(1, math.ceil(n / 16)))
    load_before = _load()
    bench = Bench(n, d, g, drop_rate, rounds, hosts, seed, quiet, tls)
    bench.secure_only = secure_only
    bench.say(
        f"hfl bench secagg: {n} facilities in {bench.hosts} processes, 1 fog, dimension {d}, buckets of {g}, "
        f"drop rate {drop_rate}, {rounds} measured rounds per path, "
        f"{'mutual TLS' if tls else 'no TLS (plaintext loopback)'}"
    )
    try:
        fog, facilities, pids = bench.start()
        idle_fac = [rss_mb(p) for p in pids[1:]]  # every facility loaded and connected, before any round
        runs = asyncio.run(bench.measure(fog, facilities))
        rss_fog = peak_rss_mb(pids[0])
        rss_fac = [x for x in (peak_rss_mb(p) for p in pids[1:]) if x is not None]
        # what a round adds to a host process, per facility it hosts (process h hosts ids[h::hosts])
        hosted = [len(bench.ids[h :: bench.hosts]) for h in range(len(pids) - 1)]
        per_facility = [
            (peak - idle) / k
            for peak, idle, k in zip((peak_rss_mb(p) for p in pids[1:]), idle_fac, hosted, strict=True)
            if peak is not None and idle is not None
        ]
    finally:
        bench.stop()
    sec, pla = runs["secure"], runs["plain"]

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows)) if rows else math.nan

    secure_s, plain_s = med(sec, "s"), med(pla, "s")

    def round_peak(rows: list[dict[str, Any]]) -> float | None:
        peaks = [r["fog_peak_mb"] for r in rows if r["fog_peak_mb"] is not None]
        return round(max(peaks), 1) if rows and len(peaks) == len(rows) else None

    bpf = med(sec, "bytes_per_facility")
    starts = [r["fog_start_mb"] for r in sec + pla if r["fog_start_mb"] is not None]
    return {
        "facilities": n,
        "dim": d,
        "bucket": g,
        "tls": tls,
        "drop_rate": drop_rate,
        "rounds": rounds,
        "facility_processes": bench.hosts,
        "secure_round_s": round(secure_s, 4),
        "plain_round_s": round(plain_s, 4) if pla else None,
        "ratio": round(secure_s / plain_s, 3) if pla and plain_s > 0 else None,
        "bytes_per_facility": round(bpf),
        "plain_bytes_per_facility": round(med(pla, "bytes_per_facility")) if pla else None,
        "expansion": round(bpf / (4 * d), 4),
        "peak_rss_mb": round(max([*bench.fog_peaks, rss_fog]), 1) if rss_fog is not None else None,
        # the fog's peak during the measured rounds of each path alone (None: the system cannot reset it)
        "fog_peak_secure_mb": round_peak(sec),
        "fog_peak_plain_mb": round_peak(pla),
        # the fog's resident memory when a measured round starts (what it holds between rounds)
        "fog_start_mb": round(max(starts), 1) if starts else None,
        "peak_rss_facility_process_mb": round(max(rss_fac), 1) if rss_fac else None,
        # (a host process's peak - its size with its facilities loaded, before any round) / facilities
        "facility_round_mb_per_hosted": round(max(per_facility), 1) if per_facility else None,
        "facility_process_idle_mb": round(max(x for x in idle_fac if x is not None), 1)
        if any(x is not None for x in idle_fac)
        else None,
        "exact": all(r["exact"] for r in sec),
        "plain_max_abs_error": max(r["max_abs_error"] for r in pla) if pla else None,
        "secure_only": secure_only,
        "dropouts_median": med(sec, "dropouts"),
        **_cpu_summary("secure", sec),
        **_cpu_summary("plain", pla),
        "abandoned_buckets_total": sum(r["abandoned"] for r in sec),
        "keystream_gbps": round(prg.keystream_throughput_gbps(), 2),
        "load_before": load_before,
        "load_after": _load(),
        "note": "bytes_per_facility: all secure-aggregation traffic of one facility (both directions) beyond "
        "the round set-up message (config, model, plan) that both paths send; expansion = "
        "bytes_per_facility / (4 * dim). "
        + ("Mutual TLS on loopback, as in a federation." if tls else "Plaintext loopback (--no-tls)."),
    }


def _load() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (a busy machine makes every timing worthless)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--facilities", type=int, default=8, help="number of facilities N (default 8)")
    p.add_argument("--dim", type=float, default=1e5, help="update dimension D (default 1e5)")
    p.add_argument("--bucket", type=int, default=8, help="bucket size G (default 8)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="chance a facility drops out (secure path)")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per path (default 3; medians)")
    p.add_argument(
        "--processes", type=int, default=0, help="facility host processes (default: about N/16, 1-4)"
    )
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mutual TLS between the fog and the facilities, as in a federation (default on)",
    )
    p.add_argument("--tls-cost", action="store_true", help="run without TLS, then with it, and report both")
    p.add_argument(
        "--secure-only",
        action="store_true",
        help="no plain rounds: the fog's memory in secure rounds, with nothing left over from plain ones",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_bench_secagg(args: argparse.Namespace) -> int:
    out = run_bench(
        args.facilities,
        int(args.dim),
        args.bucket,
        args.drop_rate,
        args.rounds,
        args.processes,
        args.seed,
        quiet=args.json,
        tls=args.tls,
        tls_cost=args.tls_cost,
        secure_only=args.secure_only,
    )
    if args.json:
        print(json.dumps(out))
        return 0 if out["exact"] else 1
    print(f"secure round (median)   {out['secure_round_s']:.3f} s")
    if not out["secure_only"]:
        print(f"plain round (median)    {out['plain_round_s']:.3f} s   (secure / plain = {out['ratio']})")
    print(f"bytes per facility      {out['bytes_per_facility']:,} (plain: {out['plain_bytes_per_facility']})")
    print(f"expansion over float32  {out['expansion']:.4f}  (4 x {int(args.dim):,} bytes of plaintext)")
    print(
        f"fog peak in a round     secure {out['fog_peak_secure_mb']} MB, plain {out['fog_peak_plain_mb']} MB"
    )
    print(
        f"peak memory             fog {out['peak_rss_mb']} MB, largest facility process "
        f"{out['peak_rss_facility_process_mb']} MB"
    )
    print(f"exact unmasked sums     {'yes' if out['exact'] else 'NO'} (bit for bit)")
    print(f"dropouts (median)       {out['dropouts_median']}; abandoned {out['abandoned_buckets_total']}")
    print(f"keystream (AES-CTR)     {out['keystream_gbps']} Gbit/s on this machine")
    for path in ("secure", "plain"):
        cpu = out.get(f"{path}_cpu_s")
        if cpu:
            print(
                f"CPU per {path} round{' ' * (7 - len(path))}fog {cpu['fog']} s, facilities "
                f"{cpu['facilities']} s, driver {cpu['driver']} s (medians); a round's total "
                f"{cpu['total']} s (median) over {cpu['cores']} cores, so no such round can take less "
                f"than {cpu['floor_s']} s here"
            )
    print(f"transport               {'mutual TLS' if out['tls'] else 'plaintext (--no-tls)'}")
    if "tls_cost" in out:
        print(
            f"without TLS             secure {out['no_tls']['secure_round_s']:.3f} s, plain "
            f"{out['no_tls']['plain_round_s']} s: TLS costs x{out['tls_cost']['secure']} (secure), "
            f"x{out['tls_cost']['plain']} (plain)"
        )
    return 0 if out["exact"] else 1


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m hfl.bench.secagg")
    add_arguments(p)
    sys.exit(cmd_bench_secagg(p.parse_args()))


if __name__ == "__main__":
    main()
