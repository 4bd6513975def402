"""`hfl demo` options for differential privacy (kept apart from hfl/demo.py)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from hfl.errors import ConfigError


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
        "--dp-clip", type=float, default=0.0, help="per-record gradient clipping bound C (default 1)"
    )
    g.add_argument(
        "--dp-sampling-rate",
        type=float,
        default=0.0,
        help="chance each record joins a training step (default 0.25)",
    )
    g.add_argument(
        "--dp-local-epochs",
        type=float,
        default=0.0,
        help="expected passes over the local data per round (default 1)",
    )


def check_dp_args(args: argparse.Namespace) -> None:
    if args.dp_epsilon is None:
        return
    from hfl.privacy.dpsgd import check_supported
    from hfl.privacy.federation import DEFAULT_SAMPLING_RATE

    if not (math.isfinite(args.dp_epsilon) and args.dp_epsilon > 0):
        raise ConfigError("--dp-epsilon must be a positive number (leave it out to train without privacy)")
    if not 0 < args.dp_delta < 1:
        raise ConfigError("--dp-delta must be between 0 and 1 (typically 1e-5)")
    if args.dp_clip < 0 or args.dp_local_epochs < 0 or not 0 <= args.dp_sampling_rate <= 1:
        raise ConfigError("--dp-clip and --dp-local-epochs must be positive and --dp-sampling-rate in (0, 1]")
    if args.dp_accountant is None:
        args.dp_accountant = "rdp" if args.dp_mechanism == "gaussian" else "pld"
    try:
        check_supported(args.dp_mechanism, args.dp_accountant, args.dp_sampling_rate or DEFAULT_SAMPLING_RATE)
    except ValueError:
        raise ConfigError(
            "the RDP accountant cannot account for Laplace noise with sampled batches; use "
            "--dp-accountant pld with --dp-mechanism laplace"
        ) from None


def dp_env(args: argparse.Namespace) -> dict[str, str]:
    """HFL_DP_* variables for the leader (and the authority, which needs the budget)."""
    if args.dp_epsilon is None:
        return {}
    return {
        "HFL_DP_EPSILON": repr(args.dp_epsilon),
        "HFL_DP_DELTA": repr(args.dp_delta),
        "HFL_DP_MECHANISM": args.dp_mechanism,
        "HFL_DP_ACCOUNTANT": args.dp_accountant,
        "HFL_DP_CLIP": repr(args.dp_clip),
        "HFL_DP_SAMPLING_RATE": repr(args.dp_sampling_rate),
        "HFL_DP_LOCAL_EPOCHS": repr(args.dp_local_epochs),
    }


def dp_summary(leader_info: dict[str, Any]) -> dict[str, Any] | None:
    """The summary.json `dp` object from the plan the leader calibrated (None without DP)."""
    plan = leader_info.get("dp")  # DPPlan.to_dict(), as the leader announced it
    return dict(plan) if isinstance(plan, dict) else None


def dp_banner(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "Differential privacy: off"
    return (
        f"Differential privacy: {summary['mechanism']} noise ×{summary['noise_multiplier']:.2f}, "
        f"{summary['steps_per_round']} sampled steps per round (q={summary['sampling_rate']:g}), "
        f"budget ε={summary['epsilon_budget']:g} at δ={summary['delta']:g} per facility "
        f"({str(summary['accountant']).upper()} accounting)"
    )
