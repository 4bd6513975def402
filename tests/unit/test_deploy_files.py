"""The deployment files agree with each other: dashboard JSON, its generator, scrape jobs, compose file."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
from pathlib import Path

import pytest

from hfl.rpc import metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_dashboard_json_is_what_the_generator_writes() -> None:
    module = runpy.run_path(str(DEPLOY / "grafana" / "make_dashboard.py"))
    on_disk = json.loads((DEPLOY / "grafana" / "dashboards" / "hfl.json").read_text())
    assert on_disk == json.loads(json.dumps(module["build"]())), (
        "hfl.json is stale: run python3 deploy/grafana/make_dashboard.py"
    )


def test_dashboard_covers_every_architecture_metric() -> None:
    text = (DEPLOY / "grafana" / "dashboards" / "hfl.json").read_text()
    for name in (
        "hfl_up",
        "hfl_facility_fog",
        "hfl_model_accuracy",
        "hfl_model_loss",
        "hfl_round",
        "hfl_privacy_epsilon_spent",
        "hfl_votes_total",
        "hfl_commits_total",
        "hfl_flagged_buckets_total",
        "hfl_quarantined",
        "hfl_refused_messages_total",
        "hfl_secagg_dropouts_total",
        "hfl_round_duration_seconds_bucket",
        "hfl_bytes_sent_total",
        "hfl_bytes_received_total",
        "hfl_reputation",
    ):
        assert re.search(rf"\b{name}\b", text), f"the dashboard does not show {name}"


def test_every_metric_has_help_text() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    found = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(found) >= 14
    for m in found:
        assert len(m._documentation) > 10, f"{m._name} needs a help text"


def test_scrape_jobs_match_the_dashboard_and_compose_services() -> None:
    prom = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    jobs = set(re.findall(r"job_name:\s*(\S+)", prom))
    assert jobs == {"authority", "leader", "fog", "validator", "facility"}
    board_jobs = set(
        re.findall(r'job=\\"(\w+)\\"', (DEPLOY / "grafana" / "dashboards" / "hfl.json").read_text())
    )
    assert board_jobs <= jobs
    compose = (DEPLOY / "docker-compose.yml").read_text()
    for name in re.findall(r"names: \[([^\]]+)\]", prom):
        for service in (s.strip() for s in name.split(",")):
            assert re.search(rf"^  {re.escape(service)}:", compose, re.MULTILINE), (
                f"no compose service {service}"
            )


def test_compose_file_is_valid_with_every_profile() -> None:
    from tests.e2e.compose import compose_command  # `docker compose` or `docker-compose`, whichever exists

    try:
        compose = compose_command()
    except RuntimeError as e:
        pytest.skip(str(e))
    for profile in ([], ["--profile", "byzantine"], ["--profile", "monitoring"]):
        proc = subprocess.run(
            [*compose, "-f", str(DEPLOY / "docker-compose.yml"), *profile, "config", "-q"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr


def _kit_config(kit: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    from tests.e2e.compose import compose_command

    try:
        compose = compose_command()
    except RuntimeError as e:
        pytest.skip(str(e))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HFL_")}
    return subprocess.run(
        [*compose, "-f", str(DEPLOY / kit / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=DEPLOY / kit,
    )


def test_the_site_kit_runs_a_facility_that_opens_no_port_to_the_outside() -> None:
    refused = _kit_config("site", {})
    assert refused.returncode != 0 and "set HFL_SITE_NAME in .env" in refused.stderr
    done = _kit_config("site", {"HFL_SITE_NAME": "st-marys", "HFL_AUTHORITY": "hfl.example.org:50051"})
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "serve" in text and "facility" in text
    # the only published port is its metrics, on this machine's loopback; the data are read-only
    assert re.findall(r"^    - (\S+/tcp)$", text, re.MULTILINE) == ["127.0.0.1:9100:9100/tcp"], text
    assert re.search(r":/data:ro$", text, re.MULTILINE) and re.search(
        r":/etc/hfl/trust:ro$", text, re.MULTILINE
    )
    example = (DEPLOY / "site" / ".env.example").read_text()
    source = (DEPLOY / "site" / "docker-compose.yml").read_text()
    for name in set(re.findall(r"\$\{(HFL_[A-Z0-9_]+)", source)) - {"HFL_IMAGE", "HFL_LOG_LEVEL"}:
        assert f"{name}=" in example, f"{name} is read by the site kit but not explained in .env.example"


def test_the_central_kit_publishes_what_sites_dial_and_needs_its_public_name() -> None:
    refused = _kit_config("central", {})
    assert refused.returncode != 0 and "set HFL_PUBLIC_HOST" in refused.stderr
    done = _kit_config("central", {"HFL_PUBLIC_HOST": "hfl.example.org"})
    assert done.returncode == 0, done.stderr
    assert not re.search(r"^  facility", done.stdout, re.MULTILINE)  # hospitals run their own
    for port in ("50051", "50052", "50061", "50062"):
        assert port in done.stdout
