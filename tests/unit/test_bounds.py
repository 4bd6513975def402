"""Bounded input (issue 18, findings 3 and 4): every field that is stored or forwarded has a size limit
checked at the boundary, and what errors and logs echo of a caller's input is cut short."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl import bounds
from hfl.crypto.signing import SigningKey
from hfl.errors import InvalidInput, clip
from hfl.proto.v1 import authority_pb2, validator_pb2
from hfl.proto.v1 import common_pb2 as pb
from hfl.rpc import serde
from hfl.rpc.errors import MAX_DETAILS, status_for
from hfl.rpc.settings import Settings
from services.authority.registry import Registry
from services.authority.service import Authority

BIG = 50 * 1024 * 1024  # what the attack sent


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    registry = Registry(tmp_path / "registry.db")
    settings = Settings(
        role="authority",
        tls=False,
        state_dir=tmp_path,
        min_facilities=3,
        committee_size=1,
        secagg=False,
        pow_difficulty=0,
    )
    a = Authority(settings, SigningKey.generate(), registry)
    yield a
    registry.close()


def _node(node_id: str, role: str, **fields: str) -> pb.NodeInfo:
    base = {"address": f"{node_id}:50051", "metrics_address": f"{node_id}:9100"}
    return pb.NodeInfo(
        node_id=node_id, role=role, sign_public_key=SigningKey.generate().public_bytes, **{**base, **fields}
    )


def _register(a: Authority, node: pb.NodeInfo) -> authority_pb2.RegisterResponse:
    return asyncio.run(a.Register(authority_pb2.RegisterRequest(node=node), None))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ helpers
def test_clip_cuts_long_input_and_says_how_long_it_was() -> None:
    assert clip("facility-01") == "'facility-01'"
    cut = clip("x" * BIG)
    assert len(cut) < 120
    assert str(BIG) in cut


def test_text_limits() -> None:
    assert bounds.text("a" * bounds.MAX_ID, "id", bounds.MAX_ID) == "a" * bounds.MAX_ID
    with pytest.raises(InvalidInput, match="at most 64"):
        bounds.text("a" * (bounds.MAX_ID + 1), "id", bounds.MAX_ID)
    with pytest.raises(InvalidInput, match="missing"):
        bounds.node_id("")
    with pytest.raises(InvalidInput, match="NUL"):
        bounds.node_id("fog\x001")
    with pytest.raises(InvalidInput, match="spaces"):
        bounds.address("host:1 extra")
    with pytest.raises(InvalidInput, match="more than 2"):
        bounds.ids(["a", "b", "c"], "list", limit=2)


def test_error_details_are_capped_whatever_the_message() -> None:
    _code, msg = status_for(InvalidInput("x" * BIG))
    assert len(msg) <= BIG  # status_for keeps the text; the interceptor caps it
    from hfl.rpc.errors import _capped

    assert len(_capped(msg)) <= MAX_DETAILS


# ------------------------------------------------------------------------------------------ serde
@pytest.mark.parametrize(
    ("field", "size"),
    [
        ("address", bounds.MAX_ADDRESS + 1),
        ("metrics_address", bounds.MAX_ADDRESS + 1),
        ("metrics_address", 10 * 1024 * 1024),
        ("specialty", bounds.MAX_NAME + 1),
        ("node_id", bounds.MAX_ID + 1),
        ("role", bounds.MAX_ID + 1),
    ],
)
def test_oversized_node_fields_are_refused_at_the_boundary(field: str, size: int) -> None:
    node = _node("facility-01", "facility", specialty="clinic")
    setattr(node, field, "a" * size)
    with pytest.raises(InvalidInput) as e:
        serde.node_from_proto(node)
    assert len(str(e.value)) < 200  # the error never echoes the value


def test_a_round_configuration_with_an_oversized_address_is_refused() -> None:
    config = pb.RoundConfig(round=1, fogs=[_node("fog-1", "fog", address="f" * 300)])
    with pytest.raises(InvalidInput, match="address"):
        serde.config_from_proto(config)
    config = pb.RoundConfig(round=1, quarantined=["q" * 100])
    with pytest.raises(InvalidInput):
        serde.config_from_proto(config)


def test_reasons_and_ids_in_votes_and_bucket_results_are_bounded() -> None:
    with pytest.raises(InvalidInput, match="vote reason"):
        serde.vote_from_proto(validator_pb2.VoteResponse(validator_id="validator-1", reason="r" * 501))
    with pytest.raises(InvalidInput, match="validator id"):
        serde.vote_from_proto(validator_pb2.VoteResponse(validator_id="v" * 65))
    result = pb.BucketResult(bucket_id="b0", fog_id="fog-1", abandoned=True, reason="r" * 501)
    with pytest.raises(InvalidInput, match="bucket reason"):
        serde.bucket_result_from_proto(result, expected_length=None)
    result = pb.BucketResult(bucket_id="b0", fog_id="fog-1", abandoned=True, members=["m" * 65])
    with pytest.raises(InvalidInput):
        serde.bucket_result_from_proto(result, expected_length=None)


# ------------------------------------------------------------------------------------------ registration
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "a" * 256),
        ("metrics_address", "m" * (10 * 1024 * 1024)),
        ("specialty", "s" * 65),
    ],
)
def test_oversized_registration_is_refused_and_never_reaches_a_round_configuration(
    authority: Authority, field: str, value: str
) -> None:
    for i in range(3):
        _register(authority, _node(f"facility-0{i + 1}", "facility", specialty="clinic"))
    _register(authority, _node("fog-1", "fog"))
    _register(authority, _node("validator-1", "validator"))
    before = authority.registry.get("facility-01")
    again = _node("facility-01", "facility", specialty="clinic")
    again.sign_public_key = before.sign_public_key if before else b""
    setattr(again, field, value)
    with pytest.raises(InvalidInput):
        _register(authority, again)
    assert authority.registry.get("facility-01") == before
    config = serde.config_to_proto(authority.make_config(1, 0, b"\x00" * 32))
    assert len(config.SerializeToString()) < 8 * 1024
    for n in [*config.facilities, *config.fogs, *config.committee]:
        assert len(n.address) <= bounds.MAX_ADDRESS and len(n.metrics_address) <= bounds.MAX_ADDRESS


def test_a_huge_unknown_specialty_is_not_echoed(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 4: a 50 MB specialty was written into the error and the log."""
    caplog.set_level(logging.DEBUG)
    node = _node("facility-01", "facility", specialty="z" * BIG)
    with pytest.raises(InvalidInput) as e:
        _register(authority, node)
    assert len(str(e.value)) < 300
    assert sum(len(r.getMessage()) for r in caplog.records) < 10_000
    # ... and an unknown but short one is named, cut to a readable length
    node = _node("facility-01", "facility", specialty="cardio" * 10)
    with pytest.raises(InvalidInput, match="unknown specialty 'cardio"):
        _register(authority, node)


