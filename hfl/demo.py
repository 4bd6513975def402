"""`hfl demo`: a whole federation as separate local processes on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hfl.demo_dp import DP_OPTIONS, add_dp_arguments, check_dp_args, dp_banner, dp_env, dp_summary
from hfl.domain import SPECIALTIES, ClinicalMetrics, RoundEvent, SpecialtyResult
from hfl.errors import ConfigError
from hfl.robust.rules import get_rule
from hfl.robust.sizing import size_federation
from hfl.schedule import MIN_SECURE_BUCKET
from hfl.words import counted

DEFAULT_FACILITIES = 8

# Above this many facilities the demo hosts several facilities per OS process (services/facility/host.py).
SHARE_ABOVE = 16


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--facilities",
        type=int,
        default=None,
        help="number of facilities (default 8; with csv:DIR data, one per file, so leave it out)",
    )
    p.add_argument("--fogs", type=int, default=2, help="number of fog nodes (default 2)")
    p.add_argument(
        "--validators",
        type=int,
        default=7,
        help="validators in the pool (default 7); each epoch a committee is drawn from them by reputation",
    )
    p.add_argument(
        "--committee",
        type=int,
        default=None,
        help="validators per committee, 3f+1 (default 4, or all of them when there are fewer: any 3 of 4 "
        "commit a round)",
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds to commit (default 10)")
    p.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic | synthetic_hard (a harder task; use it with --model mlp) | breast_cancer | csv:DIR",
    )
    p.add_argument("--label", help="label column for csv data")
    p.add_argument("--validation-csv", help="validation CSV for the validators (csv data)")
    p.add_argument(
        "--model",
        choices=("logreg", "mlp"),
        default=None,
        help="logreg | mlp (default: mlp for synthetic_hard, which a linear model cannot learn; else logreg)",
    )
    p.add_argument("--hidden", type=int, default=16, help="hidden units of the mlp")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the simulated patients, the starting model and the bucket and committee draws: the "
        "same command with the same seed gives the same results, except the privacy noise with --dp-epsilon "
        "(default 0)",
    )
    p.add_argument("--out", help="run folder (default runs/<timestamp>, runs/latest points at it)")
    p.add_argument(
        "--keep-running", action="store_true", help="keep serving after the last round until Ctrl-C"
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="keep running and open the federation console on 127.0.0.1:8501 (needs HFL_CONSOLE_PASSWORD)",
    )
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mutual TLS with certificates from the authority (--no-tls: plaintext, debugging only)",
    )
    p.add_argument(
        "--secagg",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mask updates with secure aggregation (--no-secagg: plain sums, for comparison)",
    )
    p.add_argument("--drop-rate", type=float, default=0.0, help="chance a facility drops out of a round")
    p.add_argument(
        "--bucket-size",
        type=int,
        default=3,
        help="facilities per bucket (default 3: the smallest secure aggregation allows, so the most buckets)",
    )
    p.add_argument(
        "--max-byzantine",
        type=int,
        default=None,
        help="how many misbehaving facilities the federation must withstand in every round; refused at "
        "start if the buckets cannot (default: none declared; quarantine assumes up to one facility in six, "
        "and a --bucket-size too large to single those out is refused when buckets of 3 would)",
    )
    p.add_argument(
        "--rule",
        default="trimmed_mean",
        help="aggregation rule over bucket means: trimmed_mean (default), median, multi_krum, "
        "centered_clipping, or mean (not robust, for comparison)",
    )
    p.add_argument(
        "--defences",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="norm bound, outlier screen, quarantine and the validators' score check (--no-defences: all "
        "off, to see what they protect against; with --rule mean this is plain federated averaging)",
    )
    p.add_argument(
        "--f",
        type=int,
        default=None,
        help="bad buckets the rule must tolerate (default: the most it can with the buckets)",
    )
    p.add_argument("--lr", type=float, default=None, help="local learning rate (default: built-in)")
    p.add_argument("--epochs", type=int, default=None, help="local epochs per round (default: built-in)")
    p.add_argument("--batch-size", type=int, default=None, help="local batch size (default: built-in)")
    p.add_argument(
        "--clip-update",
        type=float,
        default=None,
        help="norm bound of one update; with the adaptive bound, the most it can be (default: built-in)",
    )
    p.add_argument(
        "--adaptive-bound",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="derive each round's norm bound from the committed history (--no-adaptive-bound: fixed)",
    )
    p.add_argument(
        "--round-timeout", type=float, default=120.0, help="seconds a fog waits for its facilities"
    )
    p.add_argument(
        "--process-per-facility",
        action="store_true",
        help=f"one OS process per facility even above {SHARE_ABOVE} facilities (more realistic)",
    )
    p.add_argument(
        "--facilities-per-process",
        type=int,
        default=25,
        help=f"above {SHARE_ABOVE} facilities, how many share one process (default 25)",
    )
    p.add_argument(
        "--byzantine",
        action="append",
        default=[],
        metavar="N:ATTACK",
        help="make N facilities Byzantine with ATTACK (sign_flip, scale, gaussian, label_flip, alie, "
        "ipm, free_ride, nan); repeatable",
    )
    p.add_argument("--byzantine-scale", type=float, default=10.0, help="factor of the scale attack")
    p.add_argument(
        "--validator-fault",
        action="append",
        default=[],
        metavar="N:MODE",
        help="make N validators faulty (reject_all, accept_all, silent); repeatable",
    )
    p.add_argument("--vote-timeout", type=float, default=60.0, help="seconds the leader waits for votes")
    add_dp_arguments(p)  # --dp-epsilon, --dp-delta, ... (hfl/demo_dp.py)


def _die_with_parent() -> None:
    """Linux: a service gets SIGTERM if the demo itself dies, so nothing is left running."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
        full_env = {
            **os.environ,
            **self.common_env,
            **self.enrol_env(role, node_id),
            **(env or {}),
            "HFL_ROLE": role,
            "HFL_NODE_ID": node_id,
            "HFL_LISTEN": "127.0.0.1:0",
            "HFL_METRICS_PORT": "0",
            "HFL_STATE_DIR": str(state),
            "HFL_READY_FILE": str(ready),
            "PYTHONUNBUFFERED": "1",
        }
        with open(log_file, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "hfl.cli", "serve", role],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        proc = Proc(role, node_id, popen, ready, log_file)
        self.procs.append(proc)
        return proc

    @property
    def tls(self) -> bool:
        return self.common_env.get("HFL_TLS", "true").lower() not in ("false", "0", "no", "off")

    @property
    def authority_state(self) -> Path:
        return self.out / "state" / "authority"

    def enrol_env(self, role: str, node_id: str) -> dict[str, str]:
        """A fresh one-time enrolment token for this node, registered with the authority (mTLS on)."""
        if not self.tls or role == "facilities":
            return {}
        if role == "authority":
            return {"HFL_ENROL_LISTEN": "127.0.0.1:0"}
        from hfl.pki.tokens import add_enrol_token

        return {"HFL_ENROL_TOKEN": add_enrol_token(self.authority_state, role, node_id)}

    def operator(self) -> Any:
        """Operator client credentials (hfl.rpc.tls.NodeTls) for talking to the services; None without TLS."""
        from hfl.rpc.tls import load_client

        return load_client(self.authority_state / "operator") if self.tls else None

    def start_hosted(self, host_id: str, members: list[tuple[str, dict[str, str]]]) -> list[Proc]:
        """Start several facilities in one process (`hfl serve facilities`); each keeps its own node id,
        state folder, key, data and port. Returns one Proc per facility (they share the process)."""
        entries = []
        for node_id, env in members:
            state = self.out / "state" / node_id
            state.mkdir(parents=True, exist_ok=True)
            (state / "ready.json").unlink(missing_ok=True)
            entries.append(
                {
                    **self.enrol_env("facility", node_id),
                    **env,
                    "HFL_NODE_ID": node_id,
                    "HFL_STATE_DIR": str(state),
                    "HFL_READY_FILE": str(state / "ready.json"),
                    "HFL_LISTEN": "127.0.0.1:0",
                }
            )
        spec = self.out / "state" / f"{host_id}.facilities.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps({"facilities": entries}, indent=1))
        host = self.start("facilities", host_id, {"HFL_FACILITIES_FILE": str(spec)})
        hosted = [
            Proc("facility", e["HFL_NODE_ID"], host.popen, Path(e["HFL_READY_FILE"]), host.log_file)
            for e in entries
        ]
        self.procs.extend(hosted)
        return hosted

    def wait_ready(self, procs: list[Proc], timeout: float = 180.0, label: str = "services") -> None:
        deadline = time.monotonic() + timeout
        pending = list(procs)
        shown = -1
        tty = sys.stdout.isatty()  # redraw one line on a terminal; whole lines in a log
        while pending:
            for p in list(pending):
                if p.ready_file.exists():
                    p.info = json.loads(p.ready_file.read_text())
                    if p.role == "authority" and p.info.get("enrol_address"):  # where the others enrol
                        self.common_env["HFL_ENROL"] = p.info["enrol_address"]
                        self.common_env["HFL_TLS_CA"] = p.info["ca"]
                    pending.remove(p)
                elif p.popen.poll() is not None:
                    tail = p.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(
                        f"{p.node_id} stopped during start-up (exit {p.popen.returncode}):\n  "
                        + "\n  ".join(tail)
                    )
            done = len(procs) - len(pending)
            if done != shown and (tty or done in (0, len(procs))):  # a log file gets the first and last
                start, end = ("\r", "") if tty else ("", "\n")
                print(f"{start}  {label}: {done}/{len(procs)} ready", end=end)
                sys.stdout.flush()
                shown = done
            if time.monotonic() > deadline:
                names = ", ".join(p.node_id for p in pending)
                raise RuntimeError(f"these services did not become ready in {timeout:.0f}s: {names}")
            time.sleep(0.1)
        if tty:
            print()

    def stop_all(self, grace: float = 10.0) -> None:
        procs = list({p.popen.pid: p for p in self.procs}.values())  # hosted facilities share a process
        for p in procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def endpoints(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.procs:
            if p.role == "facilities":  # a host process: its facilities have their own rows
                continue
            host = p.info.get("address", "").rpartition(":")[0] or "127.0.0.1"
            rows.append(
                {
                    "role": p.role,
                    "node_id": p.node_id,
                    "address": p.info.get("address"),
                    "metrics": f"{host}:{p.info.get('metrics_port')}",
                    "pid": p.popen.pid,
                    "log": str(p.log_file),
                }
            )
        return rows


# ------------------------------------------------------------------------------------------ planning
def facilities_per_process(n: int, process_per_facility: bool, pack: int) -> int:
    """1 = one OS process per facility; more = that many facilities share a process."""
    return 1 if process_per_facility or n <= SHARE_ABOVE else max(1, pack)


def header_line(args: argparse.Namespace, n_fac: int) -> str:
    """The demo's first line: what it is about to run."""
    seats = (
        "all on every committee" if args.committee == args.validators else f"committees of {args.committee}"
    )
    return (
        f"hfl demo: {counted(n_fac, 'facility')}, {counted(args.fogs, 'fog')}, "
        f"{counted(args.validators, 'validator')} ({seats}), {counted(args.rounds, 'round')}, "
        f"dataset {args.dataset}, model {args.model}, secure aggregation {'on' if args.secagg else 'off'}"
    )


def simulated_line(facilities: Mapping[str, str], validators: Mapping[str, str]) -> str:
    """Who misbehaves on purpose in this run (--byzantine, --validator-fault), so that a reader can tell
    the simulated attackers from the federation's own findings ("" when nobody does)."""
    who = [f"{node} ({mode})" for node, mode in sorted(facilities.items())]
    who += [f"{node} ({mode})" for node, mode in sorted(validators.items())]
    return f"Simulated misbehaviour (set by you): {', '.join(who)}" if who else ""


def hosting_text(n: int, per_process: int) -> str:
    if per_process == 1:
        return f"one process per facility ({n} processes)"
    procs = math.ceil(n / per_process)
    return (
        f"{per_process} per process ({counted(procs, 'process')}; each facility keeps its own "
        "key, data, state folder and connection to its fog; --process-per-facility for one process each)"
    )


def hosting_record(n: int, per_process: int) -> dict[str, Any]:
    return {
        "mode": "process_per_facility" if per_process == 1 else "shared_processes",
        "facilities_per_process": per_process,
        "facility_processes": math.ceil(n / per_process),
    }


def enrol_burst_env(nodes: int) -> dict[str, str]:
    """Every demo node enrols from 127.0.0.1: let the authority's per-address rate limit admit them all
    at start-up (it stays in force for anything beyond)."""
    return {"HFL_ENROL_BURST": str(max(30, nodes + 8))}


def start_facilities(
    fed: Federation, members: list[tuple[str, dict[str, str]]], per_process: int
) -> list[Proc]:
    """Start the facilities, one process each or ``per_process`` to a process."""
    if per_process <= 1:
        return [fed.start("facility", node_id, env) for node_id, env in members]
    procs: list[Proc] = []
    for k, i in enumerate(range(0, len(members), per_process)):
        procs += fed.start_hosted(f"facility-host-{k + 1}", members[i : i + per_process])
    return procs


def plan_facilities(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per facility: node id, environment, and how the centralised reference loads it."""
    if args.dataset.startswith("csv:"):
        from hfl.learning.data import csv_dir_files

        files = csv_dir_files(args.dataset[4:])
        return [
            {
                "node_id": f"facility-{i + 1:02d}",
                "specialty": SPECIALTIES[i % 4],
                "shard": None,
                "csv": path,
                "env": {"HFL_DATASET": f"csv:{path}", "HFL_SPECIALTY": SPECIALTIES[i % 4]},
            }
            for i, path in enumerate(files)
        ]
    if args.dataset not in ("synthetic", "synthetic_hard", "breast_cancer"):
        raise ConfigError(
            f"unknown dataset {args.dataset!r}; use synthetic, synthetic_hard, breast_cancer or csv:DIR"
        )
    n = args.facilities
    out = []
    for i in range(n):
        specialty = SPECIALTIES[i % 4]
        out.append(
            {
                "node_id": f"facility-{i + 1:02d}",
                "specialty": specialty,
                "shard": (i, n),
                "csv": None,
                "env": {"HFL_DATASET": args.dataset, "HFL_SPECIALTY": specialty, "HFL_SHARD": f"{i}/{n}"},
            }
        )
    return out


def parse_faults(specs: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    """['2:scale', '1:nan'] -> ['scale', 'scale', 'nan'] (one entry per faulty node, in order)."""
    out: list[str] = []
    for spec in specs:
        count, sep, mode = spec.partition(":")
        if not sep or not count.isdigit() or mode not in allowed:
            raise ConfigError(
                f"{what} must look like N:MODE with MODE one of {', '.join(allowed)}; got {spec!r}"
            )
        out += [mode] * int(count)
    return out


def check_topology(validators: int, bucket_size: int, secagg: bool, committee: int | None = None) -> None:
    """The committee and bucket rules every launcher shares (hfl demo, hfl bench federation).
    ``committee`` None: every validator sits on every committee."""
    if committee is None:
        if validators < 1 or (validators - 1) % 3 != 0:
            raise ConfigError("--validators must be 3f+1 (1, 4, 7, ...) so that 2f+1 votes form a quorum")
    else:
        if committee < 1 or (committee - 1) % 3 != 0:
            raise ConfigError("--committee must be 3f+1 (1, 4, 7, ...) so that 2f+1 votes form a quorum")
        if validators < committee:
            raise ConfigError(
                f"--validators {validators} is fewer than the committee of {committee}: run at least "
                f"{committee} validators, or a smaller --committee"
            )
    if bucket_size < 1:
        raise ConfigError("--bucket-size must be at least 1")
    if secagg and bucket_size < MIN_SECURE_BUCKET:
        raise ConfigError(
            f"secure aggregation needs buckets of at least {MIN_SECURE_BUCKET} facilities (with 2, each "
            "could subtract its own update from the sum and learn the other's); use --bucket-size "
            f"{MIN_SECURE_BUCKET} or more, or --no-secagg"
        )


# The HFL_* variables the demo sets from its own options: a refusal names the option people typed.
DEMO_OPTIONS = {
    "HFL_MIN_FACILITIES": "--facilities",
    "HFL_BUCKET_SIZE": "--bucket-size",
    "HFL_MAX_BYZANTINE": "--max-byzantine",
    "HFL_COMMITTEE_SIZE": "--committee",
    "HFL_RULE": "--rule",
    "HFL_F": "--f",
    "HFL_DATASET": "--dataset",
    "HFL_MODEL": "--model",
    "HFL_HIDDEN": "--hidden",
    "HFL_ROUNDS": "--rounds",
    "HFL_LR": "--lr",
    "HFL_EPOCHS": "--epochs",
    "HFL_BATCH_SIZE": "--batch-size",
    "HFL_CLIP_UPDATE": "--clip-update",
    "HFL_ROUND_TIMEOUT": "--round-timeout",
    "HFL_VOTE_TIMEOUT": "--vote-timeout",
    "HFL_DROP_RATE": "--drop-rate",
    "HFL_BYZANTINE_SCALE": "--byzantine-scale",
    **DP_OPTIONS,
}


def in_demo_words(message: str, options: dict[str, str]) -> str:
    """A settings refusal with the demo's options for the variables it sets: "HFL_BUCKET_SIZE=2 is too
    small ..." -> "--bucket-size 2 is too small ..."; other variables keep their names."""

    def option(m: re.Match[str]) -> str:
        name = options.get(m.group(1))
        if name is None:
            return m.group(0)
        return f"{name} " if m.group(2) else name

    return re.sub(r"(HFL_[A-Z_]+)(: |=)?", option, message.replace("HFL_SECAGG=false", "--no-secagg"))


def check_settings(processes: Sequence[tuple[str, dict[str, str]]], options: dict[str, str]) -> None:
    """Build the settings each process will build from the environment the demo is about to give it (the
    same classes `hfl serve` uses), so a combination a service would refuse stops the demo before any
    process starts, in the same plain line (naming the demo's options)."""
    from hfl.rpc.settings import load_settings

    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for role, env in processes:
        key = (role, tuple(sorted(env.items())))
        if key in seen:  # many facilities or validators share one environment
            continue
        seen.add(key)
        fields = {k.removeprefix("HFL_").lower(): v for k, v in env.items() if k.startswith("HFL_")}
        fields.pop("role", None)
        try:
            load_settings(role=role, **fields)
        except ConfigError as e:
            raise ConfigError(in_demo_words(str(e), options)) from None


def check_args(args: argparse.Namespace) -> None:
    """The checks that belong to the demo's options alone; what the services would refuse is checked by
    building their settings (check_settings)."""
    if args.model is None:
        args.model = "mlp" if args.dataset == "synthetic_hard" else "logreg"
    if args.dataset.startswith("csv:") and args.facilities is not None:
        from hfl.learning.data import csv_dir_files

        files = len(csv_dir_files(args.dataset[4:]))
        if args.facilities != files:
            raise ConfigError(
                f"with csv data each file in the folder is one facility, so this run has {files}; leave out "
                f"--facilities (it cannot be {args.facilities})"
            )
    if args.facilities is None:
        args.facilities = DEFAULT_FACILITIES
    if args.facilities < 1 or args.fogs < 1 or args.rounds < 1:
        raise ConfigError("--facilities, --fogs and --rounds must be at least 1")
    # a small pool sits on every committee: then --validators is the committee size the authority checks
    args.committee_option = "--committee"
    if args.committee is None and args.validators < 4:
        args.committee, args.committee_option = args.validators, "--validators"
    elif args.committee is None:
        args.committee = 4
    elif args.validators < args.committee:
        raise ConfigError(
            f"--validators {args.validators} is fewer than the committee of {args.committee}: run at least "
            f"{args.committee} validators, or a smaller --committee"
        )
    if args.facilities_per_process < 1:
        raise ConfigError("--facilities-per-process must be at least 1")
    check_dp_args(args)
    from hfl.rpc.settings import FACILITY_ATTACKS, VALIDATOR_FAULTS

    args.byzantine_modes = parse_faults(args.byzantine, FACILITY_ATTACKS[1:], "--byzantine")
    args.validator_faults = parse_faults(args.validator_fault, VALIDATOR_FAULTS[1:], "--validator-fault")
    if len(args.validator_faults) > args.validators:
        raise ConfigError("--validator-fault names more validators than there are")


def common_env(args: argparse.Namespace) -> dict[str, str]:
    """What every process of the demo gets."""
    env = {
        "HFL_SEED": str(args.seed),
        "HFL_MODEL": args.model,
        "HFL_HIDDEN": str(args.hidden),
        "HFL_DATASET": args.dataset,
        "HFL_LOG_LEVEL": "INFO",
        "HFL_TLS": "true" if args.tls else "false",
        # the leader aggregates with these and the validators refuse proposals that do not
        "HFL_RULE": args.rule,
        "HFL_DEFENCES": "true" if args.defences else "false",
        "HFL_ADAPTIVE_BOUND": "true" if args.adaptive_bound else "false",
        # facilities refuse plain rounds unless this is false (fogs must not see one site's numbers)
        "HFL_SECAGG": "true" if args.secagg else "false",
    }
    if args.f is not None:
        env["HFL_F"] = str(args.f)
    if args.clip_update is not None:  # the norm bound (the adaptive bound's ceiling): validators check it
        env["HFL_CLIP_UPDATE"] = repr(args.clip_update)
    if args.label:
        env["HFL_LABEL"] = args.label
    return env


def authority_env(args: argparse.Namespace, n_facilities: int) -> dict[str, str]:
    return {
        "HFL_COMMITTEE_SIZE": str(args.committee),
        "HFL_BUCKET_SIZE": str(args.bucket_size),
        "HFL_MIN_FACILITIES": str(n_facilities),
        **({"HFL_MAX_BYZANTINE": str(args.max_byzantine)} if args.max_byzantine is not None else {}),
        # a demo is an experiment: the same --seed gives the same bucket and committee draws
        "HFL_EXPERIMENT_SEED": str(args.seed),
        **dp_env(args),
        **enrol_burst_env(n_facilities + args.fogs + args.validators),
    }


def validator_envs(args: argparse.Namespace, faulty: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    validation = f"csv:{args.validation_csv}" if args.validation_csv else args.dataset
    return [
        (
            f"validator-{i + 1}",
            {"HFL_DATASET": validation, "HFL_BYZANTINE": faulty.get(f"validator-{i + 1}", "none")},
        )
        for i in range(args.validators)
    ]


def leader_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "HFL_ROUNDS": str(args.rounds),
        "HFL_ROUND_TIMEOUT": str(args.round_timeout),
        "HFL_VOTE_TIMEOUT": str(args.vote_timeout),
        **{name: str(v) for name, v in (("HFL_LR", args.lr), ("HFL_EPOCHS", args.epochs)) if v is not None},
        **({"HFL_BATCH_SIZE": str(args.batch_size)} if args.batch_size is not None else {}),
        **dp_env(args),
    }
    if args.dataset.startswith("csv:"):
        from hfl.learning.features import n_features_for

        env["HFL_N_FEATURES"] = str(n_features_for(args.dataset, args.label))
    return env


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
    filled = round(width * done / max(1, total))
    return "#" * filled + "." * (width - filled)


def round_line(e: RoundEvent, committed: int, total: int) -> str:
    status = "committed" if e.committed else "NOT committed"
    acc = f"{e.accuracy:.3f}" if e.committed and not math.isnan(e.accuracy) else "  -  "
    loss = f"{e.loss:.3f}" if e.committed and not math.isnan(e.loss) else "  -  "
    auc = e.clinical.auc if e.clinical is not None else float("nan")
    return (
        f"[{bar(committed, total)}] round {e.round:>3}/{total}  accuracy {acc}  "
        + ("" if math.isnan(auc) else f"AUC {auc:.3f}  ")
        + f"loss {loss}  "
        f"votes {e.accepts} yes/{e.rejects} no  {e.duration_s:5.1f}s  {e.bytes_sent / 1e6:6.2f} MB  "
        + ("" if math.isnan(e.epsilon) else f"ε {e.epsilon:.2f}  ")
        + status
        + (f" ({e.detail})" if not e.committed else round_notes(e))
    )


def round_notes(e: RoundEvent) -> str:
    """What else happened in a committed round, in brackets: drop-outs, buckets left out because too few of
    their members stayed, flagged buckets ("" if none)."""
    notes = []
    if e.dropouts:
        notes.append(f"{counted(e.dropouts, 'facility')} dropped out")
    if e.abandoned_buckets:
        n = e.abandoned_buckets
        notes.append(
            f"{counted(n, 'bucket')} left out: too few of {'its' if n == 1 else 'their'} members stayed"
        )
    if e.flagged_buckets:
        n = len(e.flagged_buckets)
        notes.append(f"{counted(n, 'bucket')} flagged")
    return f" ({'; '.join(notes)})" if notes else ""


def quarantine_lines(before: Sequence[str], now: Sequence[str]) -> list[str]:
    """One line for each facility quarantined since the previous round."""
    return [f"  {f} quarantined: left out of every later round" for f in sorted(set(now) - set(before))]


def final_clinical_lines(c: ClinicalMetrics) -> str:
    """The clinical metrics of the final model, each with what it means."""

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.0f}%"

    return "\n".join(
        [
            f"  ROC AUC {c.auc:.3f}: how well it ranks a patient with the outcome above one without "
            "(0.5 is chance, 1 is perfect)",
            f"  Giving every patient the more common answer would already be right for "
            f"{pct(c.baseline_accuracy)} of them ({pct(c.prevalence)} have the outcome): the baseline",
            f"  Sensitivity {pct(c.sensitivity)} (patients with the outcome it flags), specificity "
            f"{pct(c.specificity)} (patients without it it leaves alone)",
            f"  PPV {pct(c.ppv)} (flagged patients who have it), NPV {pct(c.npv)}; Brier score {c.brier:.3f} "
            "(mean squared error of the probabilities; lower is better)",
        ]
    )


def specialty_lines(results: Sequence[SpecialtyResult], hint: str = "") -> str:
    """The final model's results per specialty, and in plain words why any specialty has none; ``hint``
    (such as "try --facilities 12 to see all four") ends the sentence about the specialties too small."""
    lines = ["Results per specialty (from the summed results of its facilities, never one site's):"]
    too_small = []
    for r in results:
        if r.not_reported and r.facilities < MIN_SECURE_BUCKET:
            too_small.append(f"{r.specialty} ({r.facilities})")
        elif r.not_reported:
            lines.append(f"  {r.specialty:<10} not shown: {r.not_reported}")
        else:
            auc = r.clinical.auc if r.clinical is not None else float("nan")
            base = r.clinical.baseline_accuracy if r.clinical is not None else float("nan")
            lines.append(
                f"  {r.specialty:<10} {r.facilities:>3} facilities  accuracy {r.accuracy:.3f}"
                + ("" if math.isnan(auc) else f"  AUC {auc:.3f}")
                + ("" if math.isnan(base) else f"  (baseline {base:.3f})")
            )
    if too_small:
        lines.append(
            f"  Not shown: {', '.join(too_small)} — a specialty needs at least {MIN_SECURE_BUCKET} "
            "of its facilities in the round, so that no single site's numbers can be worked out"
            + (f" ({hint})." if hint else ".")
        )
    return "\n".join(lines)


async def watch(
    leader_address: str,
    total: int,
    events: list[RoundEvent],
    tls: Any = None,
    show: Callable[[RoundEvent, int], None] | None = None,
) -> str:
    """Follow the leader's WatchRounds stream into ``events`` until it is done, reconnecting after
    failures; ``show(event, committed so far)`` reports each round (default: a progress line). Returns
    the leader's last word: why training ended."""
    import grpc

    from hfl.proto.v1 import leader_pb2, leader_pb2_grpc
    from hfl.rpc import serde
    from hfl.rpc.tls import LEADER, aio_channel

    committed = 0
    failures = 0
    while True:
        after = max((e.round for e in events if e.committed), default=0)
        try:
            async with aio_channel(leader_address, tls, peer=LEADER) as ch:
                stub = leader_pb2_grpc.LeaderServiceStub(ch)
                async for msg in stub.WatchRounds(leader_pb2.WatchRoundsRequest(after_round=after)):
                    e = serde.event_from_proto(msg)
                    if e.done:
                        return e.detail
                    events.append(e)
                    committed += int(e.committed)
                    if show is None:
                        print(round_line(e, committed, total), flush=True)
                        before = events[-2].quarantined if len(events) > 1 else ()
                        for line in quarantine_lines(before, e.quarantined):
                            print(line, flush=True)
                    else:
                        show(e, committed)
            return "the leader closed the stream"
        except grpc.aio.AioRpcError as err:
            failures += 1
            if failures > 30:
                raise RuntimeError(f"lost contact with the leader: {err.details()}") from None
            await asyncio.sleep(1.0)


def event_row(e: RoundEvent) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 6)

    return {
        "round": e.round,
        "committed": e.committed,
        "accuracy": num(e.accuracy),
        "loss": num(e.loss),
        "votes": {"accept": e.accepts, "reject": e.rejects},
        "duration_s": round(e.duration_s, 3),
        "bytes_sent": e.bytes_sent,
        "participants": e.participants,
        "dropouts": e.dropouts,
        "abandoned_buckets": e.abandoned_buckets,
        "flagged_buckets": list(e.flagged_buckets),
        "quarantined": list(e.quarantined),
        "committee": list(e.committee),
        "block_hash": e.block_hash.hex(),
        "detail": e.detail,
        "epsilon": num(e.epsilon),
        "clinical": e.clinical.to_dict() if e.clinical is not None else None,
        "specialties": [r.to_dict() for r in e.specialties],
        **(e.cost.to_dict() if e.cost is not None else {}),
    }


