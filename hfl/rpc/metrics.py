"""Prometheus metrics of every service (one /metrics port per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

UP = Gauge("hfl_up", "1 while this service is running and ready.", ["role"])
ROUND = Gauge("hfl_round", "Last committed round (leader) or last round this node took part in.")
ROUND_DURATION = Histogram(
    "hfl_round_duration_seconds",
    "Wall-clock time of a round attempt, from configuration to commit or refusal.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
MODEL_ACCURACY = Gauge(
    "hfl_model_accuracy", "Accuracy of the last committed global model on pooled test sets."
)
MODEL_LOSS = Gauge("hfl_model_loss", "Mean log-loss of the last committed global model on pooled test sets.")
NORM_BOUND = Gauge(
    "hfl_norm_bound",
    "Norm bound C of the current round (leader): facilities clip to it, the block records it.",
)
MODEL_AUC = Gauge(
    "hfl_model_auc",
    "ROC AUC of the last committed global model on pooled test sets (0.5: no better than chance).",
)
SPECIALTY_AUC = Gauge(
    "hfl_specialty_auc",
    "ROC AUC of the last committed global model on the test sets of one specialty (groups of at least "
    "three facilities only).",
    ["specialty"],
)
SPECIALTY_ACCURACY = Gauge(
    "hfl_specialty_accuracy",
    "Accuracy of the last committed global model on the test sets of one specialty (groups of at least "
    "three facilities only).",
    ["specialty"],
)
WITHSTANDS = Gauge(
    "hfl_withstands_byzantine",
    "How many misbehaving facilities this round's buckets withstand wherever the draw puts them (authority).",
)
EPSILON_SPENT = Gauge("hfl_privacy_epsilon_spent", "Privacy loss (epsilon) spent so far.", ["facility"])
PRIVACY_EXHAUSTED = Gauge(
    "hfl_privacy_exhausted", "1 if the facility has no privacy budget left for a round.", ["facility"]
)
RELEASED_SAMPLES = Gauge(
    "hfl_released_samples",
    "The facility's training-record count, released with Laplace noise (pure epsilon).",
    ["facility"],
)
RELEASED_POSITIVE_FRACTION = Gauge(
    "hfl_released_positive_fraction",
    "Share of positive labels among the facility's training records, from Laplace-noised counts.",
    ["facility"],
)
SECAGG_DROPOUTS = Counter("hfl_secagg_dropouts_total", "Facilities that dropped out of a secure aggregation.")
BYTES_SENT = Counter("hfl_bytes_sent_total", "Bytes of gRPC messages sent, by peer role.", ["peer"])
BYTES_RECEIVED = Counter(
    "hfl_bytes_received_total", "Bytes of gRPC messages received, by peer role.", ["peer"]
)
VOTES = Counter("hfl_votes_total", "Validator votes, by decision.", ["decision"])
REPUTATION = Gauge("hfl_reputation", "Reputation score in [0, 1].", ["node", "role"])
FLAGGED_BUCKETS = Counter(
    "hfl_flagged_buckets_total", "Buckets rejected by the norm bound or the robust rule."
)
QUARANTINED = Gauge("hfl_quarantined", "1 if the facility is quarantined.", ["facility"])
LINKS = Gauge("hfl_fog_connected_facilities", "Facilities whose connection to this fog is open.")
FOG_LINKS = Gauge(
    "hfl_facility_fog_connections", "Connections this facility holds open to fogs (0: it cannot take part)."
)
REFUSED = Counter("hfl_refused_messages_total", "Messages refused at the boundary, by reason.", ["reason"])
REFUSED_CALLS = Counter(
    "hfl_refused_calls_total", "Calls this service refused, by method and gRPC status.", ["method", "code"]
)
COMMITS = Counter("hfl_commits_total", "Round attempts by outcome.", ["outcome"])
FACILITY_FOG = Gauge(
    "hfl_facility_fog", "1 for each facility and the fog it reports to this round.", ["facility", "fog"]
)

# What the alert rules (deploy/prometheus/alerts.yml) need beyond the above.
LAST_COMMIT = Gauge(
    "hfl_last_commit_timestamp_seconds",
    "When the leader last committed a round (Unix time); its start time until the first commit.",
)
ROUND_INTERVAL = Gauge("hfl_round_interval_seconds", "Pause between rounds (HFL_ROUND_INTERVAL).")
EPSILON_BUDGET = Gauge(
    "hfl_privacy_epsilon_budget", "The privacy budget (epsilon) of every facility; 0 when there is none."
)
MISSED_ROUNDS = Gauge(
    "hfl_facility_missed_rounds",
    "Rounds in a row the facility was scheduled and did not answer at all (0 when it answers).",
    ["facility"],
)
LEFT_OUT = Gauge(
    "hfl_facility_left_out",
    "1 while the facility is left out of the schedule for missing rounds (until it registers again).",
    ["facility"],
)
CERT_EXPIRY = Gauge(
    "hfl_certificate_expiry_timestamp_seconds", "When this node's TLS certificate expires (Unix time)."
)
CERT_LIFETIME = Gauge(
    "hfl_certificate_lifetime_seconds", "How long this node's TLS certificate is valid in all, in seconds."
)


def start_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on ``host``:``port`` (0: the OS picks). Returns the bound port, or -1 when disabled.

    Services pass the interface their gRPC port listens on (Settings.listen_host): /metrics is plain HTTP
    and shows every node's standing, so it is never opened wider than the service itself."""
    if port < 0:
        return -1
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)


def refused_calls() -> dict[str, int]:
    """This process's refused calls so far, as "Method: STATUS" -> count (for the operator's report)."""
    out: dict[str, int] = {}
    for metric in REFUSED_CALLS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                out[f"{sample.labels['method']}: {sample.labels['code']}"] = int(sample.value)
    return out
