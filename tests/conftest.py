"""Shared fixtures and markers."""

from __future__ import annotations

import pytest


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
