"""Who does what in a round: bucket assignment and committee selection.

Both are pure functions of public inputs (the node lists and a seed derived from the ledger head), so
anyone holding the ledger can recompute them and check the authority's choices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hfl.hashing import sha256

MIN_SECURE_BUCKET = 3


def round_seed(ledger_head: bytes, round_: int, attempt: int = 0) -> bytes:
    """Public randomness for a round: hash of the ledger head, the round and the attempt."""
    return sha256(b"hfl/round-seed/v1", ledger_head, round_.to_bytes(8, "big"), attempt.to_bytes(4, "big"))


def _rank(seed: bytes, label: str, item: str) -> bytes:
    return hashlib.sha256(seed + label.encode() + b"\x00" + item.encode()).digest()


def shuffled(items: Sequence[str], seed: bytes, label: str = "shuffle") -> list[str]:
    """A deterministic permutation of ``items`` keyed by ``seed`` (sort by keyed hash)."""
    return sorted(items, key=lambda x: _rank(seed, label, x))


@dataclass(frozen=True)
class BucketPlan:
    bucket_id: str
    fog_id: str
    members: tuple[str, ...]


def bucket_sizes(n: int, bucket_size: int) -> list[int]:
    """Split n facilities into buckets of about ``bucket_size``: never smaller than bucket_size
    (except when there are fewer facilities than that in all), sizes differing by at most one."""
    if bucket_size < 1:
        raise ValueError("bucket size must be at least 1")
    if n <= 0:
        return []
    nb = max(1, n // bucket_size)
    base, extra = divmod(n, nb)
    return [base + 1 if i < extra else base for i in range(nb)]


def assign_buckets(
    facilities: Sequence[str], fogs: Sequence[str], bucket_size: int, seed: bytes
) -> list[BucketPlan]:
    """Re-draw buckets for a round: shuffle facilities, cut into buckets, deal buckets to fogs."""
    if not fogs:
        raise ValueError("no fog is registered, so no bucket can be formed")
    order = shuffled(sorted(set(facilities)), seed, "buckets")
    fog_order = shuffled(sorted(set(fogs)), seed, "fogs")
    plans: list[BucketPlan] = []
    start = 0
    for i, size in enumerate(bucket_sizes(len(order), bucket_size)):
        members = tuple(sorted(order[start : start + size]))
        start += size
        plans.append(BucketPlan(bucket_id=f"b{i}", fog_id=fog_order[i % len(fog_order)], members=members))
    return plans


def select_committee(
    validators: Sequence[str], size: int, seed: bytes, weights: Mapping[str, float] | None = None
) -> list[str]:
    """Draw ``size`` validators without replacement, with probability proportional to weight.

    Uses the Efraimidis–Spirakis keys u^(1/w) with u derived from the seed, so the draw is reproducible.
    """
    pool = sorted(set(validators))
    if size > len(pool):
        raise ValueError(f"the committee needs {size} validators but only {len(pool)} are registered")
    keyed: list[tuple[float, str]] = []
    for v in pool:
        w = 1.0 if weights is None else float(weights.get(v, 1.0))
        w = max(w, 1e-6)
        u = (int.from_bytes(_rank(seed, "committee", v)[:8], "big") + 1) / (2**64 + 1)
        keyed.append((u ** (1.0 / w), v))
    keyed.sort(key=lambda kv: (-kv[0], kv[1]))
    return sorted(v for _, v in keyed[:size])
