"""`hfl demo`: a whole federation as separate local processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hfl.domain import SPECIALTIES, RoundEvent
from hfl.errors import ConfigError


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--facilities", type=int, default=8, help="number of facilities (default 8)")
    p.add_argument("--fogs", type=int, default=2, help="number of fog nodes (default 2)")
    p.add_argument("--validators", type=int, default=4, help="committee size 3f+1 (default 4)")
    p.add_argument("--rounds", type=int, default=10, help="rounds to commit (default 10)")
    p.add_argument("--dataset", default="synthetic", help="synthetic | breast_cancer | csv:DIR")
    p.add_argument("--label", help="label column for csv data")
    p.add_argument("--validation-csv", help="validation CSV for the validators (csv data)")
    p.add_argument("--model", choices=("logreg", "mlp"), default="logreg")
    p.add_argument("--hidden", type=int, default=16, help="hidden units of the mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default runs/<timestamp>, runs/latest points at it)")
    p.add_argument("--keep-running", action="store_true", help="keep serving after the last round until Ctrl-C")
    p.add_argument("--secagg", action=argparse.BooleanOptionalAction, default=False,
                   help="mask updates with secure aggregation (--no-secagg: plain sums, for comparison)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="chance a facility drops out of a round")
    p.add_argument("--bucket-size", type=int, default=4, help="facilities per bucket (default 4)")
    p.add_argument("--rule", default="mean", help="aggregation rule at the leader")
    p.add_argument("--f", type=int, default=0, help="bad buckets the rule must tolerate")
    p.add_argument("--lr", type=float, default=0.0, help="local learning rate (default: built-in)")
    p.add_argument("--epochs", type=int, default=0, help="local epochs per round (default: built-in)")
    p.add_argument("--batch-size", type=int, default=0, help="local batch size (default: built-in)")
    p.add_argument("--clip-update", type=float, default=0.0, help="norm bound of one update (default: built-in)")
    p.add_argument("--round-timeout", type=float, default=120.0, help="seconds a fog waits for its facilities")


@dataclass
class Proc:
    role: str
    node_id: str
    popen: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    info: dict[str, Any] = field(default_factory=dict)


class Federation:
    """Starts, watches and stops the service processes of one demo run."""

    def __init__(self, out: Path, common_env: dict[str, str]) -> None:
        self.out = out
        self.common_env = common_env
        self.procs: list[Proc] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, role: str, node_id: str, env: dict[str, str] | None = None) -> Proc:
        state = self.out / "state" / node_id
        state.mkdir(parents=True, exist_ok=True)
        ready = state / "ready.json"
        ready.unlink(missing_ok=True)
        log_file = self.out / "logs" / f"{node_id}.log"
        full_env = {**os.environ, **self.common_env, **(env or {}), "HFL_ROLE": role, "HFL_NODE_ID": node_id,
                    "HFL_LISTEN": "127.0.0.1:0", "HFL_METRICS_PORT": "0", "HFL_STATE_DIR": str(state),
                    "HFL_READY_FILE": str(ready), "PYTHONUNBUFFERED": "1"}
        with open(log_file, "ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "hfl.cli", "serve", role], env=full_env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc = Proc(role, node_id, popen, ready, log_file)
        self.procs.append(proc)
        return proc

    def wait_ready(self, procs: list[Proc], timeout: float = 180.0, label: str = "services") -> None:
        deadline = time.monotonic() + timeout
        pending = list(procs)
        shown = -1
        while pending:
            for p in list(pending):
                if p.ready_file.exists():
                    p.info = json.loads(p.ready_file.read_text())
                    pending.remove(p)
                elif p.popen.poll() is not None:
                    tail = p.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"{p.node_id} stopped during start-up (exit {p.popen.returncode}):\n  "
                                       + "\n  ".join(tail))
            done = len(procs) - len(pending)
            if done != shown:
                print(f"\r  {label}: {done}/{len(procs)} ready", end="", flush=True)
                shown = done
            if time.monotonic() > deadline:
                names = ", ".join(p.node_id for p in pending)
                raise RuntimeError(f"these services did not become ready in {timeout:.0f}s: {names}")
            time.sleep(0.1)
        print()

    def stop_all(self, grace: float = 10.0) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def endpoints(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.procs:
            host = p.info.get("address", "").rpartition(":")[0] or "127.0.0.1"
            rows.append({"role": p.role, "node_id": p.node_id, "address": p.info.get("address"),
                         "metrics": f"{host}:{p.info.get('metrics_port')}", "pid": p.popen.pid,
                         "log": str(p.log_file)})
        return rows


# ------------------------------------------------------------------------------------------ planning
def plan_facilities(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per facility: node id, environment, and how the centralised reference loads it."""
    if args.dataset.startswith("csv:"):
        from hfl.learning.data import csv_dir_files

        files = csv_dir_files(args.dataset[4:])
        return [{"node_id": f"facility-{i + 1:02d}", "specialty": SPECIALTIES[i % 4], "shard": None,
                 "csv": path, "env": {"HFL_DATASET": f"csv:{path}", "HFL_SPECIALTY": SPECIALTIES[i % 4]}}
                for i, path in enumerate(files)]
    if args.dataset not in ("synthetic", "breast_cancer"):
        raise ConfigError(f"unknown dataset {args.dataset!r}; use synthetic, breast_cancer or csv:DIR")
    n = args.facilities
    out = []
    for i in range(n):
        specialty = SPECIALTIES[i % 4]
        out.append({"node_id": f"facility-{i + 1:02d}", "specialty": specialty, "shard": (i, n), "csv": None,
                    "env": {"HFL_DATASET": args.dataset, "HFL_SPECIALTY": specialty, "HFL_SHARD": f"{i}/{n}"}})
    return out


