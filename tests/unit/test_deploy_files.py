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


def _stack_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`docker stack config`: the stack file as `docker stack deploy` reads it (needs the CLI only)."""
    import os
    import shutil

    if shutil.which("docker") is None:
        pytest.skip("the docker command line is not installed")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HFL_")}
    return subprocess.run(
        ["docker", "stack", "config", "-c", str(DEPLOY / "central" / "stack.yml")],
        capture_output=True,
        text=True,
        env={**clean, **env},
    )


def test_the_swarm_stack_runs_the_central_tier_with_secrets_health_checks_and_restarts() -> None:
    refused = _stack_config({})
    assert refused.returncode != 0 and "set HFL_PUBLIC_HOST" in refused.stderr
    done = _stack_config({"HFL_PUBLIC_HOST": "hfl.example.org"})
    assert done.returncode == 0, done.stderr
    text = done.stdout
    services_part, _, rest = text.partition("\nnetworks:\n")
    services = services_part.partition("services:\n")[2] + "\n"
    blocks = dict(re.findall(r"^  (\S+):\n((?:    .*\n)+)", services, re.M))
    compose = (DEPLOY / "central" / "docker-compose.yml").read_text()
    compose_services = compose.partition("\nservices:\n")[2].partition("\nnetworks:\n")[0]
    central = set(re.findall(r"^  ([a-z0-9-]+):", compose_services, re.M))
    # the same federation as the compose kit, without its one-shot provisioning and optional extras
    assert set(blocks) == central - {"provision", "console", "prometheus", "grafana"}
    assert sum(s.startswith("validator-") for s in blocks) == 7 and 'HFL_COMMITTEE_SIZE: "4"' in text
    declared = set(re.findall(r"^  (hfl-\S+):\n    name: \S+\n    external: true$", rest, re.M))
    for name, block in blocks.items():
        assert "hfl.health" in block and "restart_policy:\n        condition: any" in block, name
        assert "endpoint_mode: dnsrr" in block and "order: stop-first" in block, name
        assert f"- node.labels.hfl.{name} == true" in block, f"{name} is not pinned to its machine"
        assert f"source: {name}-state\n        target: /var/lib/hfl" in block, f"{name} keeps no state"
        used = set(re.findall(r"- source: (\S+)", block))
        assert used and used <= declared, f"{name} uses undeclared secrets {used - declared}"
        if name != "authority":
            assert f"source: hfl-token-{name}" in block and "HFL_ENROL_TOKEN_FILE: /run/secrets/" in block
            assert "HFL_CA_FROM" not in block
    assert "HFL_CA_FROM: /run/secrets" in blocks["authority"] and "hfl-ca.key" in blocks["authority"]
    assert not any("hfl-ca.key" in b for n, b in blocks.items() if n != "authority"), "only the authority"
    # what the hospitals dial is published; the leader and validators are not
    published = {n: re.findall(r"published: (\d+)", b) for n, b in blocks.items()}
    assert published["authority"] == ["50051", "50052"] and published["fog-1"] == ["50061"]
    assert published["fog-2"] == ["50062"] and not published["leader"] and not published["validator-1"]
    assert "HFL_LISTEN: 0.0.0.0:50062" in blocks["fog-2"]  # a fog listens on the port it registers
    # swarm-secrets.sh makes exactly the secrets the stack expects
    script = (DEPLOY / "central" / "swarm-secrets.sh").read_text()
    made = set(re.findall(r"^secret (hfl-\S+) ", script, re.M))
    fixed = [s for s in blocks if s != "authority"]
    assert declared == made | {f"hfl-token-{n}" for n in fixed}
