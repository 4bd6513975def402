"""A `scale` facility among 10 on a live federation with secure aggregation: once its bucket is flagged,
the authority draws every bucket with exactly 3 members and the facility left over rests (not called,
drawn anew each round), and the rounds go on committing with the resting facility's bucket-mates
re-drawn around it (hfl.schedule.equal_buckets_now)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.authority.registry import Registry
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration
ROUNDS = 6
ATTACKER = "facility-10"


def test_after_a_flag_the_remainder_rests_and_rounds_go_on(tmp_path: Path) -> None:
    fed, procs = start_federation(
        tmp_path,
        facilities=10,
        fogs=1,
        validators=1,
        rounds=ROUNDS,
        facility_env=lambda i: {"HFL_BYZANTINE": "scale"} if i == 9 else {},
    )
    try:
        status = wait_for_round(procs["leader"].info["address"], ROUNDS, limit_s=240)
        assert status.committed_round >= ROUNDS
    finally:
        fed.stop_all()
    everyone = {f"facility-{i:02d}" for i in range(1, 11)}
    registry = Registry(tmp_path / "state" / "authority" / "authority.db")
    try:
        layouts = {r: registry.config_layout(r, 0) for r in range(1, ROUNDS + 1)}
    finally:
        registry.close()
    authority_log = (tmp_path / "logs" / "authority.log").read_text()
    first = layouts[1]
    assert first is not None
    # Round 1: nothing flagged yet, so all 10 take part (buckets of 4, 3 and 3).
    assert sorted(len(m) for m in first[0].values()) == [3, 3, 4]
    rested = []
    for rnd in range(2, ROUNDS + 1):
        layout = layouts[rnd]
        assert layout is not None
        sizes = sorted(len(m) for m in layout[0].values())
        missing = everyone - {m for members in layout[0].values() for m in members}
        if not missing:  # no unexplained flag in the last 10 rounds: everyone in, buckets grow to 4
            resting = re.search(rf"round {rnd}: [^\n]* rests? this round", authority_log)
            assert sizes == [3, 3, 4] and not resting, rnd
            continue
        # Otherwise every bucket has 3 members, and the one facility in none is resting (named in the
        # authority's log) or the attacker, once quarantined.
        assert sizes == [3, 3, 3] and len(missing) == 1, rnd
        (left_out,) = missing
        if f"round {rnd}: {left_out} rests this round" in authority_log:
            rested.append(left_out)
        else:
            assert left_out == ATTACKER and f"quarantined facility {ATTACKER}" in authority_log, rnd
    # A ×10 update breaks the norm bound within the first rounds, so some round rested.
    assert rested, "no round had a facility resting"