def check_args(args: argparse.Namespace) -> None:
    if args.facilities < 1 or args.fogs < 1 or args.rounds < 1:
        raise ConfigError("--facilities, --fogs and --rounds must be at least 1")
    if args.validators < 1 or (args.validators - 1) % 3 != 0:
        raise ConfigError("--validators must be 3f+1 (1, 4, 7, ...) so that 2f+1 votes form a quorum")
    if not 0 <= args.drop_rate < 1:
        raise ConfigError("--drop-rate must be between 0 and 1")
    if args.bucket_size < 1:
        raise ConfigError("--bucket-size must be at least 1")


def make_out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        out = Path(args.out)
    else:
        out = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        if out.exists():
            out = out.with_name(out.name + f"-{os.getpid()}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.out:
        latest = Path("runs") / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)
    return out


# ------------------------------------------------------------------------------------------ watching
def bar(done: int, total: int, width: int = 20) -> str:
    filled = int(round(width * done / max(1, total)))
    return "#" * filled + "." * (width - filled)


def round_line(e: RoundEvent, committed: int, total: int) -> str:
    status = "committed" if e.committed else "NOT committed"
    acc = f"{e.accuracy:.3f}" if e.committed and not math.isnan(e.accuracy) else "  -  "
    loss = f"{e.loss:.3f}" if e.committed and not math.isnan(e.loss) else "  -  "
    return (f"[{bar(committed, total)}] round {e.round:>3}/{total}  accuracy {acc}  loss {loss}  "
            f"votes {e.accepts} yes/{e.rejects} no  {e.duration_s:5.1f}s  {e.bytes_sent / 1e6:6.2f} MB  {status}"
            + ("" if e.committed else f" ({e.detail})"))


async def watch(leader_address: str, total: int, events: list[RoundEvent]) -> None:
    import grpc

    from hfl.proto.v1 import leader_pb2, leader_pb2_grpc
    from hfl.rpc import serde

    committed = 0
    failures = 0
    while True:
        after = max((e.round for e in events if e.committed), default=0)
        try:
            async with grpc.aio.insecure_channel(leader_address) as ch:
                stub = leader_pb2_grpc.LeaderServiceStub(ch)
                async for msg in stub.WatchRounds(leader_pb2.WatchRoundsRequest(after_round=after)):
                    e = serde.event_from_proto(msg)
                    if e.done:
                        return
                    events.append(e)
                    committed += int(e.committed)
                    print(round_line(e, committed, total), flush=True)
            return
        except grpc.aio.AioRpcError as err:
            failures += 1
            if failures > 30:
                raise RuntimeError(f"lost contact with the leader: {err.details()}") from None
            await asyncio.sleep(1.0)


def event_row(e: RoundEvent) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 6)

    return {"round": e.round, "committed": e.committed, "accuracy": num(e.accuracy), "loss": num(e.loss),
            "votes": {"accept": e.accepts, "reject": e.rejects}, "duration_s": round(e.duration_s, 3),
            "bytes_sent": e.bytes_sent, "participants": e.participants, "dropouts": e.dropouts,
            "abandoned_buckets": e.abandoned_buckets, "flagged_buckets": list(e.flagged_buckets),
            "quarantined": list(e.quarantined), "committee": list(e.committee),
            "block_hash": e.block_hash.hex(), "detail": e.detail, **e.extra}


