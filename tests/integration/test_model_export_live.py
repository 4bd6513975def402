"""`hfl model export --leader`: the whole chain is fetched from a running leader over mutual TLS, verified
here exactly as a run folder's ledger is, and gives the same model; only the operator may fetch it, and
a chain that does not verify exports nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hfl.cli import main
from hfl.demo import Federation, Proc
from hfl.learning.export import from_npz
from hfl.proto.v1 import leader_pb2, leader_pb2_grpc
from hfl.rpc.tls import LEADER, NodeTls, sync_channel
from tests.integration.helpers import client_tls, start_federation, wait_for_round

pytestmark = pytest.mark.integration
Live = tuple[Federation, dict[str, Proc], Path]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    out = tmp_path_factory.mktemp("live-export")
    fed, procs = start_federation(out, facilities=3, fogs=1, validators=4, rounds=2)
    try:
        wait_for_round(procs["leader"].info["address"], 2)
        yield fed, procs, out
    finally:
        fed.stop_all()


def _leader(live: Live) -> str:
    return str(live[1]["leader"].info["address"])


def _export(live: Live, out: Path, *extra: str) -> int:
    return main(["model", "export", str(live[2]), "--dataset", "synthetic", "--out", str(out), *extra])


def test_the_live_leader_gives_the_same_model_as_the_run_folder(live: Live, tmp_path: Path) -> None:
    for fmt in ("npz", "onnx"):
        assert _export(live, tmp_path / f"folder.{fmt}", "--format", fmt) == 0
        assert _export(live, tmp_path / f"live.{fmt}", "--format", fmt, "--leader", _leader(live)) == 0
    # ONNX files are deterministic: byte for byte the same
    assert (tmp_path / "live.onnx").read_bytes() == (tmp_path / "folder.onnx").read_bytes()
    # npz (zip) files carry a time stamp: every array in them is the same
    with np.load(tmp_path / "live.npz") as a, np.load(tmp_path / "folder.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            assert a[name].tobytes() == b[name].tobytes(), name
    live_model = from_npz((tmp_path / "live.npz").read_bytes())
    assert live_model.round == 2
    card = json.loads((tmp_path / "live.card.json").read_text())
    assert card == json.loads((tmp_path / "folder.card.json").read_text())
    assert card["provenance"]["block_hash"] == live_model.block_hash.hex()
    # an earlier round, from the leader too
    assert _export(live, tmp_path / "r1.npz", "--round", "1", "--leader", _leader(live)) == 0
    assert from_npz((tmp_path / "r1.npz").read_bytes()).round == 1


def _cert_dir(tls: NodeTls, folder: Path) -> Path:
    folder.mkdir()
    for name, pem in (("key.pem", tls.key_pem), ("cert.pem", tls.cert_pem), ("ca.pem", tls.ca_pem)):
        (folder / name).write_bytes(pem)
    return folder


@pytest.mark.parametrize(("role", "node_id"), [("facility", "facility-01"), ("validator", "validator-1")])
def test_only_the_operator_may_fetch_the_ledger(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str, node_id: str
) -> None:
    tls = client_tls(live[2], role, node_id)
    with sync_channel(_leader(live), tls, peer=LEADER) as ch:
        stream = leader_pb2_grpc.LeaderServiceStub(ch).GetLedger(leader_pb2.GetLedgerRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"a {role} may not call GetLedger" in (info.value.details() or "")

    capsys.readouterr()
    certs = _cert_dir(tls, tmp_path / "certs")
    rc = _export(live, tmp_path / "m.npz", "--leader", _leader(live), "--cert-dir", str(certs))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"did not send its ledger: a {role} may not call GetLedger" in err
    assert not (tmp_path / "m.npz").exists()


def test_a_chain_that_does_not_verify_exports_nothing(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = live[2] / "state" / "leader" / "ledger.db"
    with sqlite3.connect(db) as conn:
        (original,) = conn.execute("SELECT header FROM blocks WHERE round = 1").fetchone()
    header = json.loads(original)
    header["rule"] = "mean" if header["rule"] != "mean" else "median"
    try:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE blocks SET header = ? WHERE round = 1", (json.dumps(header, sort_keys=True),)
            )
        capsys.readouterr()
        assert _export(live, tmp_path / "m.npz", "--leader", _leader(live)) == 2
        err = capsys.readouterr().err
        assert "the ledger does not verify, so no model is exported from it: block 1:" in err
        assert not (tmp_path / "m.npz").exists()
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE blocks SET header = ? WHERE round = 1", (original,))
    assert _export(live, tmp_path / "m.npz", "--leader", _leader(live)) == 0  # restored: it verifies again