# ------------------------------------------------------------------------------------------ the command
def start_console(out: Path) -> subprocess.Popen[bytes]:
    """`hfl console --run OUT` beside the demo (stopped with it); prints the address it listens on."""
    from hfl.console.launch import streamlit_command

    env = {**os.environ, "HFL_CONSOLE_RUN": str(out)}
    proc = subprocess.Popen(streamlit_command("127.0.0.1", 8501), env=env, stdout=subprocess.DEVNULL)
    print("Console: http://127.0.0.1:8501 (sign in with the password in HFL_CONSOLE_PASSWORD)")
    return proc


def cmd_demo(args: argparse.Namespace) -> int:
    check_args(args)
    console: subprocess.Popen[bytes] | None = None
    if args.console:
        from hfl.console.auth import NoPassword, password_from_env

        try:
            password_from_env()
        except NoPassword as e:
            raise ConfigError(str(e)) from e
        args.keep_running = True
    facilities = plan_facilities(args)
    if len(args.byzantine_modes) > len(facilities):
        raise ConfigError("--byzantine names more facilities than there are")
    for fac in facilities:  # each facility rolls its own drop-outs (an experiment setting, not on the wire)
        fac["env"]["HFL_DROP_RATE"] = str(args.drop_rate)
    byzantine: dict[str, str] = {}
    for i, mode in enumerate(args.byzantine_modes):  # the last facilities turn Byzantine
        fac = facilities[len(facilities) - 1 - i]
        fac["env"].update({"HFL_BYZANTINE": mode, "HFL_BYZANTINE_SCALE": str(args.byzantine_scale)})
        byzantine[fac["node_id"]] = mode
    faulty_validators = {
        f"validator-{args.validators - i}": mode for i, mode in enumerate(args.validator_faults)
    }
    n_fac = len(facilities)
    common = common_env(args)
    auth_env, lead_env = authority_env(args, n_fac), leader_env(args)
    validators = validator_envs(args, faulty_validators)
    check_settings(  # every process the demo will start, before it starts any
        [
            ("authority", {**common, **auth_env}),
            *(("validator", {**common, **env}) for _, env in validators),
            ("fog", common),
            *(("facility", {**common, **f["env"]}) for f in facilities),
            ("leader", {**common, **lead_env}),
        ],
        {**DEMO_OPTIONS, "HFL_COMMITTEE_SIZE": args.committee_option},
    )
    # what these buckets withstand (a declared --max-byzantine they cannot was refused just above)
    sizing = size_federation(
        n_fac,
        rule=args.rule,
        bucket_size=args.bucket_size,
        max_byzantine=args.max_byzantine,
        f=args.f,
        secagg=args.secagg,
    )
    out = make_out_dir(args)
    fed = Federation(out, common)
    print(header_line(args, n_fac))
    if not args.defences:
        print(
            "WARNING: defences are OFF (--no-defences): no norm bound, no outlier screen, no quarantine and "
            "no validation-score check. Use this only to compare; never with real patients."
        )
    print(f"Defences: {sizing.sentence()}.")
    line = simulated_line(byzantine, faulty_validators)
    if line:
        print(line)
    if len(byzantine) > sizing.withstands and args.defences and get_rule(args.rule).tolerates_bad_buckets:
        print(
            f"Note: {counted(len(byzantine), 'facility')} will misbehave, "
            f"more than the {sizing.withstands} these "
            "buckets withstand in every round; the norm bound, the outlier screen and quarantine still "
            "act, but a round where they land in different buckets can be pulled off course."
        )
    per_process = facilities_per_process(n_fac, args.process_per_facility, args.facilities_per_process)
    print(f"Facilities run {hosting_text(n_fac, per_process)}")
    print(f"Run folder: {out}")

    reference: dict[str, float] = {}

    def compute_reference() -> None:
        from hfl.learning.reference import centralized_reference
        from hfl.learning.train import train_config

        cfg = train_config(args.lr, args.epochs, args.batch_size)
        try:
            reference["accuracy"] = centralized_reference(
                args.dataset,
                facilities=[(f["specialty"], f["shard"], f["csv"]) for f in facilities],
                seed=args.seed,
                model_kind=args.model,
                label=args.label,
                cfg=cfg,
                rounds=args.rounds,
                hidden=args.hidden,
            )
        except Exception as e:  # the reference is informative only
            reference["error"] = float("nan")
            print(f"(could not compute the centralised reference: {e})")

    started = time.monotonic()
    events: list[RoundEvent] = []

    def on_term(signum: int, frame: object) -> None:  # `kill` stops the demo like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        print("Starting the trusted authority ...")
        auth = fed.start("authority", "authority", auth_env)
        fed.wait_ready([auth], label="authority")
        common["HFL_AUTHORITY"] = auth.info["address"]
        print(f"Starting {args.validators} validators, {args.fogs} fogs and {n_fac} facilities ...")
        workers = [fed.start("validator", node_id, env) for node_id, env in validators]
        workers += [fed.start("fog", f"fog-{i + 1}") for i in range(args.fogs)]
        workers += start_facilities(fed, [(f["node_id"], f["env"]) for f in facilities], per_process)
        fed.wait_ready(workers, label="services")
        print("Starting the leader ...")
        leader = fed.start("leader", "leader", lead_env)
        fed.wait_ready([leader], label="leader")
        # Only now: Popen's preexec_fn (die with the parent) is unsafe while another thread runs.
        ref_thread = threading.Thread(target=compute_reference, daemon=True)
        ref_thread.start()
        dp = dp_summary(leader.info)
        print(dp_banner(dp))
        (out / "endpoints.json").write_text(json.dumps(fed.endpoints(), indent=2))
        print(f"Federation is up ({time.monotonic() - started:.1f}s). Endpoints: {out / 'endpoints.json'}")
        if args.console:
            console = start_console(out)
        print("Training ...")
        ended = asyncio.run(watch(leader.info["address"], args.rounds, events, fed.operator()))
        ref_thread.join(timeout=300)
        committed = [e for e in events if e.committed]
        final = committed[-1].accuracy if committed else float("nan")
        ref = reference.get("accuracy", float("nan"))
        summary = {
            "config": {
                k: v
                for k, v in vars(args).items()
                if k
                not in (
                    "func",
                    "byzantine",
                    "validator_fault",
                    "byzantine_modes",
                    "validator_faults",
                    "committee_option",
                )
            }
            | {
                "facilities": n_fac,
                "byzantine": byzantine,
                "validator_faults": faulty_validators,
                "hosting": hosting_record(n_fac, per_process),
            },
            "centralized_accuracy": None if math.isnan(ref) else round(ref, 6),
            "final_accuracy": None if math.isnan(final) else round(final, 6),
            "rounds": [event_row(e) for e in events],
            "committed_rounds": len(committed),
            "ended": ended,
            "facilities": [
                {"node_id": f["node_id"], "specialty": f["specialty"], "byzantine": f["node_id"] in byzantine}
                for f in facilities
            ],
            "wall_time_s": round(time.monotonic() - started, 2),
            "ledger": str(out / "state" / "leader" / "ledger.db"),
            "dp": dp,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print()
        if len(committed) < args.rounds and ended != "all planned rounds are done":
            print(f"Training stopped early ({ended}).")
        print(f"Final accuracy of the federated model: {final:.3f}")
        print(f"Centralised reference (all training data pooled in one place): {ref:.3f}")
        clinical = committed[-1].clinical if committed else None
        if clinical is not None:
            print(final_clinical_lines(clinical))
        if committed and committed[-1].specialties:
            more = n_fac < MIN_SECURE_BUCKET * len(SPECIALTIES) and not args.dataset.startswith("csv:")
            hint = "try --facilities 12 to see all four" if more else ""
            print(specialty_lines(committed[-1].specialties, hint))
        print(
            f"Committed {counted(len(committed), 'round')} in "
            f"{summary['wall_time_s']}s, start-up included. "
            f"Summary: {out / 'summary.json'}; check the ledger with: hfl ledger verify {out}"
        )
        if args.keep_running:
            print("The federation keeps running (--keep-running). Press Ctrl-C to stop it.")
            while True:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        print("\nStopping ...")
        return 130
    except RuntimeError as e:
        print(f"\nhfl demo failed: {e}\nLogs are in {out / 'logs'}", file=sys.stderr)
        return 1
    finally:
        if console is not None:
            console.terminate()
            console.wait(timeout=10)
        fed.stop_all()
        print("All services stopped.")
