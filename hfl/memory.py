"""How a process asks the C library's allocator (glibc's malloc) to keep less memory it no longer uses.

glibc gives each thread that allocates at the same time its own arena, up to 8 per core, and an arena
keeps freed blocks for reuse instead of returning them. A fog's gRPC threads each read facilities'
frames, so a round leaves model-sized blocks spread over many arenas and the process stays at the size
of its busiest moment in each of them. Two arenas are plenty for a fog (its Python code runs one thread
at a time); measured at N=50, d=10^6: a secure round's peak fell from about 870 to about 680 MB, and the
round took no longer (bench/results/NOTES-speed.md).
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
FOG_ARENAS = 2


def limit_arenas(arenas: int = FOG_ARENAS) -> bool:
    """Let glibc's malloc use at most ``arenas`` arenas from now on (call it before the process starts its
    threads). Returns whether it took effect: False on a C library without mallopt (musl, macOS)."""
    if arenas < 1:
        raise ValueError("a process needs at least one malloc arena")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
