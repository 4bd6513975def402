"""PrivacyAccountant matches dp_accounting; budget checks; calibration hits its target."""

from __future__ import annotations

from typing import Any

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from hfl.privacy.accountant import PrivacyAccountant, compute_epsilon
from hfl.privacy.budget import BudgetExceeded
from hfl.privacy.calibrate import calibrate_noise_multiplier, describe
from hfl.privacy.dpsgd import DPConfig

COARSE = 1e-3  # PLD discretization used in tests to keep them fast.


def reference_epsilon(
    mechanism: str, sigma: float, q: float, steps: int, delta: float, kind: str, disc: float = COARSE
) -> float:
    """ε computed directly with dp_accounting, one step event composed `steps` times."""
    base = (
        dp_accounting.GaussianDpEvent(sigma)
        if mechanism == "gaussian"
        else dp_accounting.LaplaceDpEvent(sigma)
    )
    event = base if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, base)
    acct: dp_accounting.PrivacyAccountant
    acct = rdp.RdpAccountant() if kind == "rdp" else pld.PLDAccountant(value_discretization_interval=disc)
    acct.compose(event, steps)
    return float(acct.get_epsilon(delta))


def make(**kw: Any) -> DPConfig:
    base: dict[str, Any] = {
        "mechanism": "gaussian",
        "clip": 1.0,
        "noise_multiplier": 1.1,
        "sampling_rate": 0.05,
        "accountant": "rdp",
        "delta": 1e-5,
        "epsilon_budget": None,
    }
    return DPConfig(**{**base, **kw})


