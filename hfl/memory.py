"""How a process asks the C library's allocator (glibc's malloc) to keep less memory it no longer uses.

Three settings for the processes whose rounds allocate and free model-sized blocks by the dozen, fogs and
facilities (``tune_allocator`` sets the first two; both call it first thing):

* **Arenas.** glibc gives each thread that allocates at the same time its own arena, up to 8 per core,
  and an arena keeps freed blocks for reuse instead of returning them. A fog's gRPC threads each read
  facilities' frames, so a round left model-sized blocks spread over many arenas. Two are plenty (its
  Python code runs one thread at a time); measured at N=50, d=10^6: a secure round's peak fell from about
  870 to about 680 MB (bench/results/NOTES-speed.md, stop 29).
* **The mmap threshold.** A block at least this large is mapped on its own and goes back to the system
  the moment it is freed. glibc starts at 128 KiB but raises the threshold to the size of any mapped
  block that is freed (up to 32 MiB), so after one round every 4 or 8 MB buffer comes from the heap
  instead, where a freed block can only be reused, not returned. Fixing it at 256 KiB keeps the old
  behaviour for good. With both settings, a process hosting 13 facilities at d=10^6 grew by about 20 MB
  per facility in a round instead of 40 (bench/results/NOTES-speed.md, stop 30).
* **Trimming.** ``release_free_memory`` hands back every free page still held (glibc's malloc_trim), so a
  fog between rounds holds what it uses, not its busiest moment (a few milliseconds' work).

Each returns whether it took effect: False on a C library without these calls (musl, macOS), where the
fog runs as before.
"""

from __future__ import annotations

import ctypes
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024


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


def tune_allocator() -> bool:
    """A fog's or facility's allocator settings (both of the above); call it first thing, before gRPC
    starts its threads."""
    arenas = limit_arenas()
    threshold = fix_mmap_threshold()
    return arenas and threshold


def release_free_memory() -> bool:
    """Return the free memory malloc still holds to the system (glibc's malloc_trim(0))."""
    trim = _libc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True