def test_release_reason_and_id_are_bounded(authority: Authority) -> None:
    def release(node_id: str, reason: str) -> None:
        req = authority_pb2.ReleaseFacilityRequest(node_id=node_id, reason=reason)
        asyncio.run(authority.ReleaseFacility(req, None))  # type: ignore[arg-type]

    with pytest.raises(InvalidInput, match="at most 500"):
        release("facility-01", "r" * (bounds.MAX_REASON + 1))
    with pytest.raises(InvalidInput) as e:
        release("f" * BIG, "checked")
    assert len(str(e.value)) < 200


def test_round_report_lists_are_bounded(authority: Authority) -> None:
    authority.registry.record_config(1, 0, b"h" * 32, b"\x00" * 32, {"b0": ["facility-01"]})
    R = authority_pb2.RoundReport
    for report, refusal in [
        (R(absent=["a" * 100]), "an entry of the absent members is 100 characters long"),
        (R(refused=["f"] * (bounds.MAX_LIST + 1)), "the refused members lists more than"),
        (R(flags={"b0": "x" * 65}), "an entry of the flag kinds"),
        (R(votes=[authority_pb2.CommitteeVote(validator="")]), "an entry of the committee is missing"),
        (R(votes=[authority_pb2.CommitteeVote(validator="v1")] * 2), "a committee member twice"),
    ]:
        req = authority_pb2.ReportRoundRequest(round=1, attempt=0, report=report)
        with pytest.raises(InvalidInput, match=refusal):
            asyncio.run(authority.ReportRound(req, None))  # type: ignore[arg-type]
    assert authority.attendance.to_dict()["missed"] == {}  # nothing was counted


def test_round_numbers_beyond_what_is_stored_are_refused(authority: Authority) -> None:
    """Found by the fuzz suite: round 2**63 reached SQLite and failed with INTERNAL."""
    head = b"\x00" * 32
    for round_, attempt in [(2**63, 0), (2**46, 0), (1, 2**32 - 1)]:
        req = authority_pb2.GetRoundConfigRequest(round=round_, attempt=attempt, ledger_head=head)
        with pytest.raises(InvalidInput, match="out of range"):
            asyncio.run(authority.GetRoundConfig(req, None))  # type: ignore[arg-type]
        report = authority_pb2.ReportRoundRequest(round=round_, attempt=attempt)
        with pytest.raises(InvalidInput, match="out of range"):
            asyncio.run(authority.ReportRound(report, None))  # type: ignore[arg-type]


def test_what_hfl_sends_itself_stays_within_the_bounds() -> None:
    """A long fog reason is shortened when sent, so the leader does not refuse the whole bucket."""
    import numpy as np

    from hfl.domain import BucketResult

    long = "secure aggregation failed: " + "member-x, " * 200
    sent = serde.bucket_result_to_proto(
        BucketResult("b0", "fog-1", np.zeros(0), 0, (), (), abandoned=True, reason=long)
    )
    back = serde.bucket_result_from_proto(sent, expected_length=None)
    assert len(back.reason) <= bounds.MAX_REASON and back.reason.startswith("secure aggregation failed")
    assert bounds.shorten("short") == "short"
