"""The wire is typed: no JSON in strings (issue 12), and what replaced it is checked in serde."""

from __future__ import annotations

import os

import pytest
from google.protobuf.descriptor import Descriptor

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, NodeInfo, RoundConfig
from hfl.errors import InvalidInput
from hfl.hashing import canonical_json
from hfl.proto.v1 import authority_pb2, common_pb2, facility_pb2, fog_pb2, leader_pb2, validator_pb2
from hfl.rpc import serde
from hfl.schedule import round_seed, select_committee

STILL_JSON: set[str] = set()
"""Fields that still carry JSON: none (issue 12); keep it that way."""


def _fields(d: Descriptor) -> list[str]:
    out = [f.full_name for f in d.fields]
    for nested in d.nested_types:
        out += _fields(nested)
    return out


def test_no_new_field_carries_json_in_a_string() -> None:
    names = []
    for module in (authority_pb2, common_pb2, facility_pb2, fog_pb2, leader_pb2, validator_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            names += _fields(message)
    assert len(names) > 100  # the walk really sees the protocol
    json_fields = {n for n in names if n.endswith("_json")}
    assert json_fields - STILL_JSON == set(), "make these messages (hfl/rpc/serde.py)"
    assert STILL_JSON - json_fields == set(), "converted: take them off STILL_JSON"


def _config(key: SigningKey) -> RoundConfig:
    pool = [f"validator-{i}" for i in range(1, 8)]
    weights = {v: round(1.0 / i, 6) for i, v in enumerate(pool, start=1)}
    seed = round_seed(os.urandom(32), 2, 0xFFFF)
    draw = {
        "epoch": 2,
        "seed": seed.hex(),
        "pool": pool,
        "weights": weights,
        "size": 4,
        "members": select_committee(pool, 4, seed, weights),
    }
    committee = tuple(NodeInfo(v, "validator", "127.0.0.1:1", os.urandom(32)) for v in draw["members"])
    return RoundConfig(
        round=11,
        attempt=0,
        seed=b"s" * 32,
        ledger_head=b"h" * 32,
        epoch=2,
        buckets=(Bucket("b0", "fog-1", ("facility-01", "facility-02", "facility-03"), 3),),
        committee=committee,
        quorum=3,
        facilities=(),
        fogs=(),
        committee_draw=draw,
    ).sign(key)


def test_the_committee_draw_crosses_the_wire_unchanged() -> None:
    key = SigningKey.generate()
    config = _config(key)
    back = serde.config_from_proto(serde.config_to_proto(config))
    assert back.committee_draw == config.committee_draw
    back.verify(key.public_bytes)  # the authority's signature still holds
    empty = RoundConfig(1, 0, b"s" * 32, b"h" * 32, 0, (), (), 1, (), ())
    assert not serde.config_to_proto(empty).HasField("committee_draw")
    assert serde.config_from_proto(serde.config_to_proto(empty)).committee_draw == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: setattr(d, "seed", b"short"), "seed must be a 32-byte hash"),
        (lambda d: d.weights.__setitem__("validator-1", 1.5), "must be between 0 and 1"),
        (lambda d: d.weights.__setitem__("validator-1", float("nan")), "must be between 0 and 1"),
        (lambda d: d.members.append("validator-99"), "drawn from its candidates"),
        (lambda d: setattr(d, "size", 5), "must be its size"),
        (lambda d: d.pool.append("v" * 100), "candidates"),
    ],
)
def test_a_malformed_committee_draw_is_refused(change: object, message: str) -> None:
    wire = serde.config_to_proto(_config(SigningKey.generate()))
    change(wire.committee_draw)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=message):
        serde.config_from_proto(wire)


