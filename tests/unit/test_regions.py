"""Regional fogs: each facility's home fog, buckets drawn per fog, and moving a down fog's facilities."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hfl.crypto.signing import SigningKey
from hfl.domain import NodeInfo
from hfl.errors import InvalidInput
from hfl.proto.v1 import authority_pb2
from hfl.rpc import serde
from hfl.rpc.settings import Settings
from hfl.schedule import (
    EQUAL_BUCKETS_ROUNDS,
    MIN_BUCKETS_PER_FOG,
    MIN_SECURE_BUCKET,
    FogStatus,
    assign_buckets_at,
    assign_eval_buckets_at,
    cut_buckets,
    equal_buckets_now,
    home_fogs,
    round_seed,
)
from services.authority.registry import Registry
from services.authority.service import Authority


def _ids(n: int, prefix: str = "facility") -> dict[str, str]:
    return {f"{prefix}-{i:03d}": "" for i in range(n)}


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 150),
    n_fogs=st.integers(1, 4),
    bucket_size=st.integers(3, 6),
    min_buckets=st.integers(1, MIN_BUCKETS_PER_FOG),
)
def test_homes_fill_fogs_in_whole_buckets(n: int, n_fogs: int, bucket_size: int, min_buckets: int) -> None:
    facilities = _ids(n)
    fogs = {f"fog-{j}": "" for j in range(n_fogs)}
    homes = home_fogs(facilities, fogs, bucket_size, min_buckets=min_buckets)
    assert set(homes) == set(facilities)  # everyone has a home
    assert set(homes.values()) <= set(fogs)
    load = Counter(homes.values())
    unit = max(bucket_size, MIN_SECURE_BUCKET)
    if n >= unit:
        assert all(c >= unit for c in load.values())  # no fog holds too few for a bucket
    # As many buckets as one fog would make: splitting over fogs costs no bucket.
    assert sum(c // unit for c in load.values()) == max(1, n // unit) or n < unit
    # A fog is used only with enough buckets to re-draw among.
    assert len(load) == max(1, min(n_fogs, max(1, n // unit) // min_buckets))


def test_a_small_federation_uses_one_fog_and_keeps_the_other_as_a_standby() -> None:
    homes = home_fogs(_ids(12), {"fog-1": "", "fog-2": ""}, 3)
    assert len(set(homes.values())) == 1
    big = home_fogs(_ids(24), {"fog-1": "", "fog-2": ""}, 3)
    assert Counter(big.values()) == Counter({"fog-1": 12, "fog-2": 12})


def test_a_down_fogs_facilities_move_and_come_back_and_no_one_else_moves() -> None:
    facilities = _ids(72)
    fogs = {"fog-1": "", "fog-2": "", "fog-3": ""}
    before = home_fogs(facilities, fogs, 3)
    assert Counter(before.values()) == Counter({"fog-1": 24, "fog-2": 24, "fog-3": 24})
    without = home_fogs(facilities, {"fog-1": "", "fog-3": ""}, 3, previous=before)
    assert Counter(without.values()) == Counter({"fog-1": 36, "fog-3": 36})
    stayed = [f for f, g in before.items() if g != "fog-2"]
    assert all(without[f] == before[f] for f in stayed)  # only fog-2's facilities moved
    back = home_fogs(facilities, fogs, 3, previous=without)  # fog-2 is up again: it gets 24 back
    assert Counter(back.values()) == Counter({"fog-1": 24, "fog-2": 24, "fog-3": 24})
    assert home_fogs(facilities, fogs, 3, previous=back) == back  # and then nobody moves
    assert home_fogs(facilities, fogs, 3) == before  # without history: the same answer as at first


def test_homes_follow_regions_with_enough_facilities() -> None:
    facilities = {**{f"n-{i:02d}": "north" for i in range(12)}, **{f"s-{i:02d}": "south" for i in range(12)}}
    fogs = {"fog-n": "north", "fog-s": "south"}
    homes = home_fogs(facilities, fogs, 3)
    assert {homes[f] for f in facilities if f.startswith("n-")} == {"fog-n"}
    assert {homes[f] for f in facilities if f.startswith("s-")} == {"fog-s"}
    # The south fog is down: its facilities are served by the north one.
    assert set(home_fogs(facilities, {"fog-n": "north"}, 3).values()) == {"fog-n"}
    # A region too small to re-draw buckets among is served together with everyone else.
    few = {**facilities, **{f"e-{i}": "east" for i in range(4)}}
    homes = home_fogs(few, {**fogs, "fog-e": "east"}, 3)
    assert "fog-e" not in homes.values()
    assert len({homes[f"e-{i}"] for i in range(4)}) == 1  # they join one region's fog
    # Enough facilities without a region share every fog.
    many = {**facilities, **_ids(24)}
    homes = home_fogs(many, fogs, 3)
    assert {homes[f] for f in _ids(24)} == {"fog-n", "fog-s"}
    assert {homes[f] for f in facilities if f.startswith("n-")} == {"fog-n"}


def test_buckets_are_drawn_within_each_fog_and_redrawn_every_round() -> None:
    at = {**{f"a-{i:02d}": "fog-1" for i in range(12)}, **{f"b-{i:02d}": "fog-2" for i in range(13)}}
    draws = []
    for rnd in (1, 2):
        plans, sit_out, resting = assign_buckets_at(
            at, 3, round_seed(bytes(32), rnd), smallest=MIN_SECURE_BUCKET
        )
        assert sit_out == resting == []
        assert len({p.bucket_id for p in plans}) == len(plans) == 4 + 4
        members = [m for p in plans for m in p.members]
        assert sorted(members) == sorted(at)  # everyone in exactly one bucket
        for p in plans:
            assert {at[m] for m in p.members} == {p.fog_id}  # a bucket never spans fogs
            assert len(p.members) >= 3
        draws.append({p.members for p in plans})
    assert draws[0] != draws[1]  # re-drawn within each fog


def test_a_fog_with_too_few_facilities_this_round_forms_no_bucket() -> None:
    at = {**{f"a-{i}": "fog-1" for i in range(6)}, "b-0": "fog-2", "b-1": "fog-2"}
    plans, sit_out, _ = assign_buckets_at(at, 3, bytes(32), smallest=3)
    assert sit_out == ["b-0", "b-1"]
    assert {p.fog_id for p in plans} == {"fog-1"}
    plain, none_out, _ = assign_buckets_at(at, 3, bytes(32), smallest=1)  # plain sums: any size will do
    assert none_out == [] and {p.fog_id for p in plain} == {"fog-1", "fog-2"}


def test_equal_buckets_rest_each_fogs_remainder_and_draw_it_anew() -> None:
    # 13 at fog-1 (4 buckets of 3, one rests), 11 at fog-2 (3 buckets, two rest), 5 at fog-3 (one
    # bucket: fewer than EQUAL_BUCKETS_FROM, so nobody rests and the bucket grows to 5).
    at = {
        **{f"a-{i:02d}": "fog-1" for i in range(13)},
        **{f"b-{i:02d}": "fog-2" for i in range(11)},
        **{f"c-{i}": "fog-3" for i in range(5)},
    }
    rested: set[str] = set()
    for rnd in range(1, 31):
        plans, sit_out, resting = assign_buckets_at(
            at, 3, round_seed(bytes(32), rnd), smallest=MIN_SECURE_BUCKET, equal=True
        )
        assert sit_out == [] and len(resting) == 1 + 2
        assert {at[m] for m in resting} == {"fog-1", "fog-2"}
        assert sorted(len(p.members) for p in plans if p.fog_id != "fog-3") == [3] * 7
        assert [len(p.members) for p in plans if p.fog_id == "fog-3"] == [5]
        placed = [m for p in plans for m in p.members]
        assert sorted(placed + resting) == sorted(at) and not set(placed) & set(resting)
        rested.update(resting)
    assert len(rested) > 12  # a different remainder rests each round (30 draws of 3)
    # Without equal buckets nobody rests: the remainder grows buckets to 4.
    plans, _, resting = assign_buckets_at(at, 3, round_seed(bytes(32), 1), smallest=MIN_SECURE_BUCKET)
    assert resting == [] and max(len(p.members) for p in plans if p.fog_id == "fog-2") == 4


@pytest.mark.parametrize(
    ("allowed", "round_", "last_flagged", "equal"),
    [
        (True, 5, None, False),  # nothing flagged yet
        (True, 5, 4, True),
        (True, 5, 5, True),  # a refused attempt of this round was flagged
        (True, 4 + EQUAL_BUCKETS_ROUNDS, 4, True),
        (True, 5 + EQUAL_BUCKETS_ROUNDS, 4, False),  # long enough without a flag
        (False, 5, 4, False),  # the plain mean, or no misbehaving facility expected
    ],
)
def test_buckets_are_of_one_size_only_in_the_rounds_after_a_flag(
    allowed: bool, round_: int, last_flagged: int | None, equal: bool
) -> None:
    assert equal_buckets_now(allowed, round_, last_flagged) is equal


def test_cut_buckets_keeps_the_order_and_leaves_the_remainder_out_only_when_equal() -> None:
    order = list(range(11))
    assert cut_buckets(order, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert cut_buckets(order, 3, equal=True) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # 9 and 10 rest
    assert cut_buckets(order[:5], 3, equal=True) == [[0, 1, 2, 3, 4]]  # one bucket: nobody rests
    assert cut_buckets([], 3) == []


def test_evaluation_buckets_are_drawn_within_each_fog() -> None:
    at = {f"f-{i:02d}": ("fog-1" if i < 9 else "fog-2") for i in range(18)}
    specialties = {f: ("cardiology" if i % 2 else "oncology") for i, f in enumerate(sorted(at))}
    plans = assign_eval_buckets_at(specialties, at, 3, bytes(32))
    assert sorted(m for p in plans for m in p.members) == sorted(at)
    assert all({at[m] for m in p.members} == {p.fog_id} for p in plans)
    assert len({p.bucket_id for p in plans}) == len(plans)


def test_fog_status_marks_down_and_up_and_survives_a_restart() -> None:
    status = FogStatus()
    assert status.observe(["fog-1"], ["fog-2"]) == (["fog-1"], [])
    assert status.observe(["fog-1"], []) == ([], [])  # already down: nothing new
    assert status.down == {"fog-1"}
    again = FogStatus.from_dict(status.to_dict())
    assert again.down == {"fog-1"}
    assert again.observe([], ["fog-1"]) == ([], ["fog-1"])
    assert not again.down
    again.observe(["fog-2"], [])
    assert again.registered("fog-2") and not again.registered("fog-2")
    with pytest.raises(ValueError, match="malformed"):
        FogStatus.from_dict({"down": "fog-1"})


def test_a_region_must_be_a_short_plain_name() -> None:
    assert Settings(role="fog", region="north-1").region == "north-1"
    with pytest.raises(ValidationError, match="region"):
        Settings(role="fog", region="north; DROP")


# --- the authority -------------------------------------------------------------------------------------


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    registry = Registry(tmp_path / "registry.db")
    settings = Settings(role="authority", tls=False, state_dir=tmp_path, committee_size=1)
    a = Authority(settings, SigningKey.generate(), registry)
    for node in [
        *(
            NodeInfo(f"facility-{i:02d}", "facility", "", SigningKey.generate().public_bytes)
            for i in range(24)
        ),
        NodeInfo("fog-1", "fog", "127.0.0.1:90", SigningKey.generate().public_bytes),
        NodeInfo("fog-2", "fog", "127.0.0.1:91", SigningKey.generate().public_bytes),
        NodeInfo("validator-1", "validator", "127.0.0.1:92", SigningKey.generate().public_bytes),
    ]:
        registry.upsert(node)
    yield a
    registry.close()


def _report(a: Authority, rnd: int, down: list[str], up: list[str]) -> None:
    report = authority_pb2.RoundReport(fogs_down=down, fogs_up=up)
    req = authority_pb2.ReportRoundRequest(round=rnd, attempt=0, committed=True, report=report)
    asyncio.run(a.ReportRound(req, None))  # type: ignore[arg-type]


def _home(a: Authority, facility: str) -> str:
    request = authority_pb2.ListNodesRequest(node_id=facility)
    return asyncio.run(a.ListNodes(request, None)).home_fog  # type: ignore[arg-type]


def test_authority_moves_a_down_fogs_facilities_and_back(authority: Authority) -> None:
    first = authority.make_config(1, 0, bytes(32))
    assert Counter(b.fog_id for b in first.buckets) == Counter({"fog-1": 4, "fog-2": 4})
    on_fog_1 = sorted({m for b in first.buckets if b.fog_id == "fog-1" for m in b.members})
    assert all(_home(authority, f) == "fog-1" for f in on_fog_1)
    _report(authority, 1, ["fog-1"], ["fog-2"])
    moved = authority.make_config(2, 0, bytes(32))
    assert {b.fog_id for b in moved.buckets} == {"fog-2"}  # every facility is served by fog-2 now
    assert sorted(m for b in moved.buckets for m in b.members) == [f"facility-{i:02d}" for i in range(24)]
    assert all(_home(authority, f) == "fog-2" for f in on_fog_1)
    assert Authority(authority.settings, authority.key, authority.registry).fog_status.down == {"fog-1"}
    _report(authority, 2, [], ["fog-1", "fog-2"])  # the leader's health check reaches fog-1 again
    assert Counter(_home(authority, f"facility-{i:02d}") for i in range(24)) == Counter(
        {"fog-1": 12, "fog-2": 12}
    )


def test_authority_schedules_a_facility_where_it_is_connected(authority: Authority) -> None:
    node = authority.registry.get("facility-00")
    assert node is not None
    home = _home(authority, "facility-00")
    other = "fog-2" if home == "fog-1" else "fog-1"
    moved = NodeInfo(**{**node.to_dict(), "fog": other})  # still connected to its old fog
    asyncio.run(authority.Register(authority_pb2.RegisterRequest(node=serde.node_to_proto(moved)), None))  # type: ignore[arg-type]
    config = authority.make_config(1, 0, bytes(32))
    assert [b.fog_id for b in config.buckets if "facility-00" in b.members] == [other]
    _report(authority, 1, [other], [home])  # that fog is down: scheduled at its home, where it goes
    config = authority.make_config(2, 0, bytes(32))
    assert [b.fog_id for b in config.buckets if "facility-00" in b.members] == [home]


def test_a_fog_that_registers_again_is_up_again(authority: Authority) -> None:
    authority.make_config(1, 0, bytes(32))
    _report(authority, 1, ["fog-2"], [])
    assert authority.fog_status.down == {"fog-2"}
    fog = authority.registry.get("fog-2")
    assert fog is not None
    asyncio.run(authority.Register(authority_pb2.RegisterRequest(node=serde.node_to_proto(fog)), None))  # type: ignore[arg-type]
    assert not authority.fog_status.down


def test_a_report_naming_an_unknown_fog_is_refused_and_changes_nothing(authority: Authority) -> None:
    authority.make_config(1, 0, bytes(32))
    with pytest.raises(InvalidInput, match="not registered"):
        _report(authority, 1, ["fog-9"], [])
    assert not authority.fog_status.down
    _report(authority, 1, ["fog-1"], [])  # the same round, well formed, is still counted


def test_when_every_fog_seems_down_all_are_tried(authority: Authority) -> None:
    authority.make_config(1, 0, bytes(32))
    _report(authority, 1, ["fog-1", "fog-2"], [])
    config = authority.make_config(2, 0, bytes(32))
    assert {b.fog_id for b in config.buckets} == {"fog-1", "fog-2"}