@pytest.mark.parametrize(
    ("mechanism", "kind", "sigma", "q", "steps"),
    [
        ("gaussian", "rdp", 1.1, 0.05, 120),
        ("gaussian", "rdp", 0.9, 1.0, 3),
        ("gaussian", "pld", 1.1, 0.05, 120),
        ("laplace", "pld", 4.0, 0.1, 60),
        ("laplace", "rdp", 20.0, 1.0, 10),
    ],
)
def test_accountant_epsilon_equals_dp_accounting(
    mechanism: str, kind: str, sigma: float, q: float, steps: int
) -> None:
    cfg = make(mechanism=mechanism, accountant=kind, noise_multiplier=sigma, sampling_rate=q)
    acct = PrivacyAccountant(cfg, pld_discretization=COARSE)
    assert acct.epsilon() == 0.0
    acct.record_steps(steps // 3)
    acct.record_steps(steps - steps // 3)
    assert acct.steps == steps
    ref = reference_epsilon(mechanism, sigma, q, steps, 1e-5, kind)
    assert acct.epsilon() == pytest.approx(ref, rel=1e-9)
    assert ref > 0.0


def test_epsilon_after_does_not_record_and_grows() -> None:
    acct = PrivacyAccountant(make())
    acct.record_steps(50)
    now = acct.epsilon()
    later = acct.epsilon_after(50)
    assert acct.steps == 50
    assert later > now
    assert later == pytest.approx(reference_epsilon("gaussian", 1.1, 0.05, 100, 1e-5, "rdp"), rel=1e-9)
    assert acct.epsilon_after(0) == now


def test_would_exceed_and_budget_exceeded() -> None:
    budget = compute_epsilon("gaussian", 1.1, 0.05, 100, 1e-5, "rdp")
    acct = PrivacyAccountant(make(epsilon_budget=budget))
    assert not acct.would_exceed(100)  # exactly at the budget is allowed
    assert acct.would_exceed(101)
    assert acct.ensure_within_budget(100) == budget
    acct.record_steps(60)
    assert not acct.would_exceed(40)
    assert acct.would_exceed(41)
    with pytest.raises(BudgetExceeded, match="budget") as info:
        acct.ensure_within_budget(41)
    assert info.value.budget == budget
    assert info.value.projected is not None and info.value.projected > budget
    assert acct.steps == 60  # declining does not record anything


def test_would_exceed_without_budget_is_an_error() -> None:
    with pytest.raises(ValueError, match="No epsilon budget"):
        PrivacyAccountant(make(epsilon_budget=None)).would_exceed(1)


def test_accountant_rejects_bad_steps_and_configs() -> None:
    acct = PrivacyAccountant(make())
    with pytest.raises(ValueError):
        acct.record_steps(-1)
    with pytest.raises(TypeError):
        acct.record_steps(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        acct.epsilon_after(-3)
    with pytest.raises(TypeError):
        PrivacyAccountant({"mechanism": "gaussian"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pld"):
        compute_epsilon("laplace", 2.0, 0.1, 10, 1e-5, "rdp")
    with pytest.raises(ValueError):
        PrivacyAccountant(make(), pld_discretization=0.0)


# --- calibration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_calibration_rdp_gaussian_hits_target(target: float) -> None:
    q, steps, delta = 0.1, 30, 1e-5
    sigma = calibrate_noise_multiplier(target, delta, q, steps, "gaussian", "rdp")
    eps = reference_epsilon("gaussian", sigma, q, steps, delta, "rdp")
    assert target * 0.99 <= eps <= target


@pytest.mark.parametrize(
    ("target", "delta", "q", "steps", "mechanism"),
    [
        (1.0, 1e-5, 0.05, 40, "gaussian"),
        (4.0, 1e-6, 0.2, 15, "gaussian"),
        (0.5, 1e-5, 0.1, 50, "laplace"),
        (2.0, 1e-5, 0.2, 20, "laplace"),
        (8.0, 1e-5, 0.1, 30, "laplace"),
    ],
)
def test_calibration_pld_hits_target(
    target: float, delta: float, q: float, steps: int, mechanism: str
) -> None:
    sigma = calibrate_noise_multiplier(target, delta, q, steps, mechanism, "pld", pld_discretization=COARSE)
    eps = reference_epsilon(mechanism, sigma, q, steps, delta, "pld")
    assert target * 0.99 <= eps <= target


def test_calibrated_config_fits_its_own_budget() -> None:
    sigma = calibrate_noise_multiplier(2.0, 1e-5, 0.05, 100, "gaussian", "rdp")
    acct = PrivacyAccountant(make(noise_multiplier=sigma, epsilon_budget=2.0))
    assert not acct.would_exceed(100)
    assert acct.would_exceed(130)


def test_calibration_unreachable_target_is_a_clear_error() -> None:
    # RDP conversion has a floor above 1e-3 at δ=1e-5 with the default orders.
    with pytest.raises(ValueError, match="cannot be reached"):
        calibrate_noise_multiplier(1e-3, 1e-5, 0.1, 100, "gaussian", "rdp")


def test_calibration_absurdly_loose_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="loose"):
        calibrate_noise_multiplier(500.0, 1e-5, 0.01, 1, "gaussian", "rdp")


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 1e-5, 0.1, 10, "gaussian", "rdp"),
        (1.0, 0.0, 0.1, 10, "gaussian", "rdp"),
        (1.0, 1e-5, 0.0, 10, "gaussian", "rdp"),
        (1.0, 1e-5, 0.1, 0, "gaussian", "rdp"),
        (1.0, 1e-5, 0.1, 10, "gaussian", "moments"),
        (1.0, 1e-5, 0.1, 10, "laplace", "rdp"),
    ],
)
def test_calibration_rejects_bad_arguments(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        calibrate_noise_multiplier(*args)


def test_calibration_rejects_loose_tolerance() -> None:
    with pytest.raises(ValueError, match="Tolerance"):
        calibrate_noise_multiplier(1.0, 1e-5, 0.1, 10, "gaussian", "rdp", tol=0.05)


def test_describe_reports_total_epsilon() -> None:
    cfg = make(noise_multiplier=1.23, epsilon_budget=50.0)
    line = describe(cfg, steps_per_round=40, rounds=10)
    eps = reference_epsilon("gaussian", 1.23, 0.05, 400, 1e-5, "rdp")
    assert f"ε={eps:.2f}" in line
    assert "1.23×C" in line and "10 rounds of 40 steps" in line and "δ=1e-05" in line
    assert "within the budget ε=50.00" in line
    over = describe(make(noise_multiplier=1.23, epsilon_budget=0.5), 40, 10)
    assert "OVER the budget" in over
    with pytest.raises(ValueError):
        describe(cfg, 0, 10)