@pytest.mark.parametrize(
    "params",
    [
        {"f": 1, "clip_update": 3.0},  # the leader's default
        {"f": 0, "clip_update": None, "screen": False},  # defences off
        {"f": 2, "clip_update": 0.5, "m": 3, "screen": True, "screen_norm_ratio": 2.5},
        {"f": 1, "tau": 0.1, "iters": 3, "screen_shrink_ratio": 0.5, "screen_coherence": 0.9},
        {},
    ],
)
def test_rule_parameters_cross_the_wire_exactly(params: dict[str, object]) -> None:
    """The block hash covers rule_params, so they must come back with the same keys, values and types."""
    back = serde.rule_params_from_proto(serde.rule_params_to_proto(params))
    assert canonical_json(back) == canonical_json(params)


@pytest.mark.parametrize("params", [{"f": True}, {"clip_update": 3}, {"colour": "red"}, {"f": 1.0}])
def test_a_rule_parameter_without_a_typed_field_is_refused_when_sent(params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="has no typed field"):
        serde.rule_params_to_proto(params)


SPENDS = [
    {
        "mechanism": "gaussian",
        "accountant": "rdp",
        "noise_multiplier": 1.25,
        "sampling_rate": 0.01,
        "total_steps": 400,
    },
    {"statistics": ["sample_count", "positive_count"], "mechanism": "laplace", "sensitivity": 1},
    {"declined": "the privacy budget is used up"},
    {},
]


@pytest.mark.parametrize("details", SPENDS)
def test_signed_spend_reports_cross_the_wire_and_still_verify(details: dict[str, object]) -> None:
    from hfl.privacy.report import SpendReport

    key = SigningKey.generate()
    report = SpendReport("facility-01", 4, 0, "training", 0.5, 1e-5, steps=10, details=details).sign(key)
    back = serde.spend_from_proto(serde.spend_to_proto(report))
    assert back == report and canonical_json(back.details) == canonical_json(details)
    back.verify(key.public_bytes)


@pytest.mark.parametrize(
    "details", [{"total_steps": 1.5}, {"noise_multiplier": 1}, {"statistics": []}, {"note": "x"}]
)
def test_a_spend_detail_without_a_typed_field_is_refused_when_sent(details: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="has no typed field"):
        serde.spend_details_to_proto(details)


def test_malformed_spend_details_are_refused() -> None:
    wire = authority_pb2.PrivacySpend(facility_id="facility-01", round=1, kind="training")
    wire.details.noise_multiplier = float("nan")
    with pytest.raises(InvalidInput, match="noise_multiplier must be a finite number"):
        serde.spend_from_proto(wire)
    wire = authority_pb2.PrivacySpend(facility_id="facility-01", round=1, kind="release")
    wire.details.statistics.append("s" * 100)
    with pytest.raises(InvalidInput, match="released statistics"):
        serde.spend_from_proto(wire)


def _block_pair() -> tuple[object, object]:
    """A genesis block and a real proposal on top of it, signed by a committee of four."""
    import numpy as np

    from hfl.ledger import Block, CommitteeMember, Vote, genesis_header
    from hfl.round.propose import propose

    genesis = Block(
        genesis_header(np.zeros(5), {"model": {"kind": "logreg", "n_features": 4, "hidden": 0}, "seed": -3})
    )
    keys = {f"validator-{i}": SigningKey.generate() for i in range(1, 5)}
    config = _config(SigningKey.generate())
    sums = np.arange(20, dtype=np.float64).reshape(4, 5) / 10
    header, _, _ = propose(
        genesis,
        np.zeros(5),
        sums,
        [3, 3, 4, 3],
        rule="trimmed_mean",
        rule_params={"f": 1, "clip_update": 3.0},
        committee=[CommitteeMember(v, k.public_bytes) for v, k in keys.items()],
        config_hash=config.hash(),
        quorum=3,
        extra={
            "buckets": ["b0", "b1", "b2", "b3"],
            "fogs": ["fog-1", "fog-2", "fog-1", "fog-2"],
            "members": [
                ["f1", "f2", "f3"],
                ["f4", "f5", "f6"],
                ["f7", "f8", "f9", "f10"],
                ["f11", "f12", "f13"],
            ],
            "committee_draw": config.committee_draw,
        },
    )
    votes = tuple(Vote.create(k, 1, header.hash(), v, True, "ok", 0.8) for v, k in keys.items())
    return genesis, Block(header, votes)


