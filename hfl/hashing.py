"""Canonical encodings and hashes shared by the ledger, the validators and the authority.

Everything that is signed or hashed goes through here, so two parties that hold the same
values always produce the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

HASH_LEN = 32
ZERO_HASH = b"\x00" * HASH_LEN


def sha256(*parts: bytes | memoryview) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(memoryview(p).nbytes.to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def vector_bytes(vec: np.ndarray) -> bytes:
    """Little-endian float64 bytes of a 1-D vector (the wire and hash form of models and sums)."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype="<f8").tobytes()


def hash_vector(vec: np.ndarray) -> bytes:
    """SHA-256 of the vector's canonical bytes (read in place when it is already little-endian float64:
    models are hashed on every hop, and a copy of a model-sized vector costs as much as a third of the
    hash)."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {arr.shape}")
    canonical = np.ascontiguousarray(arr, dtype="<f8")  # no copy when it already is
    return sha256(b"hfl/vector/f64/v1", canonical.data.cast("B"))


def _default(o: Any) -> Any:
    if isinstance(o, bytes):
        return {"hex": o.hex()}
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, tuple | list):
        return list(o)
    raise TypeError(f"cannot encode {type(o).__name__} canonically")


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, bytes as hex objects, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default, allow_nan=False).encode()


def hash_json(domain: bytes, obj: Any) -> bytes:
    return sha256(domain, canonical_json(obj))
