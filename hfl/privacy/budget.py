"""Durable per-facility record of privacy spending (SQLite, WAL, synchronous=FULL).

Two kinds of entries, one per (facility, round, kind):

* ``training``: ``epsilon_total`` is the accountant's *running total* ε after that round, at ``delta``.
  Totals never decrease with the round number and all training entries of a facility share one δ.
* ``release``: ``epsilon_total`` is the pure ε (δ = 0) spent on statistics released in that round
  (for example a noisy sample count and class balance, see ``laplace_release``).

``spent(facility)`` = latest training running total + sum of all release ε. This is basic sequential
composition: (ε_train, δ)-DP training followed by pure ε_i-DP releases is (ε_train + Σ ε_i, δ)-DP.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

SpendKind = Literal["training", "release"]
KINDS: tuple[str, ...] = ("training", "release")

__all__ = ["BudgetExceeded", "LedgerEntry", "PrivacyLedger", "PrivacyLedgerError", "SpendKind"]


class BudgetExceeded(Exception):
    """A facility declines a round because it would exceed its privacy budget."""

    def __init__(
        self,
        message: str,
        *,
        projected: float | None = None,
        budget: float | None = None,
        facility: str | None = None,
    ) -> None:
        super().__init__(message)
        self.projected = projected
        self.budget = budget
        self.facility = facility


class PrivacyLedgerError(ValueError):
    """A spend record was refused (conflicting duplicate, decreasing total, bad values)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded spend."""

    facility: str
    round: int
    kind: SpendKind
    epsilon_total: float
    delta: float
    details: dict[str, Any]
    recorded_at: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_spend (
    facility      TEXT    NOT NULL,
    round         INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('training', 'release')),
    epsilon_total REAL    NOT NULL,
    delta         REAL    NOT NULL,
    details       TEXT    NOT NULL,
    recorded_at   TEXT    NOT NULL,
    PRIMARY KEY (facility, round, kind)
)
"""


