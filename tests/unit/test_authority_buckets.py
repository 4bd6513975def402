"""The authority's buckets with a robust rule: in the rounds after a flagged bucket every bucket has the
bucket size, the remainder rests (drawn anew each round) and the log says who; before any flag, long
after the last, with a plain mean, or in a federation that declares no misbehaving facilities, everyone
takes part."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from hfl.bounds import attempt_slot
from hfl.crypto.signing import SigningKey
from hfl.domain import NodeInfo, RoundConfig
from hfl.proto.v1 import authority_pb2
from hfl.rpc.settings import Settings
from hfl.schedule import EQUAL_BUCKETS_ROUNDS
from services.authority.registry import Registry
from services.authority.service import Authority


def _authority(tmp_path: Path, facilities: int, **settings: Any) -> Authority:
    registry = Registry(tmp_path / "registry.db")
    s = Settings(role="authority", tls=False, state_dir=tmp_path, secagg=False, committee_size=1, **settings)
    a = Authority(s, SigningKey.generate(), registry)
    for node in [
        *(
            NodeInfo(
                f"facility-{i:02d}", "facility", f"127.0.0.1:{i + 1}", SigningKey.generate().public_bytes
            )
            for i in range(facilities)
        ),
        NodeInfo("fog-1", "fog", "127.0.0.1:90", SigningKey.generate().public_bytes),
        NodeInfo("validator-1", "validator", "127.0.0.1:91", SigningKey.generate().public_bytes),
    ]:
        registry.upsert(node)
    return a


def _flag(a: Authority, round_: int, config: RoundConfig) -> None:
    """The reputation's observation of ``round_`` with the first bucket flagged by the norm bound."""
    buckets = {b.bucket_id: list(b.members) for b in config.buckets}
    a.reputation.observe(attempt_slot(round_, 0), buckets, {config.buckets[0].bucket_id: "norm"})


def test_the_flag_is_remembered_across_a_restart(tmp_path: Path) -> None:
    a = _authority(tmp_path, 10)
    config = a.make_config(1, 0, bytes(32))
    committee = [authority_pb2.CommitteeVote(validator="validator-1", answered=True, accept=True)]
    report = authority_pb2.RoundReport(flags={config.buckets[0].bucket_id: "norm"}, votes=committee)
    request = authority_pb2.ReportRoundRequest(round=1, attempt=0, committed=True, report=report)
    asyncio.run(a.ReportRound(request, None))  # type: ignore[arg-type]
    again = Authority(a.settings, a.key, a.registry)  # as after a crash: state from the registry only
    assert again.reputation.last_unexplained_flag == attempt_slot(1, 0)
    config = again.make_config(2, 0, bytes(32))
    assert [len(b.members) for b in config.buckets] == [3, 3, 3]  # still resting after the restart
    a.registry.close()


def test_after_a_flag_the_remainder_rests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _authority(tmp_path, 10)
    assert a.schedule_settings().equal_buckets
    caplog.set_level(logging.INFO)
    config = a.make_config(1, 0, bytes(32))
    assert sorted(len(b.members) for b in config.buckets) == [3, 3, 4]  # nothing flagged yet: all 10
    _flag(a, 1, config)
    rested = set()
    for rnd in range(2, 2 + EQUAL_BUCKETS_ROUNDS):  # 3 buckets of 3 and one resting, not 4 + 3 + 3
        config = a.make_config(rnd, 0, bytes(32))
        placed = {m for b in config.buckets for m in b.members}
        assert [len(b.members) for b in config.buckets] == [3, 3, 3] and len(placed) == 9
        (resting,) = {f"facility-{i:02d}" for i in range(10)} - placed
        assert (
            f"round {rnd}: {resting} rests this round (not called; nothing is wrong with it): a bucket was "
            f"flagged in round 1 and none of its facilities is quarantined, so until round "
            f"{1 + EQUAL_BUCKETS_ROUNDS} every bucket has exactly 3 facilities" in caplog.text
        )
        a.reputation.observe(attempt_slot(rnd, 0), {b.bucket_id: list(b.members) for b in config.buckets}, {})
        rested.add(resting)
    assert len(rested) > 1  # drawn anew each round
    config = a.make_config(2 + EQUAL_BUCKETS_ROUNDS, 0, bytes(32))  # long enough without a flag
    assert sorted(len(b.members) for b in config.buckets) == [3, 3, 4]
    a.registry.close()


@pytest.mark.parametrize("settings", [{"rule": "mean"}, {"max_byzantine": 0}])
def test_a_plain_mean_or_no_declared_attacker_keeps_everyone(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    a = _authority(tmp_path, 10, **settings)
    assert not a.schedule_settings().equal_buckets
    _flag(a, 1, a.make_config(1, 0, bytes(32)))
    config = a.make_config(2, 0, bytes(32))
    assert sorted(len(b.members) for b in config.buckets) == [3, 3, 4]
    a.registry.close()
