"""Secure aggregation in a real federation of separate processes on loopback.

8 facilities in buckets of 4 (t = 3, so one dropout per bucket is recovered), 2 fogs, 1 validator.
fog-2 is a faulty fog that substitutes one member's key advertisement (HFL_BYZANTINE=swap_keys): every
bucket it runs must abort with a clear error in the facilities' logs, never a wrong sum, while fog-1's
bucket commits. Budget: about 60-90 s on 2 shared cores (one federation start-up for the whole module).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hfl.demo import Federation, Proc
from hfl.domain import SPECIALTIES
from hfl.learning.data import load_facility_data
from hfl.learning.models import make_model
from hfl.learning.train import DEFAULT_CLIP_UPDATE, DEFAULT_TRAIN, TrainConfig, clip_update, train_local
from hfl.ledger import LedgerStore
from hfl.round.audit import verify_ledger
from hfl.secagg import QuantConfig
from tests.integration.helpers import start_federation, wait_for_round

pytestmark = pytest.mark.integration

N_FAC = 8
SEED = 1
ROUNDS = 12


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    out = tmp_path_factory.mktemp("secagg")
    fed, procs = start_federation(
        out,
        facilities=N_FAC,
        fogs=2,
        validators=1,
        rounds=ROUNDS,
        seed=SEED,
        bucket_size=4,
        extra_env={"HFL_SECAGG": "true"},
        # A killed member stays scheduled (no attendance limit), so it keeps landing in fog-1's buckets
        # and their sums are recovered without it; rounds take well under a second here.
        # Both fogs take facilities (one bucket each; by default a fog needs 4 buckets' worth).
        authority_env={"HFL_ABSENT_ROUNDS": "0", "HFL_FOG_MIN_BUCKETS": "1"},
        fog_env=lambda i: {"HFL_BYZANTINE": "swap_keys"} if i == 1 else {},  # fog-2 is faulty
        leader_env={"HFL_SECAGG": "true", "HFL_ROUND_TIMEOUT": "15"},
    )
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()


def _log(out: Path, node: str) -> str:
    return (out / "logs" / f"{node}.log").read_text(errors="replace")


def _expected_delta(node_id: str, index: int, round_: int, params: np.ndarray) -> np.ndarray:
    """The clipped update ``node_id`` computes in ``round_`` (same data, seed and rng as the service)."""
    data = load_facility_data(
        "synthetic",
        specialty=SPECIALTIES[index % 4],
        shard=(index, N_FAC),
        seed=SEED,
        n_patients=300,
        stream=node_id,
    )
    model = make_model("logreg", data.train.d, 16)
    digest = hashlib.sha256(f"{SEED}/{node_id}/{round_}/0".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    cfg = TrainConfig(lr=DEFAULT_TRAIN.lr, epochs=DEFAULT_TRAIN.epochs, batch_size=DEFAULT_TRAIN.batch_size)
    return clip_update(train_local(model, params, data.train, cfg, rng) - params, DEFAULT_CLIP_UPDATE)


def test_rounds_commit_with_masked_updates(federation: tuple[Federation, dict[str, Proc], Path]) -> None:
    _fed, procs, out = federation
    wait_for_round(procs["leader"].info["address"], 2, limit_s=120)
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        assert verify_ledger(store) >= 3
        block = store.block(1)
        # only fog-1's bucket is usable: fog-2 swaps keys, so its bucket aborts
        assert block.header.extra["fogs"] == ["fog-1"]
        assert list(block.header.bucket_counts) == [4]
    assert "secure aggregation of 4 members" in _log(out, "fog-1")


def test_unmasked_sum_equals_the_members_updates(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    """The leader gets the sum of the members' quantised updates: equal to the float sum of their clipped
    updates up to the quantisation step (1/scale per member and coordinate), recomputed here independently."""
    _fed, procs, out = federation
    wait_for_round(procs["leader"].info["address"], 1, limit_s=120)
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        genesis, block = store.block(0), store.block(1)
        params = store.model(genesis.header.model_hash)
        sums = store.bucket_sums(1)
    members = block.header.extra["members"][0]
    expected = sum(_expected_delta(m, int(m.split("-")[1]) - 1, 1, params) for m in members)
    step = 1.0 / QuantConfig(clip=DEFAULT_CLIP_UPDATE, max_members=4).scale
    assert sums.shape == (1, params.size)
    assert np.max(np.abs(sums[0] - expected)) <= len(members) * step


def test_fog_that_swaps_keys_makes_the_bucket_abort(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    _fed, procs, out = federation
    wait_for_round(procs["leader"].info["address"], 2, limit_s=120)
    assert "FAULTY FOG (experiment): substituting the masking key" in _log(out, "fog-2")
    assert "bucket abandoned for this round" in _log(out, "fog-2")
    aborted = [
        f"facility-{i + 1:02d}"
        for i in range(N_FAC)
        if re.search(
            r"secure aggregation ABORTED at stage 'share keys'.*(not signed by its certified "
            r"identity key|was altered)",
            _log(out, f"facility-{i + 1:02d}"),
        )
    ]
    assert len(aborted) >= 4  # every member of fog-2's bucket, in every round
    for node in aborted:  # a clear line, never a crash
        assert "Traceback" not in _log(out, node)


def test_member_killed_mid_protocol_is_recovered(
    federation: tuple[Federation, dict[str, Proc], Path],
) -> None:
    _fed, procs, out = federation
    leader = procs["leader"].info["address"]
    status = wait_for_round(leader, 2, limit_s=120)
    # Wait for fog-1 to start a bucket, then SIGKILL one of its members while the protocol runs.
    seen = len(_log(out, "fog-1"))
    victim, killed_round = "", 0
    deadline = time.monotonic() + 60
    while not victim and time.monotonic() < deadline:
        m = re.search(
            r"round (\d+) bucket \S+: secure aggregation of 4 members \(([^)]*)\)", _log(out, "fog-1")[seen:]
        )
        if m:
            victim, killed_round = m.group(2).split(", ")[0], int(m.group(1))
        else:
            time.sleep(0.01)
    assert victim, "fog-1 started no bucket"
    os.kill(procs[victim].popen.pid, signal.SIGKILL)
    # Later rounds: whenever the dead member is in fog-1's bucket, the other 3 are summed exactly.
    deadline = time.monotonic() + 90
    recovered = None
    while recovered is None and time.monotonic() < deadline:
        recovered = re.search(
            rf"exact sum of 3 of 4 members recovered \(dropped: {victim}", _log(out, "fog-1")
        )
        time.sleep(0.2)
    assert recovered, f"fog-1 never recovered a bucket without {victim}"
    dropped_at = re.findall(rf"{victim} dropped out at stage '([^']+)'", _log(out, "fog-1"))
    assert dropped_at
    # The recovered sum is committed once the validators accept its round (a refused attempt is trained
    # again), so wait for a committed block summing 3 members rather than for a fixed round number.
    target = max(status.committed_round, killed_round) + 1
    counts: list[list[int]] = []
    deadline = time.monotonic() + 90
    while [3] not in counts and time.monotonic() < deadline:
        final = wait_for_round(leader, target, limit_s=60)
        with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
            verify_ledger(store)
            counts = [list(store.block(r).header.bucket_counts) for r in range(1, final.committed_round + 1)]
        target = final.committed_round + 1
    assert [3] in counts, counts
    print(f"killed {victim} in round {killed_round}; fog-1 saw it drop at stages {sorted(set(dropped_at))}")
