"""Block headers, votes and quorum certificates (in memory)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.crypto.signing import InvalidSignature, SigningKey
from hfl.hashing import ZERO_HASH, hash_vector, sha256
from hfl.ledger import (
    Block,
    BlockHeader,
    CommitteeMember,
    LedgerError,
    Vote,
    check_quorum,
    genesis_header,
    max_faulty,
    quorum_size,
    select_quorum,
)
from hfl.round.propose import aggregate_recorded, compute_model, next_header


def keys(n: int, tag: int = 1) -> list[SigningKey]:
    # Fixed test keys (not secret) so that the known-answer values below are reproducible.
    return [SigningKey.from_private_bytes(bytes([tag, i]) + bytes(30)) for i in range(n)]


def committee_of(ks: list[SigningKey]) -> tuple[CommitteeMember, ...]:
    return tuple(CommitteeMember(f"validator-{i}", k.public_bytes) for i, k in enumerate(ks))


def round1(n: int = 4) -> tuple[BlockHeader, list[SigningKey], np.ndarray]:
    model0 = np.arange(6, dtype=np.float64)
    genesis = Block(genesis_header(model0, {"task": "test"}))
    sums = np.array([[1.0, 2, 3, 4, 5, 6], [3.0, 2, 1, 0, -1, -2]])
    ks = keys(n)
    header, model = next_header(
        genesis,
        model0,
        sums,
        [2, 2],
        rule="mean",
        rule_params={"f": 0, "clip_update": None},
        committee=committee_of(ks),
        config_hash=sha256(b"config", b"1"),
    )
    return header, ks, model


def accept(k: SigningKey, i: int, header: BlockHeader, **kw: Any) -> Vote:
    args: dict[str, Any] = {"accept": True, "reason": "ok", "score": 1.0}
    args.update(kw)
    return Vote.create(
        k, args.pop("round", header.round), args.pop("block_hash", header.hash()), f"validator-{i}", **args
    )


# ------------------------------------------------------------------------------------------ quorum size


def test_quorum_size_known_answers() -> None:
    assert [quorum_size(n) for n in range(1, 11)] == [1, 1, 1, 3, 3, 3, 5, 5, 5, 7]
    assert [max_faulty(n) for n in (1, 3, 4, 6, 7, 10)] == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "4"])
def test_quorum_size_rejects_bad_sizes(bad: Any) -> None:
    with pytest.raises(ValueError):
        quorum_size(bad)


@given(st.integers(min_value=1, max_value=10_000))
def test_quorum_properties(n: int) -> None:
    f, q = max_faulty(n), quorum_size(n)
    assert 3 * f + 1 <= n < 3 * (f + 1) + 1
    assert q <= n
    assert q <= n - f  # the honest members alone can always form a quorum
    assert q >= f + 1  # the faulty members alone never can


@given(st.integers(min_value=0, max_value=3000))
def test_quorums_intersect_in_an_honest_member_for_3f_plus_1(f: int) -> None:
    n = 3 * f + 1
    assert max_faulty(n) == f
    assert 2 * quorum_size(n) - n >= f + 1


# ----------------------------------------------------------------------------------------------- header


def test_genesis_header_form_and_known_hash() -> None:
    h = genesis_header(np.array([1.0, 2.0]))
    assert h.round == 0 and h.is_genesis
    assert h.prev_hash == ZERO_HASH and h.base_model_hash == ZERO_HASH
    assert h.model_hash == hash_vector(np.array([1.0, 2.0]))
    assert h.committee == () and h.quorum == 0 and h.bucket_hashes == ()
    # Recomputed from first principles: length-prefixed SHA-256 over the domain and canonical JSON.
    z = "00" * 32
    model = hashlib.sha256(
        b"".join(len(p).to_bytes(8, "big") + p for p in (b"hfl/vector/f64/v1", struct.pack("<2d", 1.0, 2.0)))
    ).hexdigest()
    canonical = (
        f'{{"base_model_hash":"{z}","bucket_counts":[],"bucket_hashes":[],"committee":[],'
        f'"config_hash":"{z}","extra":{{}},"flagged":[],"model_hash":"{model}","prev_hash":"{z}",'
        f'"quorum":0,"round":0,"rule":"genesis","rule_params":{{}},"version":1}}'
    ).encode()
    domain = b"hfl/block/v1"
    expected = hashlib.sha256(
        len(domain).to_bytes(8, "big") + domain + len(canonical).to_bytes(8, "big") + canonical
    ).digest()
    assert h.hash() == expected
    # Pinned as well: every party must derive exactly this hash; a change here is a protocol change.
    assert h.hash().hex() == "2ac0063c0da532713c45c80daab50b6a162a8a6309065352a535b2f105e2a25a"


def test_genesis_extra_changes_hash() -> None:
    a = genesis_header(np.ones(3))
    assert genesis_header(np.ones(3), None).hash() == a.hash() == genesis_header(np.ones(3), {}).hash()
    assert genesis_header(np.ones(3), {"seed": 1}).hash() != a.hash()


def test_next_header_commits_to_inputs() -> None:
    header, _, model = round1()
    assert header.round == 1
    assert header.base_model_hash == genesis_header(np.arange(6.0), {"task": "test"}).model_hash
    np.testing.assert_array_equal(model, np.arange(6.0) + np.array([1.0, 1, 1, 1, 1, 1]))
    assert header.model_hash == hash_vector(model)
    assert header.quorum == 3 and len(header.committee) == 4
    assert header.flagged == ()


def test_next_header_rejects_wrong_previous_model() -> None:
    genesis = Block(genesis_header(np.zeros(3)))
    with pytest.raises(ValueError, match="previous model"):
        next_header(
            genesis,
            np.ones(3),
            np.ones((1, 3)),
            [1],
            rule="mean",
            rule_params={},
            committee=committee_of(keys(1)),
            config_hash=ZERO_HASH,
        )


def test_compute_model_flags_oversized_bucket() -> None:
    sums = np.array([[1.0, 0.0], [100.0, 0.0], [0.0, 1.0]])
    model, flagged = compute_model(np.zeros(2), "mean", sums, [1, 1, 1], {"clip_update": 2.0})
    assert flagged == (1,)
    np.testing.assert_allclose(model, [0.5, 0.5])


def test_header_round_trip_and_every_field_changes_hash() -> None:
    header, _, _ = round1()
    d = json.loads(json.dumps(header.to_dict()))
    back = BlockHeader.from_dict(d)
    assert back == header and back.hash() == header.hash()
    other = committee_of(keys(4, tag=9))
    changes: dict[str, Any] = {
        "round": 2,
        "prev_hash": b"\x01" * 32,
        "base_model_hash": b"\x02" * 32,
        "model_hash": b"\x03" * 32,
        "bucket_hashes": (header.bucket_hashes[1], header.bucket_hashes[0]),
        "bucket_counts": (2, 3),
        "rule": "median",
        "rule_params": {"f": 1, "clip_update": None},
        "flagged": (0,),
        "committee": other,
        "quorum": 4,
        "config_hash": b"\x04" * 32,
        "extra": {"epsilon_spent": 0.5},
    }
    assert set(changes) == {f.name for f in dataclasses.fields(BlockHeader)}
    seen = {header.hash()}
    for name, value in changes.items():
        changed = dataclasses.replace(header, **{name: value})
        seen.add(changed.hash())
    assert len(seen) == len(changes) + 1


def test_header_copies_and_normalises_dicts() -> None:
    params: dict[str, Any] = {"f": 1, "window": (1, 2)}
    header, _, _ = round1()
    h = dataclasses.replace(header, rule_params=params)
    params["f"] = 99
    assert h.rule_params == {"f": 1, "window": [1, 2]}
    assert BlockHeader.from_dict(h.to_dict()) == h


@pytest.mark.parametrize(
    "change, message",
    [
        ({"round": -1}, "at least 0"),
        ({"round": 1.0}, "whole number"),
        ({"prev_hash": b"short"}, "32 bytes"),
        ({"model_hash": "00" * 32}, "32 bytes"),
        ({"bucket_counts": (2,)}, "bucket counts"),
        ({"bucket_counts": (2, 0)}, "at least 1"),
        ({"rule": ""}, "rule"),
        ({"rule_params": {"x": float("nan")}}, "JSON"),
        ({"extra": {1: "a"}}, "text"),
        ({"extra": {"x": object()}}, "JSON"),
        ({"flagged": (1, 0)}, "sorted"),
        ({"flagged": (0, 0)}, "sorted"),
        ({"flagged": (2,)}, "does not exist"),
        ({"committee": ()}, "no validator committee"),
        ({"quorum": 2}, "unsafe"),
        ({"quorum": 5}, "unsafe"),
        ({"bucket_hashes": (), "bucket_counts": ()}, "no bucket sums"),
    ],
)
def test_header_validation(change: dict[str, Any], message: str) -> None:
    header, _, _ = round1()
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(header, **change)


def test_header_rejects_duplicate_committee_member() -> None:
    header, ks, _ = round1()
    dup = (*header.committee[:3], CommitteeMember("validator-0", ks[3].public_bytes))
    with pytest.raises(ValueError, match="more than once"):
        dataclasses.replace(header, committee=dup)


def test_genesis_form_is_enforced() -> None:
    g = genesis_header(np.ones(2))
    with pytest.raises(ValueError, match="genesis"):
        dataclasses.replace(g, prev_hash=b"\x01" * 32)
    with pytest.raises(ValueError, match="genesis"):
        dataclasses.replace(g, committee=committee_of(keys(1)), quorum=1)


@pytest.mark.parametrize("model", [np.zeros((2, 2)), np.array([]), np.array([1.0, np.nan])])
def test_genesis_rejects_bad_models(model: np.ndarray) -> None:
    with pytest.raises(ValueError):
        genesis_header(model)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("quorum"),
        lambda d: d.update(version=2),
        lambda d: d.update(prev_hash="zz" * 32),
        lambda d: d.update(bucket_counts=7),
        lambda d: d["committee"][0].update(public_key="00"),
    ],
)
def test_header_from_dict_rejects_malformed(mutate: Any) -> None:
    header, _, _ = round1()
    d = json.loads(json.dumps(header.to_dict()))
    mutate(d)
    with pytest.raises(ValueError):
        BlockHeader.from_dict(d)


_hash32 = st.binary(min_size=32, max_size=32)
_json_leaf: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
)
_json = st.recursive(
    _json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 10**6),
    hashes=st.lists(_hash32, min_size=1, max_size=5),
    hs=st.tuples(_hash32, _hash32, _hash32, _hash32),
    n=st.integers(1, 7),
    params=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    extra=st.dictionaries(st.text(max_size=6), _json, max_size=4),
    data=st.data(),
)
def test_header_round_trip_property(
    r: int,
    hashes: list[bytes],
    hs: tuple[bytes, bytes, bytes, bytes],
    n: int,
    params: dict[str, Any],
    extra: dict[str, Any],
    data: st.DataObject,
) -> None:
    counts = data.draw(st.lists(st.integers(1, 1000), min_size=len(hashes), max_size=len(hashes)))
    flagged = sorted(data.draw(st.sets(st.integers(0, len(hashes) - 1))))
    committee = tuple(CommitteeMember(f"v{i}", bytes([i]) * 32) for i in range(n))
    quorum = data.draw(st.integers(quorum_size(n), n))
    h = BlockHeader(r, hs[0], hs[1], hs[2], tuple(hashes), tuple(counts), "mean", params,
                    tuple(flagged), committee, quorum, hs[3], extra)  # fmt: skip
    back = BlockHeader.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back == h
    assert back.hash() == h.hash()


# ------------------------------------------------------------------------------------------------ votes


def test_vote_signed_message_known_answer() -> None:
    msg = Vote.signed_message(3, b"\xab" * 32, "v1", True, "ok", 1)
    assert msg == (
        b'hfl/vote/v1\x00{"accept":true,"block_hash":"' + b"ab" * 32 + b'","reason":"ok","round":3,'
        b'"score":1.0,"validator_id":"v1"}'
    )
    assert Vote.signed_message(3, b"\xab" * 32, "v1", True, "ok", None).endswith(
        b'"score":null,"validator_id":"v1"}'
    )


def test_vote_sign_verify_and_round_trip() -> None:
    header, ks, _ = round1()
    v = accept(ks[0], 0, header, score=2)
    assert v.score == 2.0 and isinstance(v.score, float)
    v.verify(ks[0].public_bytes)
    with pytest.raises(InvalidSignature):
        v.verify(ks[1].public_bytes)
    back = Vote.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v
    back.verify(ks[0].public_bytes)
    changes: list[tuple[str, Any]] = [
        ("accept", False),
        ("reason", "changed"),
        ("score", 0.5),
        ("round", 2),
        ("validator_id", "validator-1"),
        ("block_hash", b"\x00" * 32),
    ]
    for field, value in changes:
        with pytest.raises(InvalidSignature):
            dataclasses.replace(v, **{field: value}).verify(ks[0].public_bytes)


@pytest.mark.parametrize(
    "change",
    [
        {"score": float("nan")},
        {"score": float("inf")},
        {"score": True},
        {"accept": 1},
        {"validator_id": ""},
        {"signature": b"\x00" * 63},
        {"block_hash": b"\x00" * 31},
        {"reason": None},
    ],
)
def test_vote_validation(change: dict[str, Any]) -> None:
    header, ks, _ = round1()
    v = accept(ks[0], 0, header)
    with pytest.raises(ValueError):
        dataclasses.replace(v, **change)


# ----------------------------------------------------------------------------------------------- quorum


def test_quorum_exactly_2f_plus_1_passes() -> None:
    header, ks, _ = round1(4)
    check_quorum(header, [accept(ks[i], i, header) for i in range(3)])


def test_quorum_2f_fails() -> None:
    header, ks, _ = round1(4)
    with pytest.raises(LedgerError, match="only 2 validators accepted") as e:
        check_quorum(header, [accept(ks[i], i, header) for i in range(2)])
    assert e.value.round == 1
    assert str(e.value).startswith("block 1: ")


def test_reject_votes_do_not_count() -> None:
    header, ks, _ = round1(4)
    votes = [accept(ks[i], i, header) for i in range(2)]
    votes.append(accept(ks[2], 2, header, accept=False, reason="norm too large"))
    with pytest.raises(LedgerError, match="only 2"):
        check_quorum(header, votes)
    votes.append(accept(ks[3], 3, header))
    check_quorum(header, votes)  # 3 accepts + 1 signed reject is fine


def test_duplicate_voter_is_an_error_even_with_quorum() -> None:
    header, ks, _ = round1(4)
    votes = [accept(ks[i], i, header) for i in range(4)]
    with pytest.raises(LedgerError, match="more than once"):
        check_quorum(header, [*votes, votes[0]])
    with pytest.raises(LedgerError, match="more than once"):
        check_quorum(header, [*votes, accept(ks[1], 1, header, accept=False)])


def test_non_member_is_an_error() -> None:
    header, ks, _ = round1(4)
    outsider = keys(1, tag=7)[0]
    votes = [accept(ks[i], i, header) for i in range(3)]
    votes.append(Vote.create(outsider, 1, header.hash(), "validator-9", True, "ok", None))
    with pytest.raises(LedgerError, match="not on the committee"):
        check_quorum(header, votes)


def test_wrong_round_and_wrong_block_are_errors() -> None:
    header, ks, _ = round1(4)
    good = [accept(ks[i], i, header) for i in range(3)]
    with pytest.raises(LedgerError, match="for round 2"):
        check_quorum(header, [*good, accept(ks[3], 3, header, round=2)])
    with pytest.raises(LedgerError, match="different block"):
        check_quorum(header, [*good, accept(ks[3], 3, header, block_hash=b"\x11" * 32)])


def test_bad_signature_is_an_error() -> None:
    header, ks, _ = round1(4)
    votes = [accept(ks[i], i, header) for i in range(3)]
    forged = accept(ks[0], 3, header)  # validator-3's vote signed with validator-0's key
    with pytest.raises(LedgerError, match="invalid signature"):
        check_quorum(header, [*votes, forged])
    flipped = dataclasses.replace(
        votes[2], signature=bytes([votes[2].signature[0] ^ 1]) + votes[2].signature[1:]
    )
    with pytest.raises(LedgerError, match="invalid signature"):
        check_quorum(header, [*votes[:2], flipped])


def test_genesis_quorum_is_empty() -> None:
    g = genesis_header(np.ones(2))
    check_quorum(g, [])
    k = keys(1)[0]
    with pytest.raises(LedgerError, match="not on the committee"):
        check_quorum(g, [Vote.create(k, 0, g.hash(), "validator-0", True)])


def test_select_quorum_drops_bad_votes() -> None:
    header, ks, _ = round1(4)
    good = [accept(ks[i], i, header) for i in (2, 0, 1)]
    junk = [
        accept(ks[0], 3, header),  # forged
        accept(ks[0], 0, header, reason="again"),  # duplicate
        accept(ks[3], 3, header, round=5),  # wrong round -> dropped, so validator-3 contributes nothing
    ]
    qc = select_quorum(header, [*good, *junk])
    assert [v.validator_id for v in qc] == ["validator-0", "validator-1", "validator-2"]
    check_quorum(header, qc)
    with pytest.raises(LedgerError, match="only 2 valid"):
        select_quorum(header, [good[0], good[1], accept(ks[2], 2, header, accept=False)])


def test_block_wraps_header_and_votes() -> None:
    header, ks, _ = round1(4)
    votes = [accept(ks[i], i, header) for i in range(3)]
    b = Block(header, votes)  # type: ignore[arg-type]
    assert isinstance(b.votes, tuple)
    assert b.hash == header.hash() and b.round == 1
    assert Block.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    with pytest.raises(ValueError):
        Block(header, ("not a vote",))  # type: ignore[arg-type]


def test_aggregate_recorded_applies_every_recorded_setting() -> None:
    sums = np.array([[1.0, 0.0], [1.2, 0.1], [0.9, -0.1], [50.0, 0.0]])
    counts = [1, 1, 1, 1]
    bounded = aggregate_recorded("mean", sums, counts, {"f": 0, "clip_update": 3.0})
    assert bounded.flag_kinds == {3: "norm"}  # 50 > 1 * C
    open_ = aggregate_recorded("mean", sums, counts, {"f": 0, "clip_update": None, "screen": False})
    assert open_.flagged == () and open_.update[0] == pytest.approx(53.1 / 4)
    screened = aggregate_recorded("mean", sums, counts, {"f": 0, "clip_update": None})
    assert screened.flag_kinds == {3: "screen"}  # too large compared with the others
    model, flagged = compute_model(np.zeros(2), "mean", sums, counts, {"f": 0, "clip_update": 3.0})
    assert flagged == (3,) and np.array_equal(model, bounded.update)
    with pytest.raises(ValueError, match="clip_update"):
        aggregate_recorded("mean", sums, counts, {"clip_update": "big"})
