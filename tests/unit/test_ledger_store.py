"""SQLite ledger store and full-ledger verification: round trips, refusals, tampering, crash recovery."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hfl.crypto.signing import SigningKey
from hfl.hashing import hash_vector, sha256
from hfl.ledger import Block, BlockHeader, BlockRecord, CommitteeMember, LedgerError, LedgerStore, Vote
from hfl.robust.bound import RECORD_KEY, bound_for, round_record
from hfl.round.audit import verify_ledger
from hfl.round.propose import next_header

D = 8
B = 4
KEYS = [SigningKey.from_private_bytes(bytes([3, i]) + bytes(30)) for i in range(4)]
COMMITTEE = tuple(CommitteeMember(f"validator-{i}", k.public_bytes) for i, k in enumerate(KEYS))
PARAMS = {"f": 0, "clip_update": 5.0}


def sign(header: BlockHeader, n: int = 3) -> tuple[Vote, ...]:
    return tuple(
        Vote.create(KEYS[i], header.round, header.hash(), f"validator-{i}", True, "checked", 0.5)
        for i in range(n)
    )


def proposal(store: LedgerStore, rng: np.random.Generator) -> tuple[BlockHeader, np.ndarray, np.ndarray]:
    """An honest next header with its new model and bucket sums (bucket 0 over the norm bound)."""
    prev = store.head()
    assert prev is not None
    prev_model = store.model(prev.header.model_hash)
    counts = np.array([3, 2, 3, 2])
    sums = rng.normal(size=(B, D))
    sums[0] *= 100.0  # ‖sum‖ far above count·C: flagged by the norm bound
    header, model = next_header(
        prev,
        prev_model,
        sums,
        counts,
        rule="mean",
        rule_params=PARAMS,
        committee=COMMITTEE,
        config_hash=sha256(b"round-config", str(prev.round + 1).encode()),
        extra=round_extra(prev.round + 1),
    )
    return header, model, sums


def round_extra(round_: int) -> dict[str, object]:
    """What a leader records with each block (the shape the wire carries, hfl.v1.RoundExtra)."""
    return {
        "buckets": [f"b{i}" for i in range(B)],
        "fogs": ["fog-1", "fog-2", "fog-1", "fog-2"][:B],
        "members": [[f"facility-{round_}-{i}-{j}" for j in range(3)] for i in range(B)],
        "committee_draw": {},
    }


GENESIS_EXTRA = {"model": {"kind": "logreg", "n_features": D - 1, "hidden": 0}, "seed": 7}


def grow(store: LedgerStore, rounds: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        header, model, sums = proposal(store, rng)
        store.append(Block(header, sign(header)), model, sums)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def chain(path: Path) -> Path:
    """A closed ledger file with genesis + 5 blocks."""
    with LedgerStore(path) as store:
        store.init_genesis(np.linspace(-1, 1, D), GENESIS_EXTRA)
        grow(store, 5)
    return path


def snapshot(path: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(path)
    try:
        blocks = conn.execute("SELECT round, hash, header, votes FROM blocks ORDER BY round").fetchall()
        blobs = conn.execute("SELECT hash, kind, data FROM blobs ORDER BY hash").fetchall()
    finally:
        conn.close()
    return tuple(blocks), tuple(blobs)


def tamper(path: Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(sql, args)
        assert cur.rowcount == 1, "the tamper statement should change exactly one row"
        conn.commit()
    finally:
        conn.close()


def flip(data: bytes, i: int = 3) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


# ------------------------------------------------------------------------------------------ round trips


def test_genesis_and_chain_round_trip(chain: Path) -> None:
    with LedgerStore(chain) as store:
        assert len(store) == 6
        blocks = list(store.blocks())
        assert [b.round for b in blocks] == list(range(6))
        head = store.head()
        assert head is not None and head == blocks[-1] == store.block(5)
        np.testing.assert_array_equal(store.model(blocks[0].header.model_hash), np.linspace(-1, 1, D))
        assert blocks[0].header.extra == GENESIS_EXTRA
        for prev, b in itertools.pairwise(blocks):
            assert b.header.prev_hash == prev.hash
            assert b.header.flagged == (0,)
            assert len(b.votes) == 3
            sums = store.bucket_sums(b.round)
            assert sums.shape == (B, D) and sums.dtype == np.float64
            assert [hash_vector(r) for r in sums] == list(b.header.bucket_hashes)
            assert hash_vector(store.model(b.header.model_hash)) == b.header.model_hash
        assert store.bucket_sums(0).shape[0] == 0
        assert verify_ledger(store) == 6


def test_models_are_little_endian_float64_blobs(chain: Path) -> None:
    with LedgerStore(chain) as store:
        head = store.head()
        assert head is not None
        model = store.model(head.header.model_hash)
    conn = sqlite3.connect(chain)
    (data,) = conn.execute("SELECT data FROM blobs WHERE hash = ?", (head.header.model_hash,)).fetchone()
    conn.close()
    assert bytes(data) == model.astype("<f8").tobytes()
    assert len(data) == 8 * D


def test_returned_arrays_are_private_copies(chain: Path) -> None:
    with LedgerStore(chain) as store:
        g = store.block(0).header.model_hash
        m = store.model(g)
        m[:] = 0
        assert np.any(store.model(g) != 0)


def test_reopen_keeps_everything_and_can_continue(chain: Path) -> None:
    with LedgerStore(chain) as store:
        before = list(store.blocks())
        models = [store.model(b.header.model_hash) for b in before]
    with LedgerStore(chain) as store:
        assert list(store.blocks()) == before
        for b, m in zip(before, models, strict=True):
            np.testing.assert_array_equal(store.model(b.header.model_hash), m)
        grow(store, 2, seed=1)
        assert len(store) == 8
    with LedgerStore(chain) as store:
        assert verify_ledger(store) == 8


def test_store_uses_wal_and_full_sync(chain: Path) -> None:
    with LedgerStore(chain) as store:
        conn = store._c()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_closed_store_refuses_use(chain: Path) -> None:
    store = LedgerStore(chain)
    store.close()
    store.close()  # idempotent
    with pytest.raises(LedgerError, match="closed"):
        store.head()
    with pytest.raises(LedgerError, match="closed"):
        len(store)


def test_not_a_database(tmp_path: Path) -> None:
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite at all, just some text" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        LedgerStore(p)


def test_empty_store(path: Path) -> None:
    with LedgerStore(path) as store:
        assert store.head() is None and len(store) == 0
        assert list(store.blocks()) == []
        assert verify_ledger(store) == 0
        with pytest.raises(LedgerError, match="no such block") as e:
            store.block(0)
        assert e.value.round == 0
        with pytest.raises(LedgerError, match="no stored model"):
            store.model(b"\x00" * 32)


# ------------------------------------------------------------------------------------------------ genesis


def test_genesis_is_idempotent(path: Path) -> None:
    model = np.arange(D, dtype=np.float64)
    with LedgerStore(path) as store:
        g1 = store.init_genesis(model, {"seed": 7})
        g2 = store.init_genesis(model.copy(), {"seed": 7})
        assert g1 == g2 and len(store) == 1
    with LedgerStore(path) as store:
        assert store.init_genesis(model, {"seed": 7}) == g1
        assert len(store) == 1


@pytest.mark.parametrize(
    "model, extra",
    [(np.arange(D, dtype=np.float64) + 1e-12, {"seed": 7}), (np.arange(D, dtype=np.float64), {"seed": 8})],
)
def test_different_genesis_is_refused(path: Path, model: np.ndarray, extra: dict[str, Any]) -> None:
    with LedgerStore(path) as store:
        store.init_genesis(np.arange(D, dtype=np.float64), {"seed": 7})
        before = snapshot(path)
        with pytest.raises(LedgerError, match="different genesis") as e:
            store.init_genesis(model, extra)
        assert e.value.round == 0
    assert snapshot(path) == before


def test_genesis_rejects_bad_model(path: Path) -> None:
    with LedgerStore(path) as store:
        with pytest.raises(LedgerError, match="NaN"):
            store.init_genesis(np.array([1.0, np.inf]))
        assert len(store) == 0


# ------------------------------------------------------------------------------------------ append refusals


def _refusals() -> dict[str, Callable[[BlockHeader, np.ndarray, np.ndarray], tuple[Block, Any, Any, str]]]:
    def resign(h: BlockHeader, **changes: Any) -> Block:
        h2 = dataclasses.replace(h, **changes)
        return Block(h2, sign(h2))

    return {
        "wrong round": lambda h, m, s: (resign(h, round=h.round + 1), m, s, "next block must be"),
        "wrong prev": lambda h, m, s: (resign(h, prev_hash=b"\x07" * 32), m, s, "prev_hash"),
        "wrong base": lambda h, m, s: (resign(h, base_model_hash=b"\x07" * 32), m, s, "base_model_hash"),
        "wrong model": lambda h, m, s: (Block(h, sign(h)), m + 1e-9, s, "model does not match"),
        "nan model": lambda h, m, s: (Block(h, sign(h)), np.full_like(m, np.nan), s, "NaN"),
        "2d model": lambda h, m, s: (Block(h, sign(h)), m[None, :], s, "1-D"),
        "wrong sum": lambda h, m, s: (Block(h, sign(h)), m, s + np.eye(B, D) * 1e-9, "bucket sum 0 does"),
        "sum shape": lambda h, m, s: (Block(h, sign(h)), m, s[:3], "shape"),
        "no quorum": lambda h, m, s: (Block(h, sign(h, 2)), m, s, "only 2 validators"),
        "bad vote": lambda h, m, s: (
            Block(h, (*sign(h, 2), dataclasses.replace(sign(h)[2], reason="edited"))),
            m,
            s,
            "invalid signature",
        ),
        "wrong length": lambda h, m, s: _wrong_length(h, m, s),
    }


def _wrong_length(h: BlockHeader, m: np.ndarray, s: np.ndarray) -> tuple[Block, Any, Any, str]:
    m2 = np.append(m, 0.0)
    s2 = np.hstack([s, np.zeros((B, 1))])
    h2 = dataclasses.replace(h, model_hash=hash_vector(m2), bucket_hashes=tuple(hash_vector(r) for r in s2))
    return Block(h2, sign(h2)), m2, s2, "previous model has"


@pytest.mark.parametrize("case", sorted(_refusals()))
def test_append_refusals_leave_the_store_unchanged(chain: Path, case: str) -> None:
    with LedgerStore(chain) as store:
        header, model, sums = proposal(store, np.random.default_rng(42))
        block, m, s, message = _refusals()[case](header, model, sums)
        before = snapshot(chain)
        with pytest.raises(LedgerError, match=message) as e:
            store.append(block, m, s)
        assert e.value.round == block.round
        assert snapshot(chain) == before
        store.append(Block(header, sign(header)), model, sums)  # the honest block still goes in
        assert len(store) == 7


def test_append_refuses_genesis_and_needs_genesis(tmp_path: Path, chain: Path) -> None:
    path = tmp_path / "empty.sqlite"
    with LedgerStore(chain) as store:
        g = store.block(0)
        header, model, sums = proposal(store, np.random.default_rng(1))
        with pytest.raises(LedgerError, match="init_genesis"):
            store.append(g, store.model(g.header.model_hash), np.zeros((0, D)))
    with LedgerStore(path) as empty:
        before = snapshot(path)
        with pytest.raises(LedgerError, match="no genesis"):
            empty.append(Block(header, sign(header)), model, sums)
        assert snapshot(path) == before


def test_append_same_block_twice_is_refused(chain: Path) -> None:
    with LedgerStore(chain) as store:
        header, model, sums = proposal(store, np.random.default_rng(5))
        block = Block(header, sign(header))
        store.append(block, model, sums)
        with pytest.raises(LedgerError, match="next block must be 7"):
            store.append(block, model, sums)
        assert len(store) == 7


def test_concurrent_readers_during_appends(chain: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    with LedgerStore(chain) as store:

        def reader() -> None:
            try:
                while not stop.is_set():
                    head = store.head()
                    assert head is not None
                    store.bucket_sums(head.round)
                    assert len(store) >= head.round + 1
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            grow(store, 5, seed=3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        assert verify_ledger(store) == 11


# ----------------------------------------------------------------------------------------------- verify


def test_verify_reports_progress(chain: Path) -> None:
    seen: list[int] = []
    with LedgerStore(chain) as store:
        assert verify_ledger(store, progress=seen.append) == 6
        assert verify_ledger(store, recompute=False) == 6
    assert seen == [0, 1, 2, 3, 4, 5]


def _row(path: Path, r: int) -> tuple[bytes, str, str]:
    conn = sqlite3.connect(path)
    try:
        h, header, votes = conn.execute(
            "SELECT hash, header, votes FROM blocks WHERE round = ?", (r,)
        ).fetchone()
    finally:
        conn.close()
    return bytes(h), header, votes


def _expect_bad(path: Path, r: int, message: str, *, recompute: bool = True) -> None:
    with LedgerStore(path) as store, pytest.raises(LedgerError, match=message) as e:
        verify_ledger(store, recompute=recompute)
    assert e.value.round == r
    assert str(e.value).startswith(f"block {r}: ")


@pytest.mark.parametrize("r", [0, 3, 5])
def test_tampered_header_byte(chain: Path, r: int) -> None:
    _, header, _ = _row(chain, r)
    pos = header.index('"model_hash":"') + len('"model_hash":"')
    altered = header[:pos] + ("1" if header[pos] != "1" else "2") + header[pos + 1 :]
    tamper(chain, "UPDATE blocks SET header = ? WHERE round = ?", (altered, r))
    _expect_bad(chain, r, "does not match its header", recompute=False)


def test_tampered_header_rehashed_is_caught_by_votes(chain: Path) -> None:
    _, header, _ = _row(chain, 2)
    d = json.loads(header)
    d["rule_params"]["clip_update"] = 50.0
    h = BlockHeader.from_dict(d)
    tamper(
        chain,
        "UPDATE blocks SET header = ?, hash = ? WHERE round = 2",
        (json.dumps(h.to_dict()), h.hash()),
    )
    _expect_bad(chain, 2, "different block", recompute=False)


def _rewrite(path: Path, r: int, **changes: Any) -> None:
    """Replace block r by a variant re-signed by the (colluding) quorum, consistent on its own."""
    _, header, _ = _row(path, r)
    h = dataclasses.replace(BlockHeader.from_dict(json.loads(header)), **changes)
    votes = json.dumps([v.to_dict() for v in sign(h)])
    tamper(path, "UPDATE blocks SET header = ?, hash = ?, votes = ? WHERE round = ?",
           (json.dumps(h.to_dict()), h.hash(), votes, r))  # fmt: skip


def test_rewritten_block_breaks_the_next_link(chain: Path) -> None:
    _rewrite(chain, 2, extra={**round_extra(2), "fogs": ["fog-9"] * B})
    _expect_bad(chain, 3, "prev_hash does not match the hash of block 2", recompute=False)


def test_rewritten_head_is_not_detectable_by_links_alone(chain: Path) -> None:
    # Documented limit: a colluding quorum can re-sign the last block; verify still checks its content.
    _rewrite(chain, 5, extra={**round_extra(5), "buckets": [f"x{i}" for i in range(B)]})
    with LedgerStore(chain) as store:
        assert verify_ledger(store) == 6


def test_wrong_base_model_is_caught(chain: Path) -> None:
    _rewrite(chain, 4, base_model_hash=b"\x09" * 32)
    _expect_bad(chain, 4, "base model is not the model recorded in block 3", recompute=False)


def test_tampered_unparseable_header(chain: Path) -> None:
    _, header, _ = _row(chain, 4)
    tamper(chain, "UPDATE blocks SET header = ? WHERE round = 4", (header[:-3],))
    _expect_bad(chain, 4, "unreadable or altered")


@pytest.mark.parametrize("r", [1, 4])
def test_tampered_vote_signature(chain: Path, r: int) -> None:
    _, _, votes = _row(chain, r)
    v = json.loads(votes)
    v[1]["signature"] = flip(bytes.fromhex(v[1]["signature"]), 10).hex()
    tamper(chain, "UPDATE blocks SET votes = ? WHERE round = ?", (json.dumps(v), r))
    _expect_bad(chain, r, "invalid signature", recompute=False)


def test_tampered_vote_turned_into_reject(chain: Path) -> None:
    _, _, votes = _row(chain, 3)
    v = json.loads(votes)
    v[0]["accept"] = False
    tamper(chain, "UPDATE blocks SET votes = ? WHERE round = 3", (json.dumps(v),))
    _expect_bad(chain, 3, "invalid signature")


def test_removed_vote_breaks_quorum(chain: Path) -> None:
    _, _, votes = _row(chain, 2)
    tamper(chain, "UPDATE blocks SET votes = ? WHERE round = 2", (json.dumps(json.loads(votes)[:2]),))
    _expect_bad(chain, 2, "only 2 validators accepted", recompute=False)


@pytest.mark.parametrize("r", [0, 2, 5])
def test_tampered_model_blob(chain: Path, r: int) -> None:
    with LedgerStore(chain) as store:
        mh = store.block(r).header.model_hash
    tamper(chain, "UPDATE blobs SET data = ? WHERE hash = ?", (flip(store_blob(chain, mh)), mh))
    _expect_bad(chain, r, "model checkpoint is corrupted")
    with LedgerStore(chain) as store:  # header-only audit does not read blobs
        assert verify_ledger(store, recompute=False) == 6


@pytest.mark.parametrize("r, i", [(1, 0), (3, 2), (5, 3)])
def test_tampered_bucket_sum_blob(chain: Path, r: int, i: int) -> None:
    with LedgerStore(chain) as store:
        bh = store.block(r).header.bucket_hashes[i]
    tamper(chain, "UPDATE blobs SET data = ? WHERE hash = ?", (flip(store_blob(chain, bh), 9), bh))
    _expect_bad(chain, r, f"bucket sum {i} is corrupted")
    with LedgerStore(chain) as store, pytest.raises(LedgerError) as e:
        store.bucket_sums(r)
    assert e.value.round == r


def test_deleted_blob(chain: Path) -> None:
    with LedgerStore(chain) as store:
        bh = store.block(2).header.bucket_hashes[1]
    tamper(chain, "DELETE FROM blobs WHERE hash = ?", (bh,))
    _expect_bad(chain, 2, "bucket sum 1 is missing")


def test_deleted_block_in_the_middle(chain: Path) -> None:
    tamper(chain, "DELETE FROM blocks WHERE round = 3")
    _expect_bad(chain, 3, "missing", recompute=False)


def test_deleted_genesis(chain: Path) -> None:
    tamper(chain, "DELETE FROM blocks WHERE round = 0")
    _expect_bad(chain, 0, "missing")


def store_blob(path: Path, h: bytes) -> bytes:
    conn = sqlite3.connect(path)
    try:
        (data,) = conn.execute("SELECT data FROM blobs WHERE hash = ?", (h,)).fetchone()
    finally:
        conn.close()
    return bytes(data)


def _append_dishonest(store: LedgerStore, **header_changes: Any) -> None:
    """A block signed by the quorum whose header disagrees with the recorded inputs."""
    header, model, sums = proposal(store, np.random.default_rng(99))
    if "model" in header_changes:
        model = header_changes.pop("model")
        header_changes["model_hash"] = hash_vector(model)
    header = dataclasses.replace(header, **header_changes)
    store.append(Block(header, sign(header)), model, sums)


def test_recompute_catches_a_wrong_model(chain: Path) -> None:
    with LedgerStore(chain) as store:
        head = store.head()
        assert head is not None
        _append_dishonest(store, model=store.model(head.header.model_hash) + 0.25)
        grow(store, 1)
        assert verify_ledger(store, recompute=False) == 8
        with pytest.raises(LedgerError, match="model hash does not match the recomputed aggregate") as e:
            verify_ledger(store)
        assert e.value.round == 6
        assert str(e.value) == "block 6: the model hash does not match the recomputed aggregate"


def test_recompute_catches_wrong_flags(chain: Path) -> None:
    with LedgerStore(chain) as store:
        _append_dishonest(store, flagged=())
        with pytest.raises(LedgerError, match="flagged buckets") as e:
            verify_ledger(store)
        assert e.value.round == 6


def test_recompute_catches_an_unusable_rule(chain: Path) -> None:
    with LedgerStore(chain) as store:
        _append_dishonest(store, rule="no_such_rule")
        with pytest.raises(LedgerError, match="cannot recompute") as e:
            verify_ledger(store)
        assert e.value.round == 6


def test_rule_specific_params_reach_the_rule(path: Path) -> None:
    with LedgerStore(path) as store:
        store.init_genesis(np.zeros(3))
        prev = store.head()
        assert prev is not None
        sums = np.array([[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0], [50.0, 0, 0], [4.0, 0, 0]])
        header, model = next_header(
            prev,
            np.zeros(3),
            sums,
            [1] * 5,
            rule="multi_krum",
            rule_params={"f": 1, "clip_update": None, "m": 2},
            committee=COMMITTEE,
            config_hash=b"\x05" * 32,
        )
        store.append(Block(header, sign(header)), model, sums)
        assert verify_ledger(store) == 2
        assert 3 in header.flagged


# ------------------------------------------------------------------------------------------ crash (kill -9)

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hfl.crypto.signing import SigningKey
    from hfl.ledger import Block, CommitteeMember, LedgerStore, Vote
    from hfl.round.propose import next_header

    keys = [SigningKey.from_private_bytes(bytes([3, i]) + bytes(30)) for i in range(4)]
    committee = tuple(CommitteeMember(f"validator-{i}", k.public_bytes) for i, k in enumerate(keys))
    rng = np.random.default_rng(123)
    store = LedgerStore(sys.argv[1])
    store.init_genesis(np.zeros(64))
    model = np.zeros(64)
    for _ in range(100000):
        prev = store.head()
        sums = rng.normal(size=(6, 64))
        header, model = next_header(prev, model, sums, [2] * 6, rule="mean", rule_params={},
                                    committee=committee, config_hash=bytes(32))
        votes = tuple(Vote.create(keys[i], header.round, header.hash(), f"validator-{i}", True)
                      for i in range(3))
        store.append(Block(header, votes), model, sums)
        print(header.round, header.hash().hex(), flush=True)
    """
)


