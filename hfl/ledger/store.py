"""Append-only SQLite store for ledger blocks, model checkpoints and bucket sums.

The file uses WAL journaling with ``synchronous=FULL`` and one transaction per append, so a block whose
append returned survives a crash or power cut, and a half-written append leaves no trace. Models and
bucket sums are stored as little-endian float64 bytes in a content-addressed ``blobs`` table keyed by
their ``hash_vector``; every read re-checks that hash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from hfl.hashing import canonical_json, hash_vector, vector_bytes

from .block import Block, BlockHeader, LedgerError, Vote, check_quorum, genesis_header, model_vector

__all__ = ["SCHEMA_VERSION", "BlockRecord", "LedgerStore"]

SCHEMA_VERSION = "hfl-ledger/1"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blocks ("
    " round INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, header TEXT NOT NULL, votes TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS blobs (hash BLOB PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL)",
)


def _decode_vector(data: bytes, expected_hash: bytes, what: str) -> np.ndarray:
    if len(data) % 8:
        raise LedgerError(f"the stored {what} is corrupted (its length is not a whole number of values)")
    vec = np.frombuffer(data, dtype="<f8").astype(np.float64)
    if hash_vector(vec) != expected_hash:
        raise LedgerError(f"the stored {what} is corrupted (its hash does not match)")
    return vec


@dataclass(frozen=True)
class BlockRecord:
    """One block exactly as stored, with the model it commits to and the bucket sums it was aggregated
    from: what a copy of the ledger needs so that :func:`hfl.round.audit.verify_ledger` can re-check it.

    Nothing in a record is trusted: :meth:`LedgerStore.from_records` stores it as it is, and only a
    verification of the resulting copy says whether it is sound."""

    round: int
    hash: bytes
    header: str  # canonical JSON of the header, as stored
    votes: str  # canonical JSON of the votes, as stored
    model: np.ndarray
    bucket_sums: tuple[np.ndarray, ...]


def _raw_vector(data: bytes | None, what: str, round: int) -> np.ndarray:
    if data is None:
        raise LedgerError(f"the {what} is missing from the store", round)
    if len(data) % 8:
        raise LedgerError(
            f"the stored {what} is corrupted (its length is not a whole number of values)", round
        )
    return np.frombuffer(data, dtype="<f8").astype(np.float64)


class LedgerStore:
    """The ledger on disk. Thread-safe within one process; safe to reopen after a crash."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger file {self._path!r}: {exc}") from None
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() not in ("wal", "memory"):
                raise LedgerError(f"the ledger file {self._path!r} cannot use WAL journaling (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            with self._transaction():
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
                elif row[0] != SCHEMA_VERSION:
                    raise LedgerError(
                        f"the ledger file {self._path!r} has format {row[0]!r}; this software reads "
                        f"{SCHEMA_VERSION!r}"
                    )
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._conn = None
            raise LedgerError(f"the file {self._path!r} is not a usable ledger database: {exc}") from None
        except BaseException:
            conn.close()
            self._conn = None
            raise

    # ------------------------------------------------------------------------------------- plumbing

    @property
    def path(self) -> str:
        return self._path

    def _c(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("the ledger store is closed")
        return self._conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(
            self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
        ) -> None:
            if et is None:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            elif self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    def _transaction(self) -> LedgerStore._Tx:
        return LedgerStore._Tx(self._c())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._c().execute("SELECT COUNT(*) FROM blocks").fetchone()[0])

    # ---------------------------------------------------------------------------------------- reads

    @staticmethod
    def _decode(round: int, stored_hash: bytes, header_text: str, votes_text: str) -> Block:
        try:
            header = BlockHeader.from_dict(json.loads(header_text))
            votes = tuple(Vote.from_dict(v) for v in json.loads(votes_text))
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"the stored block is unreadable or altered ({exc})", round) from None
        if header.round != round:
            raise LedgerError(f"the stored header says round {header.round}", round)
        if bytes(stored_hash) != header.hash():
            raise LedgerError("the stored block hash does not match its header (the file was altered)", round)
        return Block(header, votes)

    def _head(self) -> Block | None:
        row = (
            self._c()
            .execute("SELECT round, hash, header, votes FROM blocks ORDER BY round DESC LIMIT 1")
            .fetchone()
        )
        return None if row is None else self._decode(*row)

    def head(self) -> Block | None:
        """The latest block, or None if the ledger is empty."""
        with self._lock:
            return self._head()

    def block(self, round: int) -> Block:
        with self._lock:
            row = (
                self._c()
                .execute("SELECT round, hash, header, votes FROM blocks WHERE round = ?", (int(round),))
                .fetchone()
            )
        if row is None:
            raise LedgerError("no such block in the ledger", int(round))
        return self._decode(*row)

    def rounds(self) -> list[int]:
        """Round numbers of the stored blocks, ascending."""
        with self._lock:
            return [int(r) for (r,) in self._c().execute("SELECT round FROM blocks ORDER BY round")]

    def blocks(self) -> Iterator[Block]:
        """All blocks in ascending round order (each read and checked as it is reached)."""
        for r in self.rounds():
            yield self.block(r)

    def record(self, round: int) -> BlockRecord:
        """Block ``round`` as stored, with its model and bucket sums, for a copy of the ledger elsewhere.

        Nothing is verified here beyond what is needed to find the model and the sums (the header must
        parse): whoever receives the record re-checks all of it."""
        with self._lock:
            row = (
                self._c()
                .execute("SELECT hash, header, votes FROM blocks WHERE round = ?", (int(round),))
                .fetchone()
            )
        if row is None:
            raise LedgerError("no such block in the ledger", int(round))
        stored_hash, header_text, votes_text = row
        try:
            header = BlockHeader.from_dict(json.loads(header_text))
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"the stored block is unreadable or altered ({exc})", int(round)) from None
        return BlockRecord(
            round=int(round),
            hash=bytes(stored_hash),
            header=str(header_text),
            votes=str(votes_text),
            model=_raw_vector(self._blob(header.model_hash), "model checkpoint", int(round)),
            bucket_sums=tuple(
                _raw_vector(self._blob(h), f"bucket sum {i}", int(round))
                for i, h in enumerate(header.bucket_hashes)
            ),
        )

    @classmethod
    def from_records(cls, records: Iterable[BlockRecord]) -> LedgerStore:
        """An in-memory copy of a ledger made of records from elsewhere (a live leader), stored exactly
        as received and NOT checked: run :func:`hfl.round.audit.verify_ledger` on it before using anything in
        it. Models and bucket sums are stored under the hash of what was received, so a changed one is
        found missing when its block is checked."""
        store = cls(":memory:")
        try:
            with store._lock, store._transaction() as conn:
                for rec in records:
                    vectors = [(rec.model, "model"), *((s, "bucket_sum") for s in rec.bucket_sums)]
                    conn.executemany(
                        "INSERT OR IGNORE INTO blobs (hash, kind, data) VALUES (?, ?, ?)",
                        [(hash_vector(v), kind, vector_bytes(v)) for v, kind in vectors],
                    )
                    conn.execute(
                        "INSERT INTO blocks (round, hash, header, votes) VALUES (?, ?, ?, ?)",
                        (int(rec.round), rec.hash, rec.header, rec.votes),
                    )
        except sqlite3.IntegrityError:
            store.close()
            raise LedgerError("the ledger sent has a block twice (the same round or the same hash)") from None
        except BaseException:
            store.close()
            raise
        return store

    def _blob(self, h: bytes) -> bytes | None:
        with self._lock:
            row = self._c().execute("SELECT data FROM blobs WHERE hash = ?", (h,)).fetchone()
        return None if row is None else bytes(row[0])

    def model(self, model_hash: bytes) -> np.ndarray:
        """The model checkpoint with this hash (float64 copy). Raises LedgerError if missing or corrupted."""
        data = self._blob(bytes(model_hash))
        if data is None:
            raise LedgerError(f"no stored model with hash {bytes(model_hash).hex()[:16]}…")
        return _decode_vector(data, bytes(model_hash), "model checkpoint")

    def bucket_sums(self, round: int) -> np.ndarray:
        """The (B, d) bucket sums recorded for a round (B = 0 for genesis)."""
        header = self.block(round).header
        rows = []
        for i, h in enumerate(header.bucket_hashes):
            data = self._blob(h)
            if data is None:
                raise LedgerError(f"bucket sum {i} is missing from the store", header.round)
            try:
                rows.append(_decode_vector(data, h, f"bucket sum {i}"))
            except LedgerError as exc:
                raise LedgerError(str(exc), header.round) from None
        if not rows:
            return np.zeros((0, 0), dtype=np.float64)
        if len({len(r) for r in rows}) != 1:
            raise LedgerError("the stored bucket sums have different lengths", header.round)
        return np.stack(rows)

    # --------------------------------------------------------------------------------------- writes

    def init_genesis(self, initial_model: np.ndarray, extra: Mapping[str, Any] | None = None) -> Block:
        """Write the round-0 block, or, if there is one already, check it matches and return it."""
        try:
            model = model_vector(initial_model)
            header = genesis_header(model, extra)
        except ValueError as exc:
            raise LedgerError(f"cannot create the genesis block: {exc}", 0) from None
        block = Block(header, ())
        result = block
        with self._lock, self._transaction() as conn:
            row = conn.execute("SELECT round, hash, header, votes FROM blocks WHERE round = 0").fetchone()
            if row is not None:
                existing = self._decode(*row)
                if existing.hash != block.hash:
                    raise LedgerError(
                        "this ledger already has a different genesis block (different initial model or "
                        "settings); use a new ledger file for a new federation",
                        0,
                    )
                result = existing
            elif conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]:
                raise LedgerError("the ledger has blocks but no genesis block (the file was altered)", 0)
            else:
                self._insert(conn, block)
            conn.execute(
                "INSERT OR IGNORE INTO blobs (hash, kind, data) VALUES (?, 'model', ?)",
                (header.model_hash, vector_bytes(model)),
            )
        return result

    @staticmethod
    def _insert(conn: sqlite3.Connection, block: Block) -> None:
        conn.execute(
            "INSERT INTO blocks (round, hash, header, votes) VALUES (?, ?, ?, ?)",
            (
                block.header.round,
                block.hash,
                canonical_json(block.header.to_dict()).decode(),
                canonical_json([v.to_dict() for v in block.votes]).decode(),
            ),
        )

    def append(self, block: Block, model: np.ndarray, bucket_sums: np.ndarray) -> None:
        """Append the next block with its new model and (B, d) bucket sums, in one transaction.

        Raises LedgerError (and writes nothing) unless the block extends the head, the model and sums
        match the hashes in the header, and the quorum certificate is valid.
        """
        if not isinstance(block, Block):
            raise LedgerError(f"expected a Block, got {type(block).__name__}")
        h = block.header
        r = h.round
        if r == 0:
            raise LedgerError("the genesis block is written with init_genesis, not append", 0)
        try:
            vec = model_vector(model)
        except ValueError as exc:
            raise LedgerError(f"bad model: {exc}", r) from None
        if hash_vector(vec) != h.model_hash:
            raise LedgerError("the model does not match the model hash in the header", r)
        sums = np.asarray(bucket_sums, dtype=np.float64)
        if sums.ndim != 2 or sums.shape[0] != len(h.bucket_hashes) or sums.shape[1] != vec.shape[0]:
            raise LedgerError(
                f"expected bucket sums of shape ({len(h.bucket_hashes)}, {vec.shape[0]}), got {sums.shape}", r
            )
        for i, row in enumerate(sums):
            if hash_vector(row) != h.bucket_hashes[i]:
                raise LedgerError(f"bucket sum {i} does not match its hash in the header", r)
        check_quorum(h, block.votes)
        try:
            self._append_checked(block, vec, sums)
        except sqlite3.Error as exc:
            raise LedgerError(f"could not write the block to {self._path!r}: {exc}", r) from None

    def _append_checked(self, block: Block, vec: np.ndarray, sums: np.ndarray) -> None:
        h = block.header
        r = h.round
        with self._lock, self._transaction() as conn:
            head = self._head()
            if head is None:
                raise LedgerError("the ledger has no genesis block yet; call init_genesis first", r)
            if r != head.round + 1:
                raise LedgerError(
                    f"the ledger head is block {head.round}, so the next block must be {head.round + 1}", r
                )
            if h.prev_hash != head.hash:
                raise LedgerError(f"prev_hash does not point to block {head.round}", r)
            if h.base_model_hash != head.header.model_hash:
                raise LedgerError(f"base_model_hash is not the model of block {head.round}", r)
            base_len = conn.execute(
                "SELECT length(data) FROM blobs WHERE hash = ?", (h.base_model_hash,)
            ).fetchone()
            if base_len is not None and base_len[0] != 8 * vec.shape[0]:
                raise LedgerError(
                    f"the model has {vec.shape[0]} values but the previous model has {base_len[0] // 8}", r
                )
            conn.execute(
                "INSERT OR IGNORE INTO blobs (hash, kind, data) VALUES (?, 'model', ?)",
                (h.model_hash, vector_bytes(vec)),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO blobs (hash, kind, data) VALUES (?, 'bucket_sum', ?)",
                [(bh, vector_bytes(row)) for bh, row in zip(h.bucket_hashes, sums, strict=True)],
            )
            self._insert(conn, block)
