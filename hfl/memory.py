"""How a process asks the C library's allocator (glibc's malloc) to keep less memory it no longer uses.

For the processes whose rounds allocate and free model-sized blocks by the dozen: fogs and facilities.
Both call ``tune_allocator`` first thing, before gRPC starts its threads.

* **Arenas (fogs and facilities).** glibc gives each thread that allocates at the same time its own
  arena, up to 8 per core, and an arena keeps freed blocks for reuse instead of returning them. gRPC's
  threads each read frames, so a round left model-sized blocks spread over many arenas. Two are plenty
  (the Python code runs one thread at a time); measured at N=50, d=10^6: a secure round's peak in the fog
  fell from about 870 to about 680 MB (bench/results/NOTES-speed.md, stop 29).
* **The mmap threshold (fogs only).** A block at least this large is mapped on its own and goes back to
  the system the moment it is freed. glibc starts at 128 KiB but raises the threshold to the size of
  any mapped block that is freed (up to 32 MiB), so after one round every 4 or 8 MB buffer comes from
  the heap instead, where a freed block can only be reused, not returned. A fog fixes it at 256 KiB: its
  peak at N=50 fell by about 80 MB. Facilities do not: every large block then costs fresh pages from the
  kernel, and with 50 facilities on 2 cores a secure round took about 0.7 s longer (4.2 against 3.5 s)
  for about 8 MB less per hosted facility (stop 30, bench/results/memory_stop30.json). A facility host
  short of memory can still ask for it: glibc reads ``MALLOC_MMAP_THRESHOLD_=262144`` from the
  environment (docs/configuration.md).
* **Trimming (fogs and facilities).** ``release_free_memory`` hands back every free page still held
  (glibc's malloc_trim), so a process between rounds holds what it uses, not its busiest moment (a few
  milliseconds). ``release_soon`` does it shortly after a round ends, once for a process that hosts
  several facilities whose rounds end together.

Each returns whether it took effect: False on a C library without these calls (musl, macOS), where the
process runs as before.
"""

from __future__ import annotations

import asyncio
import ctypes
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024
RELEASE_AFTER_S = 0.2  # how long after a round ends its process hands freed pages back

_pending: asyncio.TimerHandle | None = None  # the release release_soon has scheduled and not yet run


def _libc(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _mallopt(param: int, value: int) -> bool:
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value))


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let glibc's malloc use at most ``arenas`` arenas from now on (call it before the process starts its
    threads)."""
    if arenas < 1:
        raise ValueError("a process needs at least one malloc arena")
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Map every block of at least ``size`` bytes on its own, so it is returned when freed; the threshold
    no longer rises with use."""
    if not 4096 <= size <= 32 * 1024 * 1024:
        raise ValueError("the mmap threshold must be between 4 KiB and 32 MiB")
    return _mallopt(M_MMAP_THRESHOLD, size)


def tune_allocator(*, return_large_blocks: bool) -> bool:
    """The allocator settings of a fog (``return_large_blocks=True``: two arenas and the mmap threshold
    fixed) or a facility (two arenas); call it first thing, before gRPC starts its threads."""
    arenas = limit_arenas()
    if not return_large_blocks:
        return arenas
    return fix_mmap_threshold() and arenas


def release_free_memory() -> bool:
    """Return the free memory malloc still holds to the system (glibc's malloc_trim(0))."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True


def release_soon(delay: float | None = None) -> None:
    """Hand free pages back ``delay`` seconds (default ``RELEASE_AFTER_S``) from now; call it from the event
    loop when a round's buffers are freed. A later call moves the time, so a process whose rounds end
    together trims once."""
    global _pending
    if _pending is not None:
        _pending.cancel()  # harmless if it already ran, or belongs to a loop that has since closed
    wait = RELEASE_AFTER_S if delay is None else delay
    _pending = asyncio.get_running_loop().call_later(wait, release_free_memory)
