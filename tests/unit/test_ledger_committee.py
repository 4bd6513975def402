"""`hfl ledger verify` re-derives each committee from the draw recorded in the block."""

from __future__ import annotations

import numpy as np
import pytest

from hfl.crypto.signing import SigningKey
from hfl.ledger import Block, CommitteeMember, LedgerError, genesis_header
from hfl.round.audit import check_committee_draw
from hfl.round.propose import next_header
from hfl.schedule import round_seed, select_committee

KEYS = {f"validator-{i}": SigningKey.generate() for i in range(1, 8)}


def _header(committee_ids: list[str], draw: dict[str, object]):  # type: ignore[no-untyped-def]
    model = np.zeros(3)
    genesis = Block(genesis_header(model))
    committee = [CommitteeMember(v, KEYS[v].public_bytes) for v in committee_ids]
    header, _ = next_header(
        genesis,
        model,
        np.ones((3, 3)),
        [1, 1, 1],
        rule="mean",
        rule_params={},
        committee=committee,
        config_hash=b"\x01" * 32,
        extra={"committee_draw": draw},
    )
    return header


def _draw() -> dict[str, object]:
    pool = sorted(KEYS)
    weights = {v: (0.2 if v == "validator-3" else 1.0) for v in pool}
    seed = round_seed(b"\x07" * 32, 0, 0xFFFF)
    members = select_committee(pool, 4, seed, weights)
    return {"seed": seed.hex(), "pool": pool, "weights": weights, "size": 4, "members": members}


def test_recorded_draw_is_re_derived() -> None:
    draw = _draw()
    check_committee_draw(_header(list(draw["members"]), draw))  # type: ignore[arg-type]


def test_a_swapped_committee_member_is_caught() -> None:
    draw = _draw()
    members = list(draw["members"])  # type: ignore[call-overload]
    outsider = next(v for v in sorted(KEYS) if v not in members)
    with pytest.raises(LedgerError, match="committee is not the one"):
        check_committee_draw(_header([*members[:-1], outsider], draw))


def test_tampered_weights_are_caught() -> None:
    draw = _draw()
    members = list(draw["members"])  # type: ignore[call-overload]
    forged = dict(draw, weights={v: (100.0 if v not in members else 0.001) for v in draw["pool"]})  # type: ignore[attr-defined]
    with pytest.raises(LedgerError):
        check_committee_draw(_header(members, forged))


def test_block_without_a_draw_is_accepted() -> None:
    check_committee_draw(_header(["validator-1", "validator-2", "validator-4", "validator-5"], {}))


def test_experiments_draw_from_their_seed_production_from_the_ledger_head() -> None:
    """`hfl demo --seed S` repeats its bucket and committee draws on every run; without an experiment
    seed the draws follow the ledger head, which nobody knows before the previous block is committed."""
    from hfl.schedule import draw_base

    head_a, head_b = b"a" * 32, b"b" * 32
    assert draw_base(head_a, None) == head_a and draw_base(head_b, None) == head_b
    assert draw_base(head_a, 7) == draw_base(head_b, 7) != draw_base(head_a, 8)
    assert draw_base(head_a, 0) not in (head_a, head_b) and len(draw_base(head_a, 0)) == 32
