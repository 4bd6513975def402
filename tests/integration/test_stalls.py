"""A facility that accepts every round and then never sends its masked input (HFL_BYZANTINE=stall), on a
live federation with secure aggregation: rounds still commit, the fog goes on without it after the
straggler window, and after HFL_ABSENT_ROUNDS such rounds the authority leaves it out."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.rpc.tls import AUTHORITY, sync_channel
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration
STALLER = "facility-04"


def test_a_stalling_facility_is_left_out_and_rounds_go_on(tmp_path: Path) -> None:
    fed, procs = start_federation(
        tmp_path,
        facilities=4,
        fogs=1,
        validators=1,
        rounds=5,
        bucket_size=3,
        min_facilities=3,
        # a round limit of two minutes: without the straggler window each round would wait for it
        extra_env={"HFL_ROUND_TIMEOUT": "120"},
        facility_env=lambda i: {"HFL_BYZANTINE": "stall"} if i == 3 else {},
    )
    try:
        status = wait_for_round(procs["leader"].info["address"], 5, limit_s=200)
        assert status.committed_round >= 5
        with sync_channel(procs["authority"].info["address"], fed.operator(), peer=AUTHORITY) as ch:
            nodes = authority_pb2_grpc.AuthorityServiceStub(ch).ListNodes(
                authority_pb2.ListNodesRequest(), timeout=10
            )
        assert list(nodes.inactive) == [STALLER]  # left out after 3 stalls; no honest one is
        assert not nodes.quarantined
        fog_log = (tmp_path / "logs" / "fog-1.log").read_text()
        assert f"{STALLER} did not answer stage 'masked input'" in fog_log
        authority_log = (tmp_path / "logs" / "authority.log").read_text()
        assert f"facility {STALLER} missed 3 rounds in a row" in authority_log
    finally:
        fed.stop_all()
