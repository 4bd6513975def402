"""The authority's privacy ledger: every facility's signed spend reports, and who is out of budget.

Spends live in ``<state_dir>/privacy.db`` (hfl.privacy.PrivacyLedger, SQLite, synchronous=FULL); the
"out of budget" flags live in the same file's companion table so both survive a restart. A facility is
*exhausted* (and the authority stops scheduling it) when its latest report says it cannot afford another
round, or when its recorded spend reaches the federation's budget (HFL_DP_EPSILON at the authority).

Ledger slots: training spends are recorded under ``round·1000 + attempt`` (hfl.privacy.federation.
spend_slot), so a retried round, which trains again, gets its own record; the one-off release of
statistics is recorded under slot 0.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from hfl.errors import InvalidInput, NotAllowed, Unauthenticated, clip
from hfl.files import private_db
from hfl.privacy import PrivacyLedger, PrivacyLedgerError
from hfl.privacy.federation import ledger_entry
from hfl.privacy.report import SpendReport
from hfl.rpc.metrics import EPSILON_BUDGET, EPSILON_SPENT, PRIVACY_EXHAUSTED

log = logging.getLogger("hfl.authority")


class PrivacyBook:
    """Verifies and records spend reports; answers "who may still be scheduled"."""

    def __init__(self, path: Path, budget: float = 0.0) -> None:
        self.ledger = PrivacyLedger(private_db(path))
        self.budget = float(budget)
        EPSILON_BUDGET.set(self.budget)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS privacy_status (facility TEXT PRIMARY KEY, exhausted INTEGER "
            "NOT NULL, slot INTEGER NOT NULL, reason TEXT NOT NULL)"
        )
        self.publish()

    def close(self) -> None:
        self._db.close()
        self.ledger.close()

    # ------------------------------------------------------------------ queries
    def facilities(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT facility FROM privacy_spend ORDER BY facility").fetchall()
        return [r[0] for r in rows]

    def spent(self) -> dict[str, float]:
        return {f: self.ledger.spent(f) for f in self.facilities()}

    def max_spent(self) -> float | None:
        spent = self.spent()
        return max(spent.values()) if spent else None

    @property
    def exhausted(self) -> frozenset[str]:
        return self._exhausted(self.spent() if self.budget > 0 else {})

    def _exhausted(self, spent: dict[str, float]) -> frozenset[str]:
        flagged = {r[0] for r in self._db.execute("SELECT facility FROM privacy_status WHERE exhausted=1")}
        if self.budget > 0:
            flagged |= {f for f, e in spent.items() if e >= self.budget}
        return frozenset(flagged)

    def is_exhausted(self, facility: str, spent: float) -> bool:
        """``facility in self.exhausted``, for one facility whose total ``spent`` is known."""
        row = self._db.execute(
            "SELECT 1 FROM privacy_status WHERE facility=? AND exhausted=1", (facility,)
        ).fetchone()
        return row is not None or (self.budget > 0 and spent >= self.budget)

    def publish(self) -> None:
        spent = self.spent()
        out = self._exhausted(spent)
        for f, e in spent.items():
            EPSILON_SPENT.labels(facility=f).set(e)
            PRIVACY_EXHAUSTED.labels(facility=f).set(int(f in out))

    # ------------------------------------------------------------------ recording
    def record(self, report: SpendReport, registered_key: bytes | None, registered_role: str | None) -> float:
        """Check the report comes from that facility, record it, and return the facility's total ε."""
        _check_sender(report, registered_key, registered_role)
        try:
            slot, details = ledger_entry(report)  # hfl/privacy/federation.py
            with self._lock:
                self.ledger.record(
                    report.facility_id,
                    slot,
                    report.epsilon_total,
                    report.kind,  # type: ignore[arg-type]
                    report.delta,
                    details,
                )
                if report.kind == "training":
                    self._set_status(report, slot)
        except (PrivacyLedgerError, ValueError) as e:
            raise InvalidInput(f"privacy report refused: {e}") from None
        total = self.ledger.spent(report.facility_id)
        if report.exhausted:
            log.warning(
                "facility %s has used its privacy budget (ε=%.3f spent); it will not be scheduled again",
                report.facility_id,
                total,
            )
        # Only this facility's record changed: refresh its gauges, not every facility's.
        EPSILON_SPENT.labels(facility=report.facility_id).set(total)
        PRIVACY_EXHAUSTED.labels(facility=report.facility_id).set(
            int(self.is_exhausted(report.facility_id, total))
        )
        return total

    def _set_status(self, report: SpendReport, slot: int) -> None:
        """Whether the facility can afford another round, as its newest training report says (an older
        report arriving late does not overwrite it)."""
        self._db.execute(
            "INSERT INTO privacy_status(facility, exhausted, slot, reason) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(facility) DO UPDATE SET exhausted=excluded.exhausted, "
            "slot=excluded.slot, "
            "reason=excluded.reason WHERE excluded.slot >= privacy_status.slot",
            (report.facility_id, int(report.exhausted), slot, json.dumps(report.details)),
        )


def _check_sender(report: SpendReport, registered_key: bytes | None, registered_role: str | None) -> None:
    """Privacy reports come only from registered facilities, signed with their registered identity key."""
    if registered_key is None or registered_role != "facility":
        raise NotAllowed(
            f"{clip(report.facility_id)} is not a registered facility; privacy reports come only "
            "from facilities"
        )
    try:
        report.verify(registered_key)
    except InvalidSignature:
        raise Unauthenticated(
            f"the privacy report for {clip(report.facility_id)} is not signed with that "
            "facility's registered identity key"
        ) from None