def _canonical_details(details: object) -> str:
    if not isinstance(details, dict):
        raise PrivacyLedgerError(f"details must be a dict, got {type(details).__name__}.")
    try:
        return json.dumps(details, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PrivacyLedgerError(f"details must be plain JSON data (no NaN, no objects): {exc}") from exc


class PrivacyLedger:
    """Per-facility privacy spend ledger stored in one SQLite file. Safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def record(
        self,
        facility: str,
        round: int,
        epsilon_total: float,
        kind: SpendKind,
        delta: float,
        details: dict[str, Any],
    ) -> None:
        """Record a spend. Repeating an identical record is a no-op; a conflicting one is refused."""
        if not isinstance(facility, str) or not facility.strip():
            raise PrivacyLedgerError("Facility name must be a non-empty string.")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise PrivacyLedgerError(f"Round must be a non-negative integer, got {round!r}.")
        if kind not in KINDS:
            raise PrivacyLedgerError(f"Spend kind must be 'training' or 'release', got {kind!r}.")
        if isinstance(epsilon_total, bool) or not isinstance(epsilon_total, int | float):
            raise PrivacyLedgerError(f"epsilon_total must be a number, got {type(epsilon_total).__name__}.")
        eps = float(epsilon_total)
        if not math.isfinite(eps) or eps < 0.0:
            raise PrivacyLedgerError(
                f"epsilon_total must be a finite non-negative number, got {epsilon_total!r}."
            )
        if isinstance(delta, bool) or not isinstance(delta, int | float):
            raise PrivacyLedgerError(f"delta must be a number, got {type(delta).__name__}.")
        dlt = float(delta)
        if kind == "training" and not 0.0 < dlt < 1.0:
            raise PrivacyLedgerError(f"Training delta must be strictly between 0 and 1, got {delta!r}.")
        if kind == "release" and dlt != 0.0:
            raise PrivacyLedgerError(
                f"Releases must be pure ε (delta 0) to be composed additively; got delta {delta!r}."
            )
        details_json = _canonical_details(details)

        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._check_and_insert(cur, facility, round, kind, eps, dlt, details_json)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _check_and_insert(
        self,
        cur: sqlite3.Cursor,
        facility: str,
        round: int,
        kind: str,
        eps: float,
        dlt: float,
        details_json: str,
    ) -> None:
        row = cur.execute(
            "SELECT epsilon_total, delta, details FROM privacy_spend WHERE facility=? AND round=? AND kind=?",
            (facility, round, kind),
        ).fetchone()
        if row is not None:
            if (float(row[0]), float(row[1]), row[2]) == (eps, dlt, details_json):
                return
            raise PrivacyLedgerError(
                f"Facility {facility!r} already has a different {kind} record for round {round} "
                f"(ε={row[0]}, δ={row[1]}); a recorded spend cannot be changed."
            )
        if kind == "training":
            other = cur.execute(
                "SELECT delta FROM privacy_spend WHERE facility=? AND kind='training' AND delta<>? LIMIT 1",
                (facility, dlt),
            ).fetchone()
            if other is not None:
                raise PrivacyLedgerError(
                    f"Facility {facility!r} records training ε at δ={other[0]}; "
                    f"a record at δ={dlt} cannot be compared with it."
                )
            prev = cur.execute(
                "SELECT round, epsilon_total FROM privacy_spend WHERE facility=? AND kind='training' "
                "AND round<? ORDER BY round DESC LIMIT 1",
                (facility, round),
            ).fetchone()
            if prev is not None and eps < float(prev[1]):
                raise PrivacyLedgerError(
                    f"Refusing training record for facility {facility!r}, round {round}: running total "
                    f"ε={eps} is below the ε={prev[1]} already recorded for round {prev[0]}. "
                    "Privacy spending can only grow."
                )
            nxt = cur.execute(
                "SELECT round, epsilon_total FROM privacy_spend WHERE facility=? AND kind='training' "
                "AND round>? ORDER BY round ASC LIMIT 1",
                (facility, round),
            ).fetchone()
            if nxt is not None and eps > float(nxt[1]):
                raise PrivacyLedgerError(
                    f"Refusing training record for facility {facility!r}, round {round}: running total "
                    f"ε={eps} is above the ε={nxt[1]} already recorded for the later round {nxt[0]}."
                )
        cur.execute(
            "INSERT INTO privacy_spend (facility, round, kind, epsilon_total, delta, details, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (facility, round, kind, eps, dlt, details_json, datetime.now(UTC).isoformat()),
        )

    def spent(self, facility: str) -> float:
        """Total ε spent by a facility: latest training running total + sum of pure-ε releases."""
        with self._lock:
            train = self._conn.execute(
                "SELECT epsilon_total FROM privacy_spend WHERE facility=? AND kind='training' "
                "ORDER BY round DESC LIMIT 1",
                (facility,),
            ).fetchone()
            releases = self._conn.execute(
                "SELECT epsilon_total FROM privacy_spend WHERE facility=? AND kind='release'", (facility,)
            ).fetchall()
        return (float(train[0]) if train is not None else 0.0) + math.fsum(float(r[0]) for r in releases)

    def exhausted(self, facility: str, budget: float) -> bool:
        """True when the facility has spent its whole ε budget (spent >= budget)."""
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0.0:
            raise PrivacyLedgerError(f"Budget must be a positive number, got {budget!r}.")
        return self.spent(facility) >= float(budget)

    def entries(self, facility: str | None = None) -> list[LedgerEntry]:
        """All entries (optionally for one facility), ordered by facility, round, kind."""
        query = "SELECT facility, round, kind, epsilon_total, delta, details, recorded_at FROM privacy_spend"
        params: tuple[str, ...] = ()
        if facility is not None:
            query += " WHERE facility=?"
            params = (facility,)
        query += " ORDER BY facility, round, kind"
        with self._lock:
            rows = self._conn.execute(query, params).fetchall()
        return [
            LedgerEntry(
                facility=r[0],
                round=int(r[1]),
                kind=r[2],
                epsilon_total=float(r[3]),
                delta=float(r[4]),
                details=json.loads(r[5]),
                recorded_at=r[6],
            )
            for r in rows
        ]
