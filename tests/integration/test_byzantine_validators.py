"""One faulty validator of four, in each mode (rejects everything, accepts everything, never answers):
every round still commits with a valid quorum certificate, and the faulty validator loses weight."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfl.ledger import LedgerStore, verify_ledger
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["reject_all", "accept_all", "silent"])
def test_one_faulty_validator_cannot_stop_the_federation(mode: str, tmp_path: Path) -> None:
    fed, procs = start_federation(
        tmp_path,
        facilities=4,
        rounds=2,
        validator_env=lambda i: {"HFL_BYZANTINE": mode} if i == 3 else {},
    )
    try:
        status = wait_for_round(procs["leader"].info["address"], 2)
        assert status.committed_round == 2
        with LedgerStore(tmp_path / "state" / "leader" / "ledger.db") as store:
            assert verify_ledger(store) == 3
            for r in (1, 2):
                block = store.block(r)
                voters = {v.validator_id for v in block.votes}
                assert len(voters) >= block.header.quorum == 3
                if mode in ("reject_all", "silent"):
                    assert "validator-4" not in voters
        if mode == "silent":
            assert "did not vote" in procs["leader"].log_file.read_text()
    finally:
        fed.stop_all()
