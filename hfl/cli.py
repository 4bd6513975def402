"""The `hfl` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hfl.errors import ConfigError, HflError
from hfl.words import counted

ROLES = ("authority", "leader", "fog", "facility", "validator")


class Parser(argparse.ArgumentParser):
    """Argument errors are one plain line, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def fail(message: str, code: int = 2) -> int:
    print(f"hfl: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from hfl.rpc.node import setup_logging
    from hfl.rpc.settings import load_settings

    hosting = args.role == "facilities"  # several facilities in one process (services/facility/host.py)
    role = "facility" if hosting else args.role
    settings = load_settings(role=role)
    setup_logging(settings, args.role)
    module = importlib.import_module("services.facility.host" if hosting else f"services.{role}.main")
    try:
        asyncio.run(module.run(settings))
    except KeyboardInterrupt:
        pass
    return 0


# ---------------------------------------------------------------------------------------- ledger
def ledger_path(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "ledger.db", p / "state" / "leader" / "ledger.db"):
            if candidate.exists():
                return candidate
        raise ConfigError(f"no ledger.db found in {p}")
    if not p.exists():
        raise ConfigError(f"{p} does not exist")
    return p


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from hfl.ledger import LedgerError, LedgerStore
    from hfl.round.audit import verify_ledger

    path = ledger_path(args.path)
    with LedgerStore(path) as store:
        total = len(store)
        print(f"Checking {total} blocks in {path} ...", flush=True)

        def progress(r: int) -> None:
            if total > 20 and r % max(1, total // 10) == 0:
                print(f"  block {r} of {total - 1} ok", flush=True)

        try:
            n = verify_ledger(store, recompute=not args.no_recompute, progress=progress)
        except LedgerError as e:
            print(f"LEDGER INVALID: {e}", file=sys.stderr)
            return 1
    print(
        f"Ledger OK: {n} blocks (the first block and {counted(n - 1, 'committed round')}); "
        "hashes, signatures, quorum certificates"
        f"{'' if args.no_recompute else ' and every aggregate'} check out."
    )
    return 0


# ---------------------------------------------------------------------------------------- aggregate
def cmd_aggregate(args: argparse.Namespace) -> int:
    from hfl.robust.offline import aggregate_files

    result = aggregate_files(
        args.rule, args.f, args.input, args.output, counts_path=args.counts, clip_update=args.clip_update
    )
    flagged = ", ".join(str(i) for i in result.flagged) or "none"
    print(f"wrote {args.output} ({result.update.size} values); flagged rows: {flagged}")
    return 0


# ---------------------------------------------------------------------------------------- status, health
def cmd_health(args: argparse.Namespace) -> int:
    from hfl.health import run

    # The same check as the containers' `python -m hfl.health`: HFL_LISTEN's port on 127.0.0.1; with mTLS,
    # this node's own certificate in $HFL_STATE_DIR/tls (or --cert-dir, e.g. state/authority/operator).
    return run(args.address, args.timeout, args.cert_dir, os.environ)


def cmd_site_check(args: argparse.Namespace) -> int:
    from hfl.rpc.settings import load_settings
    from hfl.site import main as site_check

    # The facility's own settings (the site kit's .env): what `hfl serve facility` would start with.
    return site_check(load_settings(role="facility"), timeout=args.timeout)


def cmd_enrol_token(args: argparse.Namespace) -> int:
    from hfl.pki.tokens import add_enrol_token

    token = add_enrol_token(Path(args.state_dir), args.role, args.node_id)
    print(token)
    print(
        f"(one-time token for {args.role} {args.node_id}; give it to that node as HFL_ENROL_TOKEN)",
        file=sys.stderr,
    )
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from hfl.provision import cmd_provision as provision

    return provision(args)


def cmd_status(args: argparse.Namespace) -> int:
    from hfl.status import show_status

    return show_status(args.run, args.leader, args.authority, args.cert_dir)


def cmd_revoke(args: argparse.Namespace) -> int:
    from hfl.status import revoke_node

    return revoke_node(args.node, args.reason, args.run, args.authority, args.cert_dir)


def cmd_control(args: argparse.Namespace) -> int:
    from hfl.operator_cli import control_training

    return control_training(
        args.control,
        args.reason,
        args.run,
        args.leader,
        args.cert_dir,
        round_=getattr(args, "round", 0),
        seconds=getattr(args, "seconds", 0.0),
    )


def cmd_quarantine(args: argparse.Namespace) -> int:
    from hfl.operator_cli import quarantine_facility

    return quarantine_facility(args.facility, args.reason, args.run, args.authority, args.cert_dir)


def cmd_token(args: argparse.Namespace) -> int:
    from hfl.operator_cli import issue_token

    return issue_token(args.facility, args.hours, args.run, args.authority, args.cert_dir)


def cmd_actions(args: argparse.Namespace) -> int:
    from hfl.operator_cli import show_actions

    return show_actions(args.run, args.leader, args.authority, args.cert_dir)


def cmd_release(args: argparse.Namespace) -> int:
    from hfl.status import release_facility

    return release_facility(args.facility, args.reason, args.run, args.authority, args.cert_dir)


def cmd_console(args: argparse.Namespace) -> int:
    from hfl.console.launch import run_console

    return run_console(args.address, args.port, args.run, args.leader, args.authority, args.cert_dir)


# ---------------------------------------------------------------------------------------- parser
RUN_HELP = "demo run folder with endpoints.json (default: runs/latest, when no address is given)"


def build_parser() -> argparse.ArgumentParser:
    from hfl.demo import add_demo_arguments, cmd_demo

    p = Parser(prog="hfl", description="Secure hierarchical federated learning for healthcare.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    d = sub.add_parser("demo", help="run a whole federation as local processes")
    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("serve", help="run one service, configured from HFL_* environment variables")
    s.add_argument(
        "role",
        choices=(*ROLES, "facilities"),
        help="'facilities' hosts the facilities listed in HFL_FACILITIES_FILE in one process",
    )
    s.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks (results also go to bench/results/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, parser_class=Parser)
    from hfl.bench_federation import add_arguments as add_bench_federation_arguments
    from hfl.bench_federation import cmd_bench_federation

    bf = bench_sub.add_parser(
        "federation", help="full rounds over loopback gRPC: time, bytes, memory vs size"
    )
    add_bench_federation_arguments(bf)
    bf.set_defaults(func=cmd_bench_federation)
    from hfl.bench.secagg import add_arguments as add_bench_secagg_arguments
    from hfl.bench.secagg import cmd_bench_secagg

    bs = bench_sub.add_parser(
        "secagg", help="secure vs plain aggregation over loopback gRPC: time, bytes, memory"
    )
    add_bench_secagg_arguments(bs)
    bs.set_defaults(func=cmd_bench_secagg)

    led = sub.add_parser("ledger", help="ledger tools")
    led_sub = led.add_subparsers(dest="ledger_command", required=True, parser_class=Parser)
    v = led_sub.add_parser("verify", help="re-check every block, certificate and aggregate")
    v.add_argument("path", help="a ledger.db file, or a demo run folder")
    v.add_argument("--no-recompute", action="store_true", help="skip re-running the aggregations")
    v.set_defaults(func=cmd_ledger_verify)

    a = sub.add_parser("aggregate", help="recompute a robust aggregate offline from .npy files")
    a.add_argument("input", help="(n, d) .npy array: bucket sums, or one update per row")
    a.add_argument("output", help="where to write the (d,) aggregate .npy")
    a.add_argument("--rule", default="trimmed_mean")
    a.add_argument("--f", type=int, default=0, help="how many bad rows to tolerate")
    a.add_argument("--counts", help="(n,) .npy of member counts (default: 1 per row)")
    a.add_argument("--clip-update", type=float, default=None, help="norm bound C per member")
    a.set_defaults(func=cmd_aggregate)

    from hfl.model_cli import add_arguments as add_model_arguments

    add_model_arguments(sub)  # `hfl model export`, `hfl predict`

    st = sub.add_parser("status", help="show a running federation")
    st.add_argument("--run", help=RUN_HELP)
    st.add_argument("--leader", help="leader address HOST:PORT")
    st.add_argument("--authority", help="authority address HOST:PORT")
    st.add_argument("--cert-dir", help="operator certificate folder (the authority's /var/lib/hfl/operator)")
    st.set_defaults(func=cmd_status)

    co = sub.add_parser(
        "console", help="the federation console in a browser (needs HFL_CONSOLE_PASSWORD or _FILE)"
    )
    co.add_argument("--run", help=RUN_HELP)
    co.add_argument("--leader", help="leader address HOST:PORT")
    co.add_argument("--authority", help="authority address HOST:PORT")
    co.add_argument("--cert-dir", help="operator certificate folder (the authority's /var/lib/hfl/operator)")
    co.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    co.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    co.set_defaults(func=cmd_console)

    rl = sub.add_parser(
        "release", help="lift a facility's quarantine after you have checked it (operator certificate)"
    )
    rl.add_argument("facility", help="the quarantined facility's node id")
    rl.add_argument("--reason", required=True, help="why it is released (kept in the authority's records)")
    rl.add_argument("--run", help=RUN_HELP)
    rl.add_argument("--authority", help="authority address HOST:PORT")
    rl.add_argument("--cert-dir", help="operator certificate folder (the authority's /var/lib/hfl/operator)")
    rl.set_defaults(func=cmd_release)

    rv = sub.add_parser(
        "revoke", help="revoke a node's certificates (any role: a stolen key, a retired site) (operator)"
    )
    rv.add_argument("node", help="the node id (facility, fog, validator or leader)")
    rv.add_argument("--reason", required=True, help="why (kept with the revocation)")
    rv.add_argument("--run", help=RUN_HELP)
    rv.add_argument("--authority", help="authority address HOST:PORT")
    rv.add_argument("--cert-dir", help="operator certificate folder (the authority's /var/lib/hfl/operator)")
    rv.set_defaults(func=cmd_revoke)

    def where(p: argparse.ArgumentParser, *, leader: bool, authority: bool) -> None:
        p.add_argument("--run", help=RUN_HELP)
        if leader:
            p.add_argument("--leader", help="leader address HOST:PORT")
        if authority:
            p.add_argument("--authority", help="authority address HOST:PORT")
        p.add_argument(
            "--cert-dir", help="operator certificate folder (the authority's /var/lib/hfl/operator)"
        )

    for name, control, text in (
        ("pause", "pause", "pause training after the current round (operator certificate)"),
        ("resume", "resume", "resume paused training (operator certificate)"),
        ("stop-after", "stop_after", "stop training after round N (0: as planned) (operator certificate)"),
        ("interval", "round_interval", "seconds between rounds (negative: as configured) (operator)"),
    ):
        cp = sub.add_parser(name, help=text)
        if control == "stop_after":
            cp.add_argument("round", type=int, help="the last round to train")
        if control == "round_interval":
            cp.add_argument("seconds", type=float, help="seconds to wait between rounds")
        cp.add_argument("--reason", required=True, help="why (kept in the leader's record with who and when)")
        where(cp, leader=True, authority=False)
        cp.set_defaults(func=cmd_control, control=control)

    qp = sub.add_parser("quarantine", help="quarantine a facility by hand, with a reason (operator)")
    qp.add_argument("facility", help="the facility's node id")
    qp.add_argument("--reason", required=True, help="why (kept in the authority's record)")
    where(qp, leader=False, authority=True)
    qp.set_defaults(func=cmd_quarantine)

    tp = sub.add_parser("token", help="a one-time enrolment token for a named new facility (operator)")
    tp.add_argument("facility", help="the new facility's node id")
    tp.add_argument("--hours", type=float, default=24.0, help="how long the token stays valid (default 24)")
    where(tp, leader=False, authority=True)
    tp.set_defaults(func=cmd_token)

    ap = sub.add_parser("actions", help="what operators did (controls, quarantines, releases, tokens)")
    where(ap, leader=True, authority=True)
    ap.set_defaults(func=cmd_actions)

    et = sub.add_parser(
        "enrol-token", help="make a one-time enrolment token for a new node (on the authority)"
    )
    et.add_argument("role", choices=("leader", "fog", "facility", "validator"))
    et.add_argument("node_id")
    et.add_argument("--state-dir", default="/var/lib/hfl", help="the authority's state folder")
    et.set_defaults(func=cmd_enrol_token)

    pv = sub.add_parser("provision", help="hand out the root certificate and enrolment tokens (containers)")
    pv.add_argument("--authority-state", required=True, help="the authority's state folder (holds the CA)")
    pv.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ROLE:NODE_ID=STATE_DIR",
        help="a fixed node (leader, fog, validator) and its state folder; repeat for each",
    )
    pv.add_argument("--facility-trust", help="folder facilities mount read-only: ca.pem and the shared token")
    pv.add_argument(
        "--facility-uses",
        type=int,
        default=25,
        help="how many new facilities the shared token may enrol (default 25)",
    )
    pv.add_argument(
        "--facility-hours",
        type=float,
        default=24.0,
        help="hours until the shared facility token expires (default 24)",
    )
    pv.add_argument("--owner", help="UID:GID to own the written files (when run as root for containers)")
    pv.set_defaults(func=cmd_provision)

    site = sub.add_parser("site", help="tools for a hospital site that joins a federation")
    site_sub = site.add_subparsers(dest="site_command", required=True)
    sc = site_sub.add_parser(
        "check",
        help="before starting the facility: do the authority and fogs answer, is the certificate valid, "
        "do the data parse, is the clock right (reads the same HFL_* settings)",
    )
    sc.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer (default 5)")
    sc.set_defaults(func=cmd_site_check)

    h = sub.add_parser("health", help="standard gRPC health check of one service (exit 0 if serving)")
    h.add_argument("--address", help="HOST:PORT (default: this container's own service)")
    h.add_argument("--timeout", type=float, default=3.0)
    h.add_argument("--cert-dir", help="folder with key.pem, cert.pem, ca.pem (default: $HFL_STATE_DIR/tls)")
    h.set_defaults(func=cmd_health)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, HflError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
