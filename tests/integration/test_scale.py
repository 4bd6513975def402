"""Several facilities in one OS process (`hfl serve facilities`): rounds commit, and every hosted facility
is still its own node (own key, state folder, fog connection, registration). Plus a smoke test of
`hfl bench federation --json`. Budget: about 40-60 s on 2 shared cores."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.demo import Federation, Proc
from hfl.health import metric_values
from hfl.ledger import LedgerStore
from hfl.proto.v1 import authority_pb2, authority_pb2_grpc
from hfl.round.audit import verify_ledger
from hfl.rpc.tls import sync_channel
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration

N = 6


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    out = tmp_path_factory.mktemp("hosted")
    fed, procs = start_federation(
        out, facilities=N, fogs=1, validators=1, rounds=2, n_patients=200, per_process=3
    )  # 2 processes of 3 facilities
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()


def test_hosted_facilities_run_rounds(hosted: tuple[Federation, dict[str, Proc], Path]) -> None:
    _fed, procs, out = hosted
    facilities = [p for p in procs.values() if p.role == "facility"]
    assert len(facilities) == N
    assert len({p.popen.pid for p in facilities}) == 2  # really shared processes
    status = wait_for_round(procs["leader"].info["address"], 2)
    assert status.committed_round == 2
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        assert verify_ledger(store) == 3
        members = {m for ms in store.block(2).header.extra["members"] for m in ms}
    assert members == {p.node_id for p in facilities}  # every hosted facility took part


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(metric_values(text, name))


def test_hosted_facilities_keep_their_own_identity(hosted: tuple[Federation, dict[str, Proc], Path]) -> None:
    fed, procs, out = hosted
    facilities = [p for p in procs.values() if p.role == "facility"]
    keys = {p.node_id: (out / "state" / p.node_id / "identity.key").read_bytes() for p in facilities}
    assert len(set(keys.values())) == N  # one identity key per facility, in its own state folder
    assert {p.info["address"] for p in facilities} == {""}  # no port: they dial out
    with sync_channel(procs["authority"].info["address"], fed.operator()) as ch:
        stub = authority_pb2_grpc.AuthorityServiceStub(ch)
        nodes = stub.ListNodes(authority_pb2.ListNodesRequest(), timeout=10)
    registered = {n.node_id: n for n in nodes.nodes if n.role == "facility"}
    assert set(registered) == set(keys)
    assert len({bytes(n.sign_public_key) for n in registered.values()}) == N
    for fog in (p for p in procs.values() if p.role == "fog"):  # one connection of its own per facility
        assert _metric(int(fog.info["metrics_port"]), "hfl_fog_connected_facilities") == N


def test_host_refuses_a_bad_facilities_file(tmp_path: Path) -> None:
    spec = tmp_path / "f.json"
    spec.write_text(
        json.dumps(
            {
                "facilities": [
                    {"HFL_NODE_ID": "a", "HFL_STATE_DIR": str(tmp_path / "s")},
                    {"HFL_NODE_ID": "b", "HFL_STATE_DIR": str(tmp_path / "s")},
                ]
            }
        )
    )
    env = {"HFL_FACILITIES_FILE": str(spec), "HFL_LOG_LEVEL": "WARNING", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "hfl.cli", "serve", "facilities"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "share a state directory" in done.stderr


def test_bench_federation_json_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfl.cli",
            "bench",
            "federation",
            "--facilities",
            "8",
            "--dim",
            "1000",
            "--rounds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    for key in ("round_s", "leader_bytes_in", "bytes_per_facility", "peak_rss_mb", "phases_s"):
        assert key in result
    assert result["facilities"] == 8 and result["dim"] == 1000 and result["rounds_measured"] == 1
    assert result["tls"] is True  # mutual TLS by default, as in a federation
    assert result["leader_bytes_in"] > 1000 * 4  # at least one bucket sum came back
    assert result["peak_rss_mb"]["leader"] > 0
