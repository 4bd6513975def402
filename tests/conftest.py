"""Shared fixtures and markers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"


def record_result(name: str, value: Any) -> None:
    """Write a test's measurements to bench/results/<name> only when asked (HFL_RECORD_RESULTS=1), so an
    ordinary `make test` leaves the recorded numbers and the working tree alone."""
    if os.environ.get("HFL_RECORD_RESULTS") != "1":
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / name).write_text(json.dumps(value, indent=2) + "\n")


def docker_available() -> tuple[bool, str]:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        return True, ""
    except Exception as e:  # any failure means: no engine we can use
        return False, f"no Docker engine answers ({type(e).__name__}); container tests skipped"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("container") for item in items):
        return
    ok, reason = docker_available()
    if ok:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("container"):
            item.add_marker(skip)