def test_kill_9_loses_no_committed_block(path: Path) -> None:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    committed: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            rnd, block_hash = line.split()
            committed[int(rnd)] = block_hash
            if len(committed) >= 25:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(committed) >= 25, "the writer process stopped early"
    with LedgerStore(path) as store:
        assert len(store) >= max(committed) + 1
        for r, h in committed.items():
            assert store.block(r).hash.hex() == h
        assert verify_ledger(store) == len(store)
        head = store.head()
        assert head is not None
        # The ledger keeps working after the crash.
        base = store.model(head.header.model_hash)
        sums = np.ones((2, base.size))
        header, model = next_header(
            head, base, sums, [1, 1], rule="mean", rule_params={}, committee=COMMITTEE, config_hash=bytes(32)
        )
        store.append(Block(header, sign(header)), model, sums)
        assert verify_ledger(store) == head.round + 2


# ------------------------------------------------------------------ copies from records (a live leader)


def _copy(path: Path, change: Callable[[list[BlockRecord]], None] | None = None) -> LedgerStore:
    """A copy of the ledger at ``path`` rebuilt from its records as they would travel (through serde)."""
    from hfl.rpc import serde

    with LedgerStore(path) as store:
        records = [
            serde.ledger_block_from_proto(serde.ledger_block_to_proto(store.record(r)))
            for r in store.rounds()
        ]
    if change is not None:
        change(records)
    return LedgerStore.from_records(records)


