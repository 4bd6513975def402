"""The record of operator actions, kept by the service that carries them out (SQLite, survives restarts),
and the leader's training control beside it. Operators and auditors read it with ListOperatorActions."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path

from hfl.control import OperatorAction, TrainingControl
from hfl.files import private_db


class OperatorLog:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(private_db(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS actions (at TEXT NOT NULL, by TEXT NOT NULL, action TEXT NOT NULL,
                                                target TEXT NOT NULL, reason TEXT NOT NULL,
                                                result TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS control (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
            """
        )
        self._lock = threading.Lock()

    def record(self, by: str, action: str, target: str, reason: str, result: str) -> OperatorAction:
        entry = OperatorAction(
            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), by, action, target, reason, result
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO actions(at, by, action, target, reason, result) VALUES (?, ?, ?, ?, ?, ?)",
                (entry.at, entry.by, entry.action, entry.target, entry.reason, entry.result),
            )
        return entry

    def actions(self, last: int = 1000) -> list[OperatorAction]:
        """The newest ``last`` actions, oldest first."""
        rows = self._db.execute(
            "SELECT at, by, action, target, reason, result FROM actions ORDER BY rowid DESC LIMIT ?", (last,)
        ).fetchall()
        return [OperatorAction(*r) for r in reversed(rows)]

    def control(self) -> TrainingControl:
        row = self._db.execute("SELECT state FROM control WHERE id = 1").fetchone()
        return TrainingControl.from_dict(json.loads(row[0])) if row else TrainingControl()

    def set_control(self, state: TrainingControl) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO control(id, state) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state",
                (json.dumps(state.to_dict()),),
            )

    def close(self) -> None:
        self._db.close()
