"""A real federation of separate processes on loopback: rounds commit, the ledger verifies, bad updates
are refused with a clear status, and a killed leader resumes where the ledger ends."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hfl.demo import Federation, Proc
from hfl.learning.data import SYNTHETIC_FEATURE_NAMES
from hfl.ledger import LedgerStore
from hfl.proto.v1 import common_pb2, fog_pb2, fog_pb2_grpc
from hfl.robust.bound import RECORD_KEY, bound_for
from hfl.round.audit import verify_ledger
from hfl.rpc import serde
from hfl.rpc.tls import sync_channel
from tests.integration.helpers import client_tls, start_federation, start_leader, wait_for_round

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    out = tmp_path_factory.mktemp("fed")
    fed, procs = start_federation(out, facilities=4, fogs=2, rounds=2)
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()


def test_rounds_commit_and_ledger_verifies(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    _fed, procs, out = federation
    status = wait_for_round(procs["leader"].info["address"], 2)
    assert status.committed_round == 2
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        assert verify_ledger(store) == 3  # genesis + 2 rounds
        block = store.block(2)
        assert len(block.votes) >= block.header.quorum == 3
        assert sum(block.header.bucket_counts) >= 3
        # the adaptive norm bound (default): round 1 has no history and uses C = 3; round 2's bound is the
        # one block 1's recorded history gives, and the committee accepted it
        first = store.block(1).header
        assert first.rule_params["clip_update"] == 3.0
        assert len(first.extra[RECORD_KEY]["medians"]) == 1
        assert block.header.rule_params["clip_update"] == bound_for(first.extra, 3.0) <= 3.0
        assert block.header.extra[RECORD_KEY]["ceiling"] == 3.0


def _submit(address: str, out: Path, **fields: object) -> grpc.RpcError:
    with sync_channel(address, client_tls(out, "facility", str(fields["node_id"]))) as ch:
        stub = fog_pb2_grpc.FogServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitUpdate(fog_pb2.SubmitUpdateRequest(**fields), timeout=10)  # type: ignore[arg-type]
    return info.value


def test_fog_refuses_bad_updates(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    _fed, procs, out = federation
    wait_for_round(procs["leader"].info["address"], 2)
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        fog_id = store.block(2).header.extra["fogs"][0]  # a fog that has run a round
    fog = procs[fog_id].info["address"]
    dim = len(SYNTHETIC_FEATURE_NAMES) + 1  # logistic regression on the synthetic features + bias
    nan = serde.vector_to_proto(np.full(dim, np.nan))
    err = _submit(fog, out, round=1, bucket_id="b0", node_id="facility-01", update=nan)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in err.details()
    short = serde.vector_to_proto(np.zeros(dim - 1))
    err = _submit(fog, out, round=1, bucket_id="b0", node_id="facility-01", update=short)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "values" in err.details()
    lying = common_pb2.Vector(dtype=common_pb2.D_TYPE_FLOAT64, length=dim, data=b"\x00" * 8)
    err = _submit(fog, out, round=1, bucket_id="b0", node_id="facility-01", update=lying)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    stale = serde.vector_to_proto(np.zeros(dim))
    err = _submit(fog, out, round=1, bucket_id="b0", node_id="facility-01", update=stale)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "round" in err.details()


def test_leader_restart_resumes(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    fed, procs, out = federation
    leader = procs["leader"]
    wait_for_round(leader.info["address"], 2)
    db = out / "state" / "leader" / "ledger.db"
    with LedgerStore(db) as store:
        before = {b.header.round: b.hash for b in store.blocks()}
    leader.popen.send_signal(signal.SIGKILL)
    leader.popen.wait()
    new_leader = start_leader(fed, rounds=4)
    procs["leader"] = new_leader
    status = wait_for_round(new_leader.info["address"], 4)
    assert status.committed_round == 4
    with LedgerStore(db) as store:
        assert verify_ledger(store) == 5
        after = {b.header.round: b.hash for b in store.blocks()}
    assert {r: after[r] for r in before} == before  # nothing committed was rewritten
    log = new_leader.log_file.read_text()
    assert "resuming after round 2" in log
    assert json.loads(new_leader.ready_file.read_text())["role"] == "leader"
