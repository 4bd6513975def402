"""With mTLS, a facility takes StartRound and the secure-aggregation calls only from its bucket's own fog:
another fog's certificate is PERMISSION_DENIED (NotAllowed), even with a valid signed round configuration."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hfl.crypto.signing import SigningKey
from hfl.crypto.x509 import Identity
from hfl.domain import Bucket, RoundConfig
from hfl.errors import InvalidInput, NotAllowed
from hfl.proto.v1 import facility_pb2
from hfl.rpc import authz, serde
from hfl.rpc.settings import Settings
from services.facility.service import Facility


def _facility(tmp_path: Path, secagg: bool = True) -> tuple[Facility, RoundConfig]:
    key = SigningKey.generate()
    settings = Settings(role="facility", state_dir=tmp_path, secagg=secagg)
    fac = Facility(settings, "f1", None)  # type: ignore[arg-type]
    fac.authority_key = key.public_bytes
    config = RoundConfig(
        round=1,
        attempt=0,
        seed=b"s" * 32,
        ledger_head=b"h" * 32,
        epoch=0,
        buckets=(Bucket("b0", "fog-1", ("f1", "f2", "f3"), 2),),
        committee=(),
        quorum=1,
        facilities=(),
        fogs=(),
    ).sign(key)
    return fac, config


def _as(node_id: str, coro: Any) -> Any:
    async def run() -> Any:
        authz._CALLER.set(Identity("fog", node_id, 1, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))
        return await coro

    return asyncio.run(run())


def test_start_round_only_from_the_buckets_fog(tmp_path: Path) -> None:
    fac, config = _facility(tmp_path, secagg=False)
    request = facility_pb2.StartRoundRequest(config=serde.config_to_proto(config), bucket_id="b0")
    with pytest.raises(NotAllowed, match="must come from fog-1, not from fog-2"):
        _as("fog-2", fac.StartRound(request, None))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="model kind"):  # the right fog passes the check (no model sent)
        _as("fog-1", fac.StartRound(request, None))  # type: ignore[arg-type]


def test_by_default_a_facility_never_hands_its_own_numbers_to_a_fog(tmp_path: Path) -> None:
    """The round's plan is not signed by the authority: a fog could ask for a plain round, or call
    EvaluateModel, to see one facility's update or test results. With HFL_SECAGG=true (the default)
    both are refused, even from the bucket's own fog."""
    fac, config = _facility(tmp_path)
    request = facility_pb2.StartRoundRequest(config=serde.config_to_proto(config), bucket_id="b0")
    with pytest.raises(NotAllowed, match="sends its model update only inside masked group sums"):
        _as("fog-1", fac.StartRound(request, None))  # type: ignore[arg-type]
    with pytest.raises(NotAllowed, match="sends its test results only inside masked group sums"):
        _as("fog-1", fac.EvaluateModel(facility_pb2.EvaluateModelRequest(), None))  # type: ignore[arg-type]
    plain, _ = _facility(tmp_path / "plain", secagg=False)
    with pytest.raises(InvalidInput, match="model kind"):  # allowed: fails only on the empty model
        _as("fog-1", plain.EvaluateModel(facility_pb2.EvaluateModelRequest(), None))  # type: ignore[arg-type]


def test_secure_aggregation_only_from_the_buckets_fog(tmp_path: Path) -> None:
    fac, config = _facility(tmp_path)
    request = facility_pb2.SecAggAdvertiseRequest(config=serde.config_to_proto(config), bucket_id="b0")
    with pytest.raises(NotAllowed, match="must come from fog-1"):
        _as("fog-2", fac.SecAggAdvertise(request, None))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="model kind"):
        _as("fog-1", fac.SecAggAdvertise(request, None))  # type: ignore[arg-type]
    # a later stage of a running session: its fog is remembered
    fac.secure._sessions[(1, 0, "b0")] = SimpleNamespace(  # type: ignore[assignment]
        key=(1, 0, "b0"), fog_id="fog-1"
    )
    session = facility_pb2.SecAggSession(round=1, attempt=0, bucket_id="b0")
    with pytest.raises(NotAllowed, match="must come from fog-1"):
        _as("fog-2", fac.SecAggShareKeys(facility_pb2.SecAggShareKeysRequest(session=session), None))  # type: ignore[arg-type]
