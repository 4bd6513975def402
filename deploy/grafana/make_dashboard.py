#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/hfl.json, the Grafana dashboard of an hfl federation.

Edit the panels here and re-run `python3 deploy/grafana/make_dashboard.py`; the JSON is what Grafana loads
(provisioned by deploy/grafana/provisioning/dashboards/hfl.yml). tests/e2e/test_prometheus.py runs every
expression of the JSON against a real Prometheus. Jobs are named after roles (authority, leader, fog,
validator, facility), as in deploy/prometheus/prometheus.yml. Runs on any Python 3.8+ with no packages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "hfl-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards" / "hfl.json"


def target(expr: str, legend: str = "", instant: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    return {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant,
        "range": not instant,
        "format": fmt,
    }


def panel(
    kind: str,
    title: str,
    desc: str,
    targets: list[dict[str, Any]],
    w: int = 8,
    h: int = 8,
    unit: str = "short",
    **options: Any,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    }
    if options:
        p["options"] = options
    return p


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


RATE = "$__rate_interval"

SECTIONS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Topology and health",
        [
            panel(
                "stat",
                "Services up",
                "Services answering as ready (hfl_up), by role.",
                [target("sum by (role) (hfl_up)", "{{role}}", instant=True)],
                w=8,
                options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
            ),
            panel(
                "stat",
                "Scrape targets reachable",
                "Prometheus could read the service's /metrics (1 = yes).",
                [target("sum by (job) (up)", "{{job}}", instant=True)],
                w=8,
            ),
            panel(
                "table",
                "Which fog each facility reports to",
                "Facility → fog assignment of recent rounds.",
                [
                    target(
                        'max by (facility, fog) (hfl_facility_fog{job="leader"})', instant=True, fmt="table"
                    )
                ],
                w=8,
            ),
        ],
    ),
    (
        "Training progress",
        [
            panel(
                "timeseries",
                "Model accuracy",
                "Accuracy of the last committed global model on the facilities' local test sets (pooled).",
                [target('hfl_model_accuracy{job="leader"}', "accuracy")],
                unit="percentunit",
            ),
            panel(
                "timeseries",
                "Model loss",
                "Mean log-loss of the last committed global model.",
                [target('hfl_model_loss{job="leader"}', "loss")],
            ),
            panel(
                "timeseries",
                "Committed round",
                "Last committed round (leader) and last round each node took part in.",
                [
                    target('hfl_round{job="leader"}', "committed"),
                    target('max by (job) (hfl_round{job!="leader"})', "{{job}}"),
                ],
            ),
        ],
    ),
    (
        "Privacy",
        [
            panel(
                "timeseries",
                "Privacy loss per facility (ε spent)",
                "Differential-privacy budget spent so far "
                "by each facility (only when DP is on: HFL_DP_EPSILON).",
                [target("max by (facility) (hfl_privacy_epsilon_spent)", "{{facility}}")],
                w=24,
            ),
        ],
    ),
    (
        "Consensus",
        [
            panel(
                "timeseries",
                "Validator votes",
                "Votes of the validator committee per interval, by decision.",
                [target(f"sum by (decision) (increase(hfl_votes_total[{RATE}]))", "{{decision}}")],
            ),
            panel(
                "timeseries",
                "Round outcomes",
                "Round attempts per interval: committed, or refused by the committee.",
                [
                    target(
                        f'sum by (outcome) (increase(hfl_commits_total{{job="leader"}}[{RATE}]))',
                        "{{outcome}}",
                    )
                ],
            ),
            panel(
                "stat",
                "Rounds by outcome (total)",
                "All round attempts since the leader started.",
                [target('sum by (outcome) (hfl_commits_total{job="leader"})', "{{outcome}}", instant=True)],
            ),
        ],
    ),
    (
        "Security events",
        [
            panel(
                "timeseries",
                "Flagged buckets",
                "Buckets rejected by the norm bound or the robust rule.",
                [target(f'sum(increase(hfl_flagged_buckets_total{{job="leader"}}[{RATE}]))', "flagged")],
                w=6,
            ),
            panel(
                "table",
                "Quarantined facilities",
                "1 = quarantined by the authority (left out of rounds).",
                [target('max by (facility) (hfl_quarantined{job="authority"})', instant=True, fmt="table")],
                w=6,
            ),
            panel(
                "timeseries",
                "Refused messages",
                "Messages refused at the boundary, by reason (0 when none).",
                [
                    target(
                        f"sum by (reason) (increase(hfl_refused_messages_total[{RATE}])) or vector(0)",
                        "{{reason}}",
                    )
                ],
                w=6,
            ),
            panel(
                "timeseries",
                "Secure-aggregation dropouts",
                "Facilities that dropped out of a secure aggregation.",
                [target(f'sum(increase(hfl_secagg_dropouts_total{{job="leader"}}[{RATE}]))', "dropouts")],
                w=6,
            ),
        ],
    ),
    (
        "Round latency and bytes",
        [
            panel(
                "timeseries",
                "Round duration",
                "Wall-clock time of a round attempt (median and 95th percentile).",
                [
                    target(
                        f"histogram_quantile(0.5, sum by (le) (rate(hfl_round_duration_seconds_bucket"
                        f'{{job="leader"}}[{RATE}])))',
                        "median",
                    ),
                    target(
                        f"histogram_quantile(0.95, sum by (le) (rate(hfl_round_duration_seconds_bucket"
                        f'{{job="leader"}}[{RATE}])))',
                        "95th percentile",
                    ),
                ],
                unit="s",
            ),
            panel(
                "timeseries",
                "Bytes sent",
                "gRPC bytes sent per second, by the sender's role (job) and peer.",
                [target(f"sum by (job, peer) (rate(hfl_bytes_sent_total[{RATE}]))", "{{job}} → {{peer}}")],
                unit="Bps",
            ),
            panel(
                "timeseries",
                "Bytes received",
                "gRPC bytes received per second, by the receiver's role and peer.",
                [
                    target(
                        f"sum by (job, peer) (rate(hfl_bytes_received_total[{RATE}]))", "{{job}} ← {{peer}}"
                    )
                ],
                unit="Bps",
            ),
        ],
    ),
    (
        "Reputation",
        [
            panel(
                "timeseries",
                "Facility reputation",
                "Reputation score in [0, 1] kept by the authority.",
                [target('hfl_reputation{job="authority", role="facility"}', "{{node}}")],
                w=12,
            ),
            panel(
                "timeseries",
                "Validator reputation (committee draw weight)",
                "Reputation of each validator.",
                [target('hfl_reputation{job="authority", role="validator"}', "{{node}}")],
                w=12,
            ),
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for title, items in SECTIONS:
        r = row(title)
        r["id"], r["gridPos"] = pid, {"x": 0, "y": y, "w": 24, "h": 1}
        pid, y = pid + 1, y + 1
        panels.append(r)
        x = 0
        for p in items:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y = 0, y + h
            p["id"], p["gridPos"] = pid, {"x": x, "y": y, "w": w, "h": h}
            for i, t in enumerate(p["targets"]):
                t["refId"] = chr(ord("A") + i)
            pid, x = pid + 1, x + w
            panels.append(p)
        y += max(p["gridPos"]["h"] for p in items)
    return {
        "title": "hfl federation",
        "uid": "hfl-federation",
        "description": "Secure hierarchical federated "
        "learning: topology, training, privacy, consensus, security events, latency and bytes.",
        "tags": ["hfl"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "graphTooltip": 1,
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
