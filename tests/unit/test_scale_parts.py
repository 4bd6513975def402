"""The pieces that keep a round linear in the number of facilities: per-bucket signed configuration
views, the fog's choice of what to forward, the facilities file of a multi-facility host, and the
leader's phase clock."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, NodeInfo, RoundConfig
from hfl.errors import ConfigError
from hfl.proto.v1 import fog_pb2
from hfl.rpc import serde
from hfl.schedule import assign_buckets
from services.facility.host import read_hosted
from services.fog.rounds import PhaseMarks, bucket_requests
from services.leader.rounds import RoundClock


def make_config(n: int = 40, fogs: int = 3) -> tuple[RoundConfig, SigningKey]:
    key = SigningKey.generate()
    facs = tuple(
        NodeInfo(f"facility-{i:03d}", "facility", f"127.0.0.1:{40000 + i}", os.urandom(32), "clinic")
        for i in range(n)
    )
    fog_nodes = tuple(
        NodeInfo(f"fog-{i}", "fog", f"127.0.0.1:{30000 + i}", os.urandom(32)) for i in range(fogs)
    )
    committee = (NodeInfo("validator-1", "validator", "127.0.0.1:20000", os.urandom(32)),)
    plans = assign_buckets([f.node_id for f in facs], [f.node_id for f in fog_nodes], 8, b"s" * 32)
    config = RoundConfig(
        round=3,
        attempt=0,
        seed=b"s" * 32,
        ledger_head=b"h" * 32,
        epoch=0,
        buckets=tuple(Bucket(p.bucket_id, p.fog_id, p.members, 6) for p in plans),
        committee=committee,
        quorum=1,
        facilities=facs,
        fogs=fog_nodes,
        committee_draw={
            "epoch": 0,
            "seed": "ab" * 32,
            "pool": ["validator-1"],
            "weights": {"validator-1": 1.0},
            "size": 1,
            "members": ["validator-1"],
        },
    ).sign(key)
    return config, key


def test_bucket_view_holds_only_the_bucket() -> None:
    config, key = make_config()
    b = config.buckets[1]
    view = config.bucket_view(b.bucket_id).sign(key)
    view.verify(key.public_bytes)
    assert view.buckets == (b,)
    assert {n.node_id for n in view.facilities} == set(b.members)
    assert [n.node_id for n in view.fogs] == [b.fog_id]
    assert view.committee == () and view.round == config.round and view.attempt == config.attempt
    assert view.node(b.fog_id).address == config.node(b.fog_id).address
    assert view.is_bucket_view_of(config)
    # its size does not depend on the federation: a view of a 40-facility round is far smaller
    assert serde.config_to_proto(view).ByteSize() * 3 < serde.config_to_proto(config).ByteSize()
    with pytest.raises(KeyError):
        config.bucket_view("no-such-bucket")


def test_a_changed_view_is_not_a_view_of_the_config() -> None:
    config, _key = make_config()
    b = config.buckets[0]
    view = config.bucket_view(b.bucket_id)
    other = config.facilities[-1] if config.facilities[-1].node_id not in b.members else config.facilities[0]
    swapped = replace(view, buckets=(replace(b, members=(*b.members[:-1], other.node_id)),))
    assert not swapped.is_bucket_view_of(config)
    assert not replace(view, round=config.round + 1).is_bucket_view_of(config)


def test_fog_forwards_the_signed_view_and_falls_back_when_it_does_not_check_out() -> None:
    config, key = make_config()
    mine = [b for b in config.buckets if b.fog_id == "fog-0"]
    good = [serde.config_to_proto(config.bucket_view(b.bucket_id).sign(key)) for b in mine]
    request = fog_pb2.RunRoundRequest(config=serde.config_to_proto(config), bucket_configs=good)
    out = bucket_requests(config, request, mine, key.public_bytes)
    for b in mine:
        sent = serde.config_from_proto(out[b.bucket_id].config)
        assert [x.bucket_id for x in sent.buckets] == [b.bucket_id]
    stranger = SigningKey.generate()
    forged = [serde.config_to_proto(config.bucket_view(b.bucket_id).sign(stranger)) for b in mine]
    request = fog_pb2.RunRoundRequest(config=serde.config_to_proto(config), bucket_configs=forged)
    out = bucket_requests(config, request, mine, key.public_bytes)
    assert all(out[b.bucket_id].config == request.config for b in mine)  # the full, signed configuration


def test_phase_marks_and_clock_split_a_round() -> None:
    marks = PhaseMarks(t0=0.0, marks={"distributed": 1.0, "collected": 3.0})
    phases = marks.seconds()
    assert phases["distribution"] == 1.0 and phases["local_work"] == 2.0 and phases["aggregation"] >= 0
    clock = RoundClock()
    clock.fog_answered(
        "fog-1",
        started=clock._last,
        phases_s={"distribution": 0.0, "local_work": 0.0, "aggregation": 0.0},
        bytes_in=123,
    )
    clock.fog_answered("fog-2", started=clock._last, phases_s={"local_work": float("nan")})
    clock.fogs_done()
    clock.lap("committee")
    from hfl.rpc.client import ByteCount

    own = ByteCount()
    own.add("fog", 10, 1000)
    summary = clock.cost(own, ByteCount()).to_dict()
    assert summary["traffic"]["leader_bytes_in"] == 1000 and summary["traffic"]["fog_bytes_in_max"] == 123
    assert {"distribution", "local_work", "aggregation", "committee", "config"} <= set(summary["phases"])


def write(tmp_path: Path, doc: object) -> str:
    p = tmp_path / f"facilities-{len(list(tmp_path.iterdir()))}.json"
    p.write_text(json.dumps(doc))
    return str(p)


def test_facilities_file_is_checked(tmp_path: Path) -> None:
    ok = {
        "facilities": [
            {"HFL_NODE_ID": "a", "HFL_STATE_DIR": str(tmp_path / "a")},
            {"HFL_NODE_ID": "b", "HFL_STATE_DIR": str(tmp_path / "b"), "HFL_SHARD": "1/2"},
        ]
    }
    assert [e["HFL_NODE_ID"] for e in read_hosted(write(tmp_path, ok))] == ["a", "b"]
    bad = {
        "not set": None,
        "does not exist": str(tmp_path / "missing.json"),
        "at least one facility": write(tmp_path, {"facilities": []}),
        "is not an hfl setting": write(
            tmp_path, {"facilities": [{"HFL_NODE_ID": "a", "HFL_STATE_DIR": "x", "HFL_NOPE": "1"}]}
        ),
        "shared by the whole process": write(
            tmp_path, {"facilities": [{"HFL_NODE_ID": "a", "HFL_STATE_DIR": "x", "HFL_METRICS_PORT": "1"}]}
        ),
        "needs its own HFL_STATE_DIR": write(tmp_path, {"facilities": [{"HFL_NODE_ID": "a"}]}),
        "listed twice": write(
            tmp_path,
            {
                "facilities": [
                    {"HFL_NODE_ID": "a", "HFL_STATE_DIR": "x"},
                    {"HFL_NODE_ID": "a", "HFL_STATE_DIR": "y"},
                ]
            },
        ),
    }
    for message, path in bad.items():
        with pytest.raises(ConfigError, match=message):
            read_hosted(path or "")
