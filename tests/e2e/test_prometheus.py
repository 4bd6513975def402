"""A real Prometheus scrapes every service of a running federation; the metrics pass `promtool check metrics`;
every PromQL expression of the Grafana dashboard returns data.

No Docker needed: the federation is `hfl demo --keep-running` on 127.0.0.1 (its endpoints.json lists every
metrics address) and Prometheus is Debian's package (`apt-get install prometheus`), started by the test with
a generated static scrape configuration whose jobs are named after roles, as in
deploy/prometheus/prometheus.yml. Skipped with a reason when prometheus/promtool are not installed.
About 1 to 2 minutes on the project machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.compose import ROOT, wait_for

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "hfl.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Grafana fills these in; for a direct query, a window that spans several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}

pytestmark = [
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("promtool")),
        reason="Prometheus is not installed (apt-get install -y prometheus); metrics checks skipped",
    ),
    pytest.mark.timeout(600),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, grace: float = 30) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small federation with differential privacy on (so ε is reported), kept running after 3 rounds."""
    out = tmp_path_factory.mktemp("fed") / "run"
    log_file = out.parent / "demo.log"
    cmd = [
        sys.executable,
        "-m",
        "hfl.cli",
        "demo",
        "--facilities",
        "4",
        "--rounds",
        "3",
        "--dp-epsilon",
        "5",
        "--keep-running",
        "--out",
        str(out),
    ]
    with open(log_file, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def rounds_done() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"hfl demo stopped:\n{log_file.read_text(errors='replace')[-3000:]}")
            return (out / "summary.json").exists()

        wait_for(
            "the demo federation to finish 3 rounds",
            rounds_done,
            timeout=300,
            every=1,
            on_timeout=lambda: log_file.read_text(errors="replace")[-3000:],
        )
        endpoints = json.loads((out / "endpoints.json").read_text())
        yield {"out": out, "endpoints": endpoints}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def prometheus(federation: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prom")
    jobs: dict[str, list[str]] = {}
    for e in federation["endpoints"]:
        jobs.setdefault(e["role"], []).append(e["metrics"])  # endpoints() lists hosted facilities one by one
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": role, "static_configs": [{"targets": sorted(set(targets))}]}
            for role, targets in sorted(jobs.items())
        ],
    }
    (work / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    check = subprocess.run(
        ["promtool", "check", "config", str(work / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = work / "prometheus.log"
    with open(log_file, "wb") as f:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            "Prometheus to answer",
            lambda: get_json(f"{url}/api/v1/status/buildinfo")["status"] == "success",
            timeout=60,
            every=0.5,
            on_timeout=lambda: log_file.read_text(errors="replace")[-2000:],
        )
        yield url
    finally:
        stop(proc, signal.SIGTERM)


def test_prometheus_scrapes_every_service(federation: dict[str, Any], prometheus: str) -> None:
    expected = {e["metrics"] for e in federation["endpoints"]}

    def all_up() -> bool:
        targets = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        healthy = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        return expected <= healthy

    wait_for("every service to be scraped", all_up, timeout=60, every=1)
    roles = {r["metric"]["job"] for r in query(prometheus, "up == 1")}
    assert roles == {"authority", "leader", "fog", "validator", "facility"}


def test_promtool_accepts_the_shipped_configuration() -> None:
    """The configuration deploy/docker-compose.yml mounts (the test federation uses its own, above)."""
    shipped = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(shipped)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_promtool_accepts_every_endpoint(federation: dict[str, Any]) -> None:
    for e in federation["endpoints"]:
        with urllib.request.urlopen(f"http://{e['metrics']}/metrics", timeout=10) as r:
            body = r.read()
        assert b"hfl_up" in body, f"{e['node_id']} does not export hfl_up"
        proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        assert proc.returncode == 0, (
            f"{e['node_id']} ({e['metrics']}): {proc.stdout.decode()}{proc.stderr.decode()}"
        )


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for p in board["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            found.append((p["title"], expr))
    return found


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", f"{expr}: {answer}"
    return list(answer["data"]["result"])


def test_every_dashboard_expression_returns_data(federation: dict[str, Any], prometheus: str) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 15, "the dashboard lost panels"
    assert "$" not in " ".join(e for _, e in exprs), "a Grafana variable is not substituted in the test"
    # rate()/increase() need a few samples of every target in their window.
    wait_for(
        "30 s of samples",
        lambda: bool(query(prometheus, 'count_over_time(hfl_up{job="leader"}[30s]) >= 10')),
        timeout=90,
        every=2,
    )
    empty = []
    for title, expr in exprs:
        if not query(prometheus, expr):
            empty.append(f"{title}: {expr}")
    assert not empty, "these dashboard expressions return no data:\n  " + "\n  ".join(empty)


def test_alert_rules_load_and_read_live_metrics(federation: dict[str, Any], prometheus: str) -> None:
    """The shipped alert rules load without error, every hfl_ metric they read exists in a live federation,
    and a healthy federation fires none of them (but NoCommit: a --keep-running demo stops training)."""
    wait_for(
        "the alert rules to be evaluated",
        lambda: all(
            r.get("lastEvaluation", "").startswith("20")
            for g in get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
            for r in g["rules"]
        ),
        timeout=60,
        every=1,
    )
    groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 7, "the alert rules did not load"
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    names = set(re.findall(r"\bhfl_[a-z_]+", ALERTS.read_text()))

    def missing() -> list[str]:
        return [n for n in sorted(names) if not query(prometheus, n)]

    wait_for(
        "every metric the alert rules read to be scraped",
        lambda: not missing(),
        timeout=60,
        every=1,
        on_timeout=lambda: f"the alert rules read metrics that no service exports: {missing()}",
    )
    firing = {a["labels"]["alertname"] for a in get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]}
    # The demo sizes ε per round so that its whole budget is spent by the last round: the budget alert
    # must then be raised, and only when a facility really is past 80 % of it.
    spent = max(float(r["value"][1]) for r in query(prometheus, 'hfl_privacy_epsilon_spent{job="authority"}'))
    budget = float(query(prometheus, 'hfl_privacy_epsilon_budget{job="authority"}')[0]["value"][1])
    assert budget == 5.0
    assert ("PrivacyBudgetNearlyUsed" in firing) == (spent > 0.8 * budget), (spent, budget, firing)
    assert firing - {"PrivacyBudgetNearlyUsed"} <= {"NoCommit"}, f"a healthy federation alerted: {firing}"
