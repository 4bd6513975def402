"""hfl.memory: the fog asks glibc's malloc for fewer arenas, maps large blocks on their own, and hands
freed memory back after a round."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from hfl import memory


def _child(code: str) -> str:
    """Run ``code`` in a fresh interpreter (allocator settings last for the whole process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_the_settings_take_effect_on_glibc_and_say_so_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    code = (
        "from hfl import memory; "
        "print(memory.limit_arenas(2), memory.fix_mmap_threshold(), "
        "memory.tune_allocator(return_large_blocks=True), memory.tune_allocator(return_large_blocks=False), "
        "memory.release_free_memory())"
    )
    assert _child(code).split() == ["True"] * 5  # this machine runs on glibc

    class NoLibc:
        def __init__(self, name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoLibc)  # a C library without these calls (musl, macOS)
    assert memory.limit_arenas() is False
    assert memory.fix_mmap_threshold() is False
    assert memory.tune_allocator(return_large_blocks=True) is False
    assert memory.release_free_memory() is False


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        memory.limit_arenas(0)
    for size in (0, 1024, 64 * 1024 * 1024):
        with pytest.raises(ValueError):
            memory.fix_mmap_threshold(size)


# 300 blocks of 1 MiB from the heap (the threshold raised out of their way), each followed by a small
# block that stays: freeing the large ones leaves holes glibc keeps, until the memory is released.
FRAGMENTED = """
from hfl import memory
memory._mallopt(memory.M_MMAP_THRESHOLD, 32 * 1024 * 1024)
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
large, small = [], []
for _ in range(300):
    block = bytearray(1 << 20)
    block[::4096] = b"x" * 256  # touch every page
    large.append(block)
    small.append(bytearray(1024))  # from malloc, not Python's own small-object pool
del block
large.clear()
before = rss()
memory.release_free_memory()
print(before, rss())
"""


def test_released_memory_goes_back_to_the_system() -> None:
    before, after = map(int, _child(FRAGMENTED).split())
    assert before - after > 200  # MB: the freed holes were kept, and are handed back


# Once an 8 MiB block mapped on its own is freed, glibc raises its threshold to 8 MiB: a 4 MiB block is
# then taken from the heap, and with a small block after it, freeing it returns nothing. With the
# threshold fixed, it is mapped on its own and freeing it returns it at once.
AFTER_A_LARGE_FREE = """
import sys
from hfl import memory
if sys.argv[1] == "fixed":
    memory.fix_mmap_threshold()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
first = bytearray(8 << 20)
del first
block = bytearray(4 << 20)
block[::4096] = b"x" * 1024
after = bytearray(1024)
holding = rss()
del block
print(holding - rss())
"""


def test_with_the_threshold_fixed_a_freed_large_block_goes_back_at_once() -> None:
    def returned(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", AFTER_A_LARGE_FREE, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert returned("fixed") >= 3  # MB
    assert returned("glibc") < 1  # what the setting is for


def test_fogs_and_facilities_tune_their_allocator_before_they_start_serving() -> None:
    import inspect

    from services.facility import host
    from services.facility import main as facility_main
    from services.fog import main as fog_main

    for run, call in (
        (fog_main.run, "tune_allocator(return_large_blocks=True)"),
        (facility_main.run, "tune_allocator(return_large_blocks=False)"),
        (host.run, "tune_allocator(return_large_blocks=False)"),
    ):
        source = inspect.getsource(run)
        assert call in source, run.__module__
        first_start = min(source.find(s) for s in ("start_server(", "start(", "_start_all(") if s in source)
        assert source.index(call) < first_start, run.__module__


# A facility's process keeps glibc's own threshold, and the environment can still set it.
FROM_ENVIRONMENT = AFTER_A_LARGE_FREE.replace(
    'if sys.argv[1] == "fixed":\n    memory.fix_mmap_threshold()',
    "memory.tune_allocator(return_large_blocks=False)",
)


def test_a_facility_host_can_ask_glibc_for_the_threshold_through_its_environment() -> None:
    import os

    def returned(env: dict[str, str]) -> int:
        out = subprocess.run(
            [sys.executable, "-c", FROM_ENVIRONMENT, "-"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        )
        return int(out.stdout)

    assert returned({}) < 1
    assert returned({"MALLOC_MMAP_THRESHOLD_": "262144"}) >= 3


def test_release_soon_trims_once_after_the_last_of_rounds_that_end_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process hosting several facilities: each one's round end asks for a release; the pages are handed
    back once, and a later ask moves the time."""
    import asyncio

    released: list[int] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: released.append(1) or True)

    async def go() -> None:
        for _ in range(5):  # five rounds end together
            memory.release_soon(0.0)
        assert released == []  # not on the spot
        await asyncio.sleep(0.05)
        assert released == [1]  # once
        memory.release_soon(0.0)
        memory.release_soon(3600.0)  # a round ended later: the release waits for it
        await asyncio.sleep(0.05)
        assert released == [1]
        memory.release_soon(0.0)
        await asyncio.sleep(0.05)
        assert released == [1, 1]

    asyncio.run(go())
