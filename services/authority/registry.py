"""The authority's persistent registry of nodes and issued round configurations (SQLite)."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from hfl.domain import NodeInfo
from hfl.files import private_db


class Registry:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(private_db(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, role TEXT NOT NULL,
                                              info TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS configs (round INTEGER, attempt INTEGER, hash BLOB, head BLOB,
                                                buckets TEXT, PRIMARY KEY (round, attempt));
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS reports (round INTEGER PRIMARY KEY, report TEXT NOT NULL);
            """
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(configs)")}
        if "pools" not in columns:  # a registry from before buckets recorded their fog
            self._db.execute("ALTER TABLE configs ADD COLUMN pools TEXT")
        self._lock = threading.Lock()

    def upsert(self, node: NodeInfo) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO nodes(node_id, role, info) VALUES (?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET role=excluded.role, info=excluded.info",
                (
                    node.node_id,
                    node.role,
                    json.dumps({**node.to_dict(), "sign_public_key": node.sign_public_key.hex()}),
                ),
            )

    def remove(self, node_id: str) -> bool:
        """Forget a node (revoked): it is no longer scheduled. Returns whether it was registered."""
        with self._lock:
            return self._db.execute("DELETE FROM nodes WHERE node_id=?", (node_id,)).rowcount > 0

    def get(self, node_id: str) -> NodeInfo | None:
        row = self._db.execute("SELECT info FROM nodes WHERE node_id=?", (node_id,)).fetchone()
        return _node(row[0]) if row else None

    def nodes(self, role: str | None = None) -> list[NodeInfo]:
        if role is None:
            rows = self._db.execute("SELECT info FROM nodes ORDER BY node_id").fetchall()
        else:
            rows = self._db.execute(
                "SELECT info FROM nodes WHERE role=? ORDER BY node_id", (role,)
            ).fetchall()
        return [_node(r[0]) for r in rows]

    def record_config(
        self,
        round_: int,
        attempt: int,
        config_hash: bytes,
        head: bytes,
        buckets: dict[str, list[str]],
        pools: dict[str, str] | None = None,
    ) -> None:
        """Remember an issued configuration: its buckets' members and (``pools``) the fog each bucket was
        drawn in."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO configs(round, attempt, hash, head, buckets, pools) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    round_,
                    attempt,
                    config_hash,
                    head,
                    json.dumps(buckets),
                    None if pools is None else json.dumps(pools),
                ),
            )

    def config_buckets(self, round_: int, attempt: int) -> dict[str, list[str]] | None:
        layout = self.config_layout(round_, attempt)
        return None if layout is None else layout[0]

    def config_pools(self, round_: int, attempt: int) -> dict[str, str] | None:
        """The fog each bucket of an issued configuration was drawn in; None when it was not recorded."""
        layout = self.config_layout(round_, attempt)
        return None if layout is None else layout[1]

    def config_layout(
        self, round_: int, attempt: int
    ) -> tuple[dict[str, list[str]], dict[str, str] | None] | None:
        """An issued configuration's buckets (their members) and the fog each bucket was drawn in (None
        when that was not recorded), read at once; None when no configuration was issued."""
        row = self._db.execute(
            "SELECT buckets, pools FROM configs WHERE round=? AND attempt=?", (round_, attempt)
        ).fetchone()
        if not row or not row[0]:
            return None
        pools = {str(k): str(v) for k, v in json.loads(row[1]).items()} if row[1] else None
        return dict(json.loads(row[0])), pools

    def get_json(self, key: str) -> object | None:
        row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_json(self, key: str, value: object) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def record_report(self, round_: int, report: dict[str, object]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO reports(round, report) VALUES (?, ?)", (round_, json.dumps(report))
            )

    def reports(self, last: int) -> list[tuple[int, dict[str, object]]]:
        """The newest ``last`` round reports, oldest first."""
        rows = self._db.execute(
            "SELECT round, report FROM reports ORDER BY round DESC LIMIT ?", (last,)
        ).fetchall()
        return [(int(r), json.loads(t)) for r, t in reversed(rows)]

    def close(self) -> None:
        self._db.close()


def _node(text: str) -> NodeInfo:
    d = json.loads(text)
    d["sign_public_key"] = bytes.fromhex(d["sign_public_key"])
    return NodeInfo(**d)