def test_a_copy_from_records_verifies_and_holds_the_same_blocks_and_models(chain: Path) -> None:
    with _copy(chain) as copy, LedgerStore(chain) as store:
        assert verify_ledger(copy) == 6
        for r in store.rounds():
            assert copy.block(r) == store.block(r)
            h = store.block(r).header
            np.testing.assert_array_equal(copy.model(h.model_hash), store.model(h.model_hash))
            np.testing.assert_array_equal(copy.bucket_sums(r), store.bucket_sums(r))


@pytest.mark.parametrize(
    ("what", "message", "bad_round"),
    [
        ("header", "does not match its header", 2),
        ("model", "no stored model", 3),
        ("bucket_sum", "bucket sum 1 is missing", 4),
        ("missing", "this block is missing", 2),
    ],
)
def test_a_copy_with_a_changed_record_does_not_verify(
    chain: Path, what: str, message: str, bad_round: int
) -> None:
    def change(records: list[BlockRecord]) -> None:
        r = records[bad_round]
        if what == "header":
            records[bad_round] = dataclasses.replace(
                r, header=r.header.replace('"rule":"mean"', '"rule":"median"')
            )
        elif what == "model":
            records[bad_round] = dataclasses.replace(r, model=r.model + 1e-9)
        elif what == "bucket_sum":
            sums = list(r.bucket_sums)
            sums[1] = sums[1] * 2
            records[bad_round] = dataclasses.replace(r, bucket_sums=tuple(sums))
        else:
            del records[bad_round]

    with _copy(chain, change) as copy, pytest.raises(LedgerError, match=message) as e:
        verify_ledger(copy)
    assert e.value.round == bad_round


