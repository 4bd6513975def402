"""The shipped Prometheus alert rules: valid, tested with `promtool test rules`, and reading only metrics
that hfl defines (a renamed metric would silently disable an alert)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import hfl.rpc.metrics  # noqa: F401  (registers every hfl metric)

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install -y prometheus); alert rule checks skipped",
)


@needs_promtool
def test_promtool_accepts_the_rules_and_the_configuration() -> None:
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        proc = subprocess.run(["promtool", *args], cwd=PROM, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_every_alert_fires_when_it_should_and_not_before() -> None:
    files = ["alerts_test.yml", "alerts_test_long.yml"]  # the second evaluates once a day, over a year
    proc = subprocess.run(["promtool", "test", "rules", *files], cwd=PROM, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {name for f in files for name in re.findall(r"alertname: (\w+)", (PROM / f).read_text())}
    defined = set(re.findall(r"- alert: (\w+)", (PROM / "alerts.yml").read_text()))
    assert defined == tested, f"alerts without a test: {sorted(defined - tested)}"


def test_the_rules_read_only_metrics_that_hfl_defines() -> None:
    defined = {m.name for m in REGISTRY.collect()} | {s.name for m in REGISTRY.collect() for s in m.samples}
    used = set(re.findall(r"\bhfl_[a-z_]+", (PROM / "alerts.yml").read_text()))
    assert used, "no hfl metric found in alerts.yml"
    assert used <= defined, f"alerts.yml reads metrics hfl does not define: {sorted(used - defined)}"