def test_blocks_cross_the_wire_with_the_same_hash() -> None:
    for block in _block_pair():
        back = serde.block_from_proto(serde.block_to_proto(block))  # type: ignore[arg-type]
        assert back == block and back.hash == block.hash  # type: ignore[attr-defined]
        assert canonical_json(back.header.to_dict()) == canonical_json(block.header.to_dict())  # type: ignore[attr-defined]


def test_an_extra_record_without_a_typed_form_is_refused_when_sent() -> None:
    with pytest.raises(ValueError, match="has no typed form"):
        serde.extra_to_proto({"note": "free text"})
    with pytest.raises(ValueError, match="has no typed form"):
        serde.extra_to_proto({"buckets": [], "fogs": []})


def test_malformed_blocks_are_refused() -> None:
    _, block = _block_pair()
    wire = serde.block_to_proto(block)  # type: ignore[arg-type]
    wire.header.bucket_hashes[0] = b"short"
    with pytest.raises(InvalidInput, match="the block header of round 1 is malformed"):
        serde.block_from_proto(wire)
    wire = serde.block_to_proto(block)  # type: ignore[arg-type]
    wire.votes[0].signature = b"x"
    with pytest.raises(InvalidInput, match="the votes of block 1 are malformed"):
        serde.block_from_proto(wire)
    wire = serde.block_to_proto(block)  # type: ignore[arg-type]
    wire.header.extra.round.members[0].members.append("m" * 65)
    with pytest.raises(InvalidInput, match="a bucket's members"):
        serde.block_from_proto(wire)
    wire = serde.block_to_proto(block)  # type: ignore[arg-type]
    wire.header.committee[0].node_id = ""
    with pytest.raises(InvalidInput, match="a committee member"):
        serde.block_from_proto(wire)


def test_the_norm_bound_history_crosses_the_wire_exactly() -> None:
    """A block's adaptive norm-bound record (typed NormBoundHistory) keeps its floats bit for bit, so the
    hash validators recompute is the leader's; a malformed one is refused."""
    from dataclasses import replace

    from hfl.ledger import Block

    _, block = _block_pair()
    for medians in ([], [0.1 + 0.2, 1e-300, 0.0, 2.0 / 3.0]):
        extra = {**block.header.extra, "norm_bound": {"ceiling": 3.0, "medians": medians}}  # type: ignore[attr-defined]
        header = replace(block.header, extra=extra)  # type: ignore[attr-defined]
        back = serde.header_from_proto(serde.header_to_proto(header))
        assert back == header and back.hash() == header.hash()
        assert back.extra["norm_bound"]["medians"] == medians
    assert "norm_bound" not in serde.header_from_proto(serde.header_to_proto(block.header)).extra  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no typed form"):
        serde.extra_to_proto({**block.header.extra, "norm_bound": {"ceiling": 3.0}})  # type: ignore[attr-defined]
    wire = serde.block_to_proto(Block(replace(block.header, extra=extra), block.votes))  # type: ignore[attr-defined]
    for field, value, match in (
        ("ceiling", 0.0, "ceiling must be a positive number"),
        ("medians", [float("nan")], "finite, non-negative"),
        ("medians", [0.1] * 6, "at most 5"),
    ):
        bad = validator_pb2.Block()
        bad.CopyFrom(wire)
        if field == "ceiling":
            bad.header.extra.round.norm_bound.ceiling = value  # type: ignore[assignment]
        else:
            del bad.header.extra.round.norm_bound.medians[:]
            bad.header.extra.round.norm_bound.medians.extend(value)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match=match):
            serde.block_from_proto(bad)
