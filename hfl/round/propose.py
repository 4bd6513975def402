"""Proposing a block: the aggregation a block records, run on the bucket sums, and the header for it.

The leader proposes with ``propose``; every validator and auditor re-runs the same rule with
``next_header`` / ``compute_model`` and must get the same header hash. This lives in ``hfl.round``, not
in ``hfl.ledger``, so that the ledger (headers, votes, quorum certificates, the store) does not depend
on the aggregation rules or the scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hfl.hashing import hash_vector
from hfl.ledger.block import Block, BlockHeader, CommitteeMember, model_vector, quorum_size
from hfl.robust.rules import AggregateResult, aggregate

__all__ = ["aggregate_recorded", "compute_model", "next_header", "propose"]


def aggregate_recorded(
    rule: str,
    bucket_sums: np.ndarray,
    bucket_counts: Sequence[int] | np.ndarray,
    rule_params: Mapping[str, Any],
) -> AggregateResult:
    """Run ``rule`` with the settings a block records: ``rule_params`` holds ``f`` and ``clip_update``
    (C, or null for no norm bound) plus any rule-specific settings (e.g. ``m``, ``tau``, ``iters``,
    ``screen``), which are passed to ``aggregate`` as ``params``."""
    params = dict(rule_params)
    f = params.pop("f", 0)
    clip = params.pop("clip_update", None)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float)):
        raise ValueError(f"clip_update must be a number or null, got {clip!r}")
    return aggregate(
        rule,
        np.asarray(bucket_sums, dtype=np.float64),
        np.asarray(bucket_counts, dtype=np.int64),
        f=f,
        clip_update=None if clip is None else float(clip),
        params=params or None,
    )


def compute_model(
    base_model: np.ndarray,
    rule: str,
    bucket_sums: np.ndarray,
    bucket_counts: Sequence[int] | np.ndarray,
    rule_params: Mapping[str, Any],
) -> tuple[np.ndarray, tuple[int, ...]]:
    """New global model w + aggregate(sums) and the sorted flagged buckets, as the ledger checks them
    (see ``aggregate_recorded`` for ``rule_params``)."""
    model, result = _apply(base_model, rule, bucket_sums, bucket_counts, rule_params)
    return model, tuple(sorted(int(i) for i in result.flagged))


def _apply(
    base_model: np.ndarray,
    rule: str,
    bucket_sums: np.ndarray,
    bucket_counts: Sequence[int] | np.ndarray,
    rule_params: Mapping[str, Any],
) -> tuple[np.ndarray, AggregateResult]:
    base = np.asarray(base_model, dtype=np.float64)
    sums = np.asarray(bucket_sums, dtype=np.float64)
    if sums.ndim != 2 or base.ndim != 1 or sums.shape[1] != base.shape[0]:
        raise ValueError(f"bucket sums of shape {sums.shape} do not fit a model of shape {base.shape}")
    result = aggregate_recorded(rule, sums, bucket_counts, rule_params)
    update = np.asarray(result.update, dtype=np.float64)
    if update.shape != base.shape:
        raise ValueError(f"the aggregate has shape {update.shape}, the model {base.shape}")
    return base + update, result


def next_header(
    prev: Block,
    prev_model: np.ndarray,
    bucket_sums: np.ndarray,
    bucket_counts: Sequence[int] | np.ndarray,
    *,
    rule: str,
    rule_params: Mapping[str, Any],
    committee: Sequence[CommitteeMember],
    config_hash: bytes,
    quorum: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[BlockHeader, np.ndarray]:
    """Build the header for the round after ``prev`` and the new model it commits to.

    The leader and every validator call this with the same inputs and must get the same header hash.
    ``quorum`` defaults to 2f+1 for the committee size.
    """
    header, model, _ = propose(
        prev,
        prev_model,
        bucket_sums,
        bucket_counts,
        rule=rule,
        rule_params=rule_params,
        committee=committee,
        config_hash=config_hash,
        quorum=quorum,
        extra=extra,
    )
    return header, model


def propose(
    prev: Block,
    prev_model: np.ndarray,
    bucket_sums: np.ndarray,
    bucket_counts: Sequence[int] | np.ndarray,
    *,
    rule: str,
    rule_params: Mapping[str, Any],
    committee: Sequence[CommitteeMember],
    config_hash: bytes,
    quorum: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[BlockHeader, np.ndarray, AggregateResult]:
    """``next_header`` plus the aggregation's full result (flag kinds and details), for the leader."""
    base = model_vector(prev_model)
    if hash_vector(base) != prev.header.model_hash:
        raise ValueError(f"the given previous model is not the one recorded in block {prev.header.round}")
    sums = np.asarray(bucket_sums, dtype=np.float64)
    counts = tuple(np.asarray(bucket_counts).reshape(-1).tolist())
    model, result = _apply(base, rule, sums, counts, rule_params)
    header = BlockHeader(
        round=prev.header.round + 1,
        prev_hash=prev.hash,
        base_model_hash=prev.header.model_hash,
        model_hash=hash_vector(model),
        bucket_hashes=tuple(hash_vector(row) for row in sums),
        bucket_counts=counts,
        rule=rule,
        rule_params=dict(rule_params),
        flagged=tuple(sorted(int(i) for i in result.flagged)),
        committee=tuple(committee),
        quorum=quorum if quorum is not None else (quorum_size(len(committee)) if committee else 0),
        config_hash=config_hash,
        extra=dict(extra or {}),
    )
    return header, model, result
