"""hfl.memory: the fog asks glibc's malloc for fewer arenas (less memory kept after busy rounds)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from hfl import memory


def test_limit_arenas_takes_effect_on_glibc_and_says_so_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    # run in a child: the setting lasts for the whole process
    code = "from hfl.memory import limit_arenas; print(limit_arenas(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"  # this machine runs on glibc

    class NoMallopt:
        def __init__(self, name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)  # a C library without mallopt (musl, macOS)
    assert memory.limit_arenas() is False
    with pytest.raises(ValueError):
        memory.limit_arenas(0)


def test_the_fog_limits_its_arenas_before_it_starts_serving() -> None:
    import inspect

    from services.fog import main

    source = inspect.getsource(main.run)
    assert source.index("limit_arenas()") < source.index("start_server(")
