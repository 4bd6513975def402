"""Cryptographic pseudo-random generator for masks: AES-256-CTR keystream viewed as uint32 words.

The 32-byte seed is first passed through HKDF-SHA256 with a caller-chosen ``domain`` so the same seed
gives independent streams for different uses. The keystream is AES-256-CTR (counter block starting at
zero) over a zero buffer, read as little-endian uint32, so the output is the same on every platform.
"""

from __future__ import annotations

import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hfl.crypto.kex import hkdf_sha256

__all__ = ["SEED_LEN", "keystream_throughput_gbps", "keystream_uint32"]

SEED_LEN = 32
_DOMAIN_PREFIX = b"hfl/prg/aes256ctr/v1/"
_MAX_WORDS = 1 << 34  # far below the CTR counter limit; 64 GiB of output


def keystream_uint32(seed: bytes, length: int, *, domain: bytes) -> np.ndarray:
    """``length`` pseudo-random uint32 words from ``seed`` (32 bytes) in the stream named ``domain``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_LEN:
        raise ValueError(f"PRG seed must be exactly {SEED_LEN} bytes")
    if not isinstance(domain, bytes) or not domain:
        raise ValueError("PRG domain must be non-empty bytes")
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or not 0 <= length <= _MAX_WORDS:
        raise ValueError(f"PRG length must be an integer from 0 to {_MAX_WORDS}, got {length!r}")
    key = hkdf_sha256(seed, salt=None, info=_DOMAIN_PREFIX + domain, length=32)
    nbytes = 4 * int(length)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    out = np.empty(nbytes + 15, dtype=np.uint8)  # update_into needs block_size - 1 spare bytes
    if encryptor.update_into(bytes(nbytes), out.data) != nbytes:
        raise RuntimeError("AES-CTR produced a short keystream")
    encryptor.finalize()
    words = out[:nbytes].view("<u4")
    return words.astype(np.uint32, copy=False)


def keystream_throughput_gbps(nbytes: int = 64 * 1024 * 1024, *, repeats: int = 3) -> float:
    """Keystream speed in gigabits per second (10**9 bit/s): best of ``repeats`` streams of ``nbytes``."""
    if nbytes < 4 or repeats < 1:
        raise ValueError("nbytes must be at least 4 and repeats at least 1")
    seed = bytes(SEED_LEN)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        keystream_uint32(seed, nbytes // 4, domain=b"benchmark")
        best = min(best, time.perf_counter() - start)
    return (nbytes // 4) * 32 / max(best, 1e-9) / 1e9
