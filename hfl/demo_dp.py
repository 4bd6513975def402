"""`hfl demo` options for differential privacy (kept apart from hfl/demo.py)."""

from __future__ import annotations

import argparse
from typing import Any

from hfl.errors import ConfigError

# HFL_DP_* variable -> the option that sets it (hfl/demo.py names the option when a setting is refused)
DP_OPTIONS = {
    "HFL_DP_EPSILON": "--dp-epsilon",
    "HFL_DP_DELTA": "--dp-delta",
    "HFL_DP_MECHANISM": "--dp-mechanism",
    "HFL_DP_ACCOUNTANT": "--dp-accountant",
    "HFL_DP_CLIP": "--dp-clip",
    "HFL_DP_SAMPLING_RATE": "--dp-sampling-rate",
    "HFL_DP_LOCAL_EPOCHS": "--dp-local-epochs",
}


def add_dp_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (off unless --dp-epsilon is given)")
    g.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="privacy budget ε per facility for the whole run (e.g. 1); turns DP-SGD on",
    )
    g.add_argument("--dp-delta", type=float, default=1e-5, help="δ of the (ε, δ) guarantee (default 1e-5)")
    g.add_argument(
        "--dp-mechanism",
        choices=("gaussian", "laplace"),
        default="gaussian",
        help="noise added to the clipped gradients (default gaussian)",
    )
    g.add_argument(
        "--dp-accountant",
        choices=("rdp", "pld"),
        default=None,
        help="privacy accountant (default: rdp for gaussian, pld for laplace)",
    )
    g.add_argument(
        "--dp-clip", type=float, default=None, help="per-record gradient clipping bound C (default 1)"
    )
    g.add_argument(
        "--dp-sampling-rate",
        type=float,
        default=None,
        help="chance each record joins a training step (default 0.25)",
    )
    g.add_argument(
        "--dp-local-epochs",
        type=float,
        default=None,
        help="expected passes over the local data per round (default 1)",
    )


def check_dp_args(args: argparse.Namespace) -> None:
    """What only the demo's options need: --dp-epsilon 0 is refused (for the services HFL_DP_EPSILON=0 still
    means "no differential privacy", so it would quietly train without it), and the default accountant
    is the one the mechanism needs. The numbers are checked by the leader's and the authority's settings
    (hfl.demo.check_settings)."""
    if args.dp_epsilon is not None and not args.dp_epsilon > 0:
        raise ConfigError("--dp-epsilon must be more than 0 (leave it out to train without privacy)")
    if args.dp_accountant is None:
        args.dp_accountant = "rdp" if args.dp_mechanism == "gaussian" else "pld"


def dp_env(args: argparse.Namespace) -> dict[str, str]:
    """HFL_DP_* variables for the leader (and the authority, which needs the budget)."""
    if args.dp_epsilon is None:
        return {}
    given = {
        "HFL_DP_EPSILON": args.dp_epsilon,
        "HFL_DP_DELTA": args.dp_delta,
        "HFL_DP_MECHANISM": args.dp_mechanism,
        "HFL_DP_ACCOUNTANT": args.dp_accountant,
        "HFL_DP_CLIP": args.dp_clip,
        "HFL_DP_SAMPLING_RATE": args.dp_sampling_rate,
        "HFL_DP_LOCAL_EPOCHS": args.dp_local_epochs,
    }
    return {name: v if isinstance(v, str) else repr(v) for name, v in given.items() if v is not None}


def dp_summary(leader_info: dict[str, Any]) -> dict[str, Any] | None:
    """The summary.json `dp` object from the plan the leader calibrated (None without DP)."""
    plan = leader_info.get("dp")  # DPPlan.to_dict(), as the leader announced it
    return dict(plan) if isinstance(plan, dict) else None


def dp_banner(summary: dict[str, Any] | None) -> str:
    """The demo's privacy line: what the budget means in plain words, then the technical settings."""
    if summary is None:
        return "Differential privacy: off"
    q = float(summary["sampling_rate"])
    return (
        f"Differential privacy: on. Each facility may spend a privacy budget of ε = "
        f"{summary['epsilon_budget']:g}, enough for {summary['rounds']} rounds, the planned ones and "
        "a few spare for retried ones (smaller ε: more private; "
        f"δ = {summary['delta']:g} is the small chance the promise does not hold). To stay within it, each "
        f"training step uses a random {q:.0%} of a site's patients and adds {summary['mechanism']} noise "
        f"{summary['noise_multiplier']:.2f} times the most one patient can change it.\n"
        f"  (noise multiplier {summary['noise_multiplier']:.2f}, clip {summary['clip']:g}, sampling rate "
        f"q = {q:g}, {summary['steps_per_round']} steps per round, "
        f"{str(summary['accountant']).upper()} accounting with Google's dp-accounting)"
    )