# ------------------------------------------------------------------------------------------ the command
def cmd_demo(args: argparse.Namespace) -> int:
    check_args(args)
    facilities = plan_facilities(args)
    out = make_out_dir(args)
    n_fac = len(facilities)
    common = {"HFL_SEED": str(args.seed), "HFL_MODEL": args.model, "HFL_HIDDEN": str(args.hidden),
              "HFL_DATASET": args.dataset, "HFL_LOG_LEVEL": "INFO"}
    if args.label:
        common["HFL_LABEL"] = args.label
    fed = Federation(out, common)
    print(f"hfl demo: {n_fac} facilities, {args.fogs} fogs, {args.validators} validators, {args.rounds} rounds, "
          f"dataset {args.dataset}, model {args.model}, secure aggregation {'on' if args.secagg else 'off'}")
    print(f"Run folder: {out}")

    reference: dict[str, float] = {}

    def compute_reference() -> None:
        from hfl.learning.data import centralized_reference
        from hfl.learning.train import DEFAULT_TRAIN, TrainConfig

        cfg = TrainConfig(lr=args.lr or DEFAULT_TRAIN.lr, epochs=args.epochs or DEFAULT_TRAIN.epochs,
                          batch_size=args.batch_size or DEFAULT_TRAIN.batch_size)
        try:
            reference["accuracy"] = centralized_reference(
                args.dataset,
                facilities=[(f["specialty"], f["shard"], f["csv"]) for f in facilities], seed=args.seed,
                model_kind=args.model, label=args.label, cfg=cfg, rounds=args.rounds, hidden=args.hidden)
        except Exception as e:  # the reference is informative only
            reference["error"] = float("nan")
            print(f"(could not compute the centralised reference: {e})")

    started = time.monotonic()
    events: list[RoundEvent] = []
    try:
        print("Starting the trusted authority ...")
        auth = fed.start("authority", "authority", {
            "HFL_COMMITTEE_SIZE": str(args.validators), "HFL_BUCKET_SIZE": str(args.bucket_size),
            "HFL_MIN_FACILITIES": str(n_fac)})
        fed.wait_ready([auth], label="authority")
        common["HFL_AUTHORITY"] = auth.info["address"]
        ref_thread = threading.Thread(target=compute_reference, daemon=True)
        ref_thread.start()
        print(f"Starting {args.validators} validators, {args.fogs} fogs and {n_fac} facilities ...")
        workers = [fed.start("validator", f"validator-{i + 1}", {"HFL_DATASET": (args.validation_csv and
                                                                 f"csv:{args.validation_csv}") or args.dataset})
                   for i in range(args.validators)]
        workers += [fed.start("fog", f"fog-{i + 1}") for i in range(args.fogs)]
        workers += [fed.start("facility", f["node_id"], f["env"]) for f in facilities]
        fed.wait_ready(workers, label="services")
        leader_env = {"HFL_ROUNDS": str(args.rounds), "HFL_RULE": args.rule, "HFL_F": str(args.f),
                      "HFL_SECAGG": "true" if args.secagg else "false", "HFL_DROP_RATE": str(args.drop_rate),
                      "HFL_LR": str(args.lr), "HFL_EPOCHS": str(args.epochs), "HFL_BATCH_SIZE": str(args.batch_size),
                      "HFL_CLIP_UPDATE": str(args.clip_update), "HFL_ROUND_TIMEOUT": str(args.round_timeout)}
        if args.dataset.startswith("csv:"):
            from hfl.learning.features import n_features_for

            leader_env["HFL_N_FEATURES"] = str(n_features_for(args.dataset, args.label))
        print("Starting the leader ...")
        leader = fed.start("leader", "leader", leader_env)
        fed.wait_ready([leader], label="leader")
        (out / "endpoints.json").write_text(json.dumps(fed.endpoints(), indent=2))
        print(f"Federation is up ({time.monotonic() - started:.1f}s). Endpoints: {out / 'endpoints.json'}")
        print("Training ...")
        asyncio.run(watch(leader.info["address"], args.rounds, events))
        ref_thread.join(timeout=300)
        committed = [e for e in events if e.committed]
        final = committed[-1].accuracy if committed else float("nan")
        ref = reference.get("accuracy", float("nan"))
        summary = {
            "config": {k: v for k, v in vars(args).items() if k != "func"} | {"facilities": n_fac},
            "centralized_accuracy": None if math.isnan(ref) else round(ref, 6),
            "final_accuracy": None if math.isnan(final) else round(final, 6),
            "rounds": [event_row(e) for e in events],
            "committed_rounds": len(committed),
            "wall_time_s": round(time.monotonic() - started, 2),
            "ledger": str(out / "state" / "leader" / "ledger.db"),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print()
        print(f"Final accuracy of the federated model: {final:.3f}")
        print(f"Centralised reference (all training data pooled in one place): {ref:.3f}")
        print(f"Committed {len(committed)} rounds in {summary['wall_time_s']}s. "
              f"Summary: {out / 'summary.json'}; check the ledger with: hfl ledger verify {out}")
        if args.keep_running:
            print("The federation keeps running (--keep-running). Press Ctrl-C to stop it.")
            while True:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        print("\nStopping (Ctrl-C) ...")
        return 130
    except RuntimeError as e:
        print(f"\nhfl demo failed: {e}\nLogs are in {out / 'logs'}", file=sys.stderr)
        return 1
    finally:
        fed.stop_all()
        print("All services stopped.")
