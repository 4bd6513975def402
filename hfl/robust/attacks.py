"""Byzantine attacks for experiments and tests.

``apply_attack`` turns a facility's honest update Δ into what a misbehaving facility sends instead.
A Byzantine facility does NOT clip: it may send whatever it likes. What stops the blunt attacks
("scale", "gaussian" with a large σ, "nan") is the leader's norm bound ‖bucket sum‖ ≤ count·C
(see rules.py), which flags the whole bucket. The subtle attacks ("alie", small-ε "ipm", "sign_flip"
of a clipped update, "free_ride") stay inside the bound and are left to the robust rule.

Pass ``clip`` to model a stealthy attacker that rescales its output to norm ≤ clip so that the norm bound
does not catch it. The randomness here is for simulation only (never for anything secret).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np

AttackName = Literal[
    "none", "sign_flip", "scale", "gaussian", "label_flip", "alie", "ipm", "free_ride", "nan"
]
"""What a facility sends instead of its honest update, for experiments (``none``: its honest update)."""
ATTACKS: tuple[str, ...] = get_args(AttackName)
COLLUDING = frozenset({"alie", "ipm"})


def alie_z(n: int, f: int) -> float:
    """z from "A Little Is Enough" (Baruch et al., 2019): s = ⌊n/2 + 1⌋ − f, z = Φ⁻¹((n − s) / n).

    n is the number of participants in the aggregation, f how many of them collude. Clamped to ≥ 0.
    """
    if n < 1 or f < 0 or f > n:
        raise ValueError(f"ALIE needs 1 ≤ n and 0 ≤ f ≤ n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if p <= 0.5:
        return 0.0
    p = min(p, 1.0 - 1e-12)
    return float(NormalDist().inv_cdf(p))


def _peers_array(peers: np.ndarray | None, d: int, name: str) -> np.ndarray:
    if peers is None:
        raise ValueError(
            f"the {name!r} attack colludes: pass peers, the (k, d) honest updates it copies from"
        )
    arr = np.asarray(peers, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != d:
        raise ValueError(f"peers must have shape (k, {d}) with k ≥ 1, got {np.shape(peers)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("peers contain NaN or infinite values")
    return arr


def apply_attack(
    name: str,
    honest: np.ndarray,
    *,
    rng: np.random.Generator,
    scale: float = 10.0,
    peers: np.ndarray | None = None,
    clip: float | None = None,
    n_byzantine: int = 1,
    n_total: int | None = None,
    epsilon: float = 0.5,
) -> np.ndarray:
    """Return what a Byzantine facility sends instead of its honest update (a new float64 array).

    - ``none``, ``label_flip``: the honest update (label flipping poisons the data; see ``flip_labels``).
    - ``sign_flip``: −Δ.   ``scale``: scale·Δ.   ``free_ride``: zeros.   ``nan``: all NaN.
    - ``gaussian``: N(0, σ²) per coordinate with σ = scale·‖Δ‖/√d, so ‖noise‖ ≈ scale·‖Δ‖ (if Δ = 0 the
      norm ``clip`` or 1 stands in for ‖Δ‖). Uses ``rng``.
    - ``alie``: mean(peers) − z·std(peers) per coordinate, z = ``alie_z(n_total, n_byzantine)`` with
      n_total defaulting to k + n_byzantine.
    - ``ipm``: −epsilon·mean(peers).

    With ``clip`` set, the result is rescaled to norm ≤ clip (a stealthy attacker). ``nan`` stays NaN.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    delta = np.asarray(honest, dtype=np.float64)
    if delta.ndim != 1 or delta.size == 0:
        raise ValueError(f"the honest update must be a non-empty vector, got shape {delta.shape}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    if clip is not None and (not math.isfinite(clip) or clip <= 0):
        raise ValueError(f"clip must be a positive number, got {clip!r}")
    d = delta.size

    if name in ("none", "label_flip"):
        out = delta.copy()
    elif name == "sign_flip":
        out = -delta
    elif name == "scale":
        out = scale * delta
    elif name == "free_ride":
        out = np.zeros(d)
    elif name == "nan":
        return np.full(d, np.nan)
    elif name == "gaussian":
        ref = float(np.sqrt(np.add.reduce(delta * delta)))
        if ref == 0.0:
            ref = clip if clip is not None else 1.0
        sigma = abs(scale) * ref / math.sqrt(d)
        out = rng.normal(0.0, sigma, size=d)
    elif name == "alie":
        arr = _peers_array(peers, d, name)
        if n_byzantine < 1:
            raise ValueError(f"n_byzantine must be ≥ 1, got {n_byzantine}")
        n = n_total if n_total is not None else arr.shape[0] + n_byzantine
        z = alie_z(n, n_byzantine)
        out = arr.mean(axis=0) - z * arr.std(axis=0)
    else:  # ipm
        arr = _peers_array(peers, d, name)
        if not math.isfinite(epsilon) or epsilon <= 0:
            raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
        out = -epsilon * arr.mean(axis=0)

    if clip is not None:
        norm = float(np.sqrt(np.add.reduce(out * out)))
        if norm > clip:
            out = out * (clip / norm)
    return np.asarray(out, dtype=np.float64)


def flip_labels(y: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Label-flipping data poison: class c becomes (K − 1) − c (for 0/1 labels: 1 − y).

    K is ``n_classes`` or, if omitted, max(y) + 1 but at least 2. Labels must be whole numbers in [0, K).
    """
    arr = np.asarray(y)
    if arr.size == 0:
        return arr.copy()
    if arr.dtype.kind == "b":
        return ~arr
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("labels must be whole class numbers (0, 1, ...)")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"labels must be whole class numbers, got dtype {arr.dtype}")
    k = n_classes if n_classes is not None else max(2, int(arr.max()) + 1)
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    if arr.min() < 0 or arr.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}")
    return ((k - 1) - arr).astype(arr.dtype)
