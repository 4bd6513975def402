"""Full audit of a stored ledger: structure, hash chain, quorum certificates, committee draws, norm bounds
and recomputed models (``hfl ledger verify``). It re-runs each round's rules, so it lives with the round
code, not in ``hfl.ledger``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hfl.hashing import hash_vector
from hfl.ledger.block import BlockHeader, LedgerError, check_quorum
from hfl.ledger.store import LedgerStore
from hfl.robust.bound import RECORD_KEY, bound_for, history_problem
from hfl.round.propose import compute_model
from hfl.schedule import select_committee

__all__ = ["check_committee_draw", "check_norm_bound", "verify_ledger"]


def check_committee_draw(header: BlockHeader) -> None:
    """Re-derive the committee from the draw recorded in the block (seed, candidates, weights).

    Blocks without a recorded draw (none is required) are accepted as they are."""
    draw = header.extra.get("committee_draw")
    if not draw:
        return
    try:
        expected = select_committee(
            list(draw["pool"]),
            int(draw["size"]),
            bytes.fromhex(draw["seed"]),
            {str(k): float(v) for k, v in dict(draw["weights"]).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the recorded committee draw is malformed: {exc}", header.round) from None
    if sorted(m.node_id for m in header.committee) != expected:
        raise LedgerError("the committee is not the one its recorded draw gives", header.round)


def check_norm_bound(header: BlockHeader, prev_extra: Mapping[str, Any]) -> None:
    """A block that records an adaptive norm bound (hfl/robust/bound.py) used the bound its predecessor's
    recorded history gives, clamped to the ceiling it records. Blocks with a fixed bound record none."""
    record = header.extra.get(RECORD_KEY)
    if record is None:
        return
    try:
        want = bound_for(prev_extra, record["ceiling"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"the norm-bound history cannot be read: {exc}", header.round) from None
    if header.rule_params.get("clip_update") != want:
        raise LedgerError(
            f"the norm bound C = {header.rule_params.get('clip_update')!r} is not C = {want!r}, which the "
            "previous block's history gives",
            header.round,
        )


def _at(r: int, exc: LedgerError) -> LedgerError:
    """Attach the round to an error raised without one."""
    return exc if exc.round is not None else LedgerError(str(exc), r)


def verify_ledger(
    store: LedgerStore, *, recompute: bool = True, progress: Callable[[int], None] | None = None
) -> int:
    """Check every block in order; return how many were verified.

    Checks the genesis form, that rounds are contiguous, each stored hash, the prev_hash chain, that each
    base model is the previous block's model, each quorum certificate, and that each committee is the one
    its recorded draw (ledger-head seed, candidates, reputation weights) gives, and that an adaptive norm
    bound is the one the previous block's history gives. With ``recompute`` it also re-runs the
    aggregation rule on the stored bucket sums and checks the resulting model hash, the flagged buckets,
    the recorded norm-bound history and the stored model checkpoints. Raises LedgerError naming the
    first bad block.

    Note: this cannot tell that blocks were cut off the end; compare the count with what you expect.
    """
    prev_hash = b""
    prev_model_hash = b""
    prev_model: np.ndarray | None = None
    prev_extra: Mapping[str, Any] = {}
    count = 0
    for r in store.rounds():
        if r != count:
            raise LedgerError("this block is missing from the ledger", count)
        block = store.block(r)
        h = block.header
        if r == 0:
            if not h.is_genesis:
                raise LedgerError("the first block is not a valid genesis block", 0)
        else:
            if h.prev_hash != prev_hash:
                raise LedgerError(f"prev_hash does not match the hash of block {r - 1}", r)
            if h.base_model_hash != prev_model_hash:
                raise LedgerError(f"the base model is not the model recorded in block {r - 1}", r)
        check_quorum(h, block.votes)
        check_committee_draw(h)
        check_norm_bound(h, prev_extra)
        if recompute:
            try:
                stored = store.model(h.model_hash)
            except LedgerError as exc:
                raise _at(r, exc) from None
            if r > 0:
                if prev_model is None:  # unreachable: round 0 always sets it
                    raise LedgerError("no previous model to recompute from", r)
                sums = store.bucket_sums(r)
                try:
                    model, flagged = compute_model(prev_model, h.rule, sums, h.bucket_counts, h.rule_params)
                except ValueError as exc:
                    raise LedgerError(f"cannot recompute the aggregate: {exc}", r) from None
                if hash_vector(model) != h.model_hash:
                    raise LedgerError("the model hash does not match the recomputed aggregate", r)
                if flagged != h.flagged:
                    raise LedgerError(
                        f"the flagged buckets {list(h.flagged)} do not match the recomputed {list(flagged)}",
                        r,
                    )
                if RECORD_KEY in h.extra:
                    wrong = history_problem(prev_extra, h.extra, sums, h.bucket_counts, h.flagged)
                    if wrong:
                        raise LedgerError(wrong.replace("the proposal's", "the recorded"), r)
            prev_model = stored
        prev_hash = block.hash
        prev_model_hash = h.model_hash
        prev_extra = h.extra
        count += 1
        if progress is not None:
            progress(r)
    return count