def test_a_copy_refuses_a_block_sent_twice(chain: Path) -> None:
    with pytest.raises(LedgerError, match="a block twice"):
        _copy(chain, lambda records: records.append(records[2]))


def test_a_malformed_block_from_the_wire_is_refused_in_one_sentence(chain: Path) -> None:
    from hfl.errors import InvalidInput
    from hfl.rpc import serde

    with LedgerStore(chain) as store:
        good = serde.ledger_block_to_proto(store.record(1))
    no_header = type(good)()
    no_header.CopyFrom(good)
    no_header.ClearField("header")
    with pytest.raises(InvalidInput, match="the header of block 1 is missing"):
        serde.ledger_block_from_proto(no_header)
    short = type(good)()
    short.CopyFrom(good)
    short.model.data = short.model.data[:-3]
    with pytest.raises(InvalidInput, match="the model of block 1: says"):
        serde.ledger_block_from_proto(short)


# ------------------------------------------------------------------ the adaptive norm bound


def _append_adaptive(
    store: LedgerStore, rng: np.random.Generator, clip: float | None = None, forge: bool = False
) -> None:
    """The next block with the adaptive norm bound as a leader records it (``clip``: another bound;
    ``forge``: another history), certified by the committee."""
    prev = store.head()
    assert prev is not None
    prev_model = store.model(prev.header.model_hash)
    counts = np.array([3, 2, 3, 2])
    sums = rng.normal(size=(B, D))
    want = bound_for(prev.header.extra, 5.0)
    header, model = next_header(
        prev,
        prev_model,
        sums,
        counts,
        rule="mean",
        rule_params={"f": 0, "clip_update": want if clip is None else clip},
        committee=COMMITTEE,
        config_hash=sha256(b"round-config", str(prev.round + 1).encode()),
        extra=round_extra(prev.round + 1),
    )
    record = round_record(prev.header.extra, sums, counts, header.flagged, ceiling=5.0)
    if forge:
        record["medians"][-1] *= 3
    header = dataclasses.replace(header, extra={**header.extra, RECORD_KEY: record})
    store.append(Block(header, sign(header)), model, sums)


def test_adaptive_bounds_verify_and_a_wrong_bound_or_history_is_caught(path: Path) -> None:
    rng = np.random.default_rng(4)
    with LedgerStore(path) as store:
        store.init_genesis(np.linspace(-1, 1, D), GENESIS_EXTRA)
        for _ in range(6):
            _append_adaptive(store, rng)
        assert verify_ledger(store) == 7
        bounds = [store.block(r).header.rule_params["clip_update"] for r in range(1, 7)]
        assert bounds[0] == 5.0 and all(c < 5.0 for c in bounds[1:])  # round 1 has no history
        _append_adaptive(store, rng, forge=True)
        assert verify_ledger(store, recompute=False) == 8
        with pytest.raises(LedgerError, match="the recorded norm-bound history differs") as e:
            verify_ledger(store)
        assert e.value.round == 7
    path.unlink()
    with LedgerStore(path) as store:
        store.init_genesis(np.linspace(-1, 1, D), GENESIS_EXTRA)
        _append_adaptive(store, rng)
        _append_adaptive(store, rng, clip=5.0)  # the fixed C instead of the one the history gives
        with pytest.raises(LedgerError, match=r"block 2: the norm bound C = 5.0 is not C = ") as e:
            verify_ledger(store, recompute=False)
