"""PrivacyLedger: durable per-facility spend records."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfl.privacy.budget import BudgetExceeded, PrivacyLedger, PrivacyLedgerError


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[PrivacyLedger]:
    led = PrivacyLedger(tmp_path / "privacy.db")
    yield led
    led.close()


def test_spent_composes_training_total_and_releases(ledger: PrivacyLedger) -> None:
    assert ledger.spent("clinic-a") == 0.0
    ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 40})
    ledger.record("clinic-a", 1, 0.1, "release", 0.0, {"what": "sample count"})
    ledger.record("clinic-a", 2, 0.9, "training", 1e-5, {"steps": 40})
    ledger.record("clinic-a", 2, 0.05, "release", 0.0, {"what": "class balance"})
    ledger.record("clinic-b", 1, 3.0, "training", 1e-5, {})
    # Latest running training total (0.9) + all releases (0.1 + 0.05).
    assert ledger.spent("clinic-a") == pytest.approx(1.05)
    assert ledger.spent("clinic-b") == 3.0
    assert ledger.exhausted("clinic-a", 1.05)
    assert not ledger.exhausted("clinic-a", 1.1)
    assert ledger.exhausted("clinic-b", 2.0)


def test_record_is_idempotent(ledger: PrivacyLedger) -> None:
    for _ in range(3):
        ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 40, "sigma": 1.1})
    # Key order in details does not matter.
    ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {"sigma": 1.1, "steps": 40})
    assert len(ledger.entries("clinic-a")) == 1
    assert ledger.spent("clinic-a") == 0.5


def test_conflicting_duplicate_is_refused(ledger: PrivacyLedger) -> None:
    ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 40})
    with pytest.raises(PrivacyLedgerError, match="already has a different"):
        ledger.record("clinic-a", 1, 0.6, "training", 1e-5, {"steps": 40})
    with pytest.raises(PrivacyLedgerError, match="already has a different"):
        ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 41})
    assert ledger.entries()[0].epsilon_total == 0.5


def test_decreasing_training_total_is_refused(ledger: PrivacyLedger) -> None:
    ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {})
    ledger.record("clinic-a", 3, 1.0, "training", 1e-5, {})
    with pytest.raises(PrivacyLedgerError, match="can only grow"):
        ledger.record("clinic-a", 4, 0.9, "training", 1e-5, {})
    with pytest.raises(PrivacyLedgerError, match="later round"):
        ledger.record("clinic-a", 2, 1.2, "training", 1e-5, {})
    with pytest.raises(PrivacyLedgerError, match="can only grow"):
        ledger.record("clinic-a", 2, 0.4, "training", 1e-5, {})
    ledger.record("clinic-a", 2, 0.7, "training", 1e-5, {})  # in between is fine
    # Another facility is independent.
    ledger.record("clinic-b", 5, 0.1, "training", 1e-5, {})
    assert [e.round for e in ledger.entries("clinic-a")] == [1, 2, 3]
    assert ledger.spent("clinic-a") == 1.0


def test_mixed_deltas_and_non_pure_releases_are_refused(ledger: PrivacyLedger) -> None:
    ledger.record("clinic-a", 1, 0.5, "training", 1e-5, {})
    with pytest.raises(PrivacyLedgerError, match="δ"):
        ledger.record("clinic-a", 2, 0.7, "training", 1e-6, {})
    with pytest.raises(PrivacyLedgerError, match="pure"):
        ledger.record("clinic-a", 2, 0.1, "release", 1e-5, {})
    assert len(ledger.entries()) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", 1, 0.5, "training", 1e-5, {}), "Facility"),
        (("a", -1, 0.5, "training", 1e-5, {}), "Round"),
        (("a", 1.0, 0.5, "training", 1e-5, {}), "Round"),
        (("a", 1, -0.5, "training", 1e-5, {}), "epsilon_total"),
        (("a", 1, float("inf"), "training", 1e-5, {}), "epsilon_total"),
        (("a", 1, 0.5, "audit", 1e-5, {}), "kind"),
        (("a", 1, 0.5, "training", 0.0, {}), "delta"),
        (("a", 1, 0.5, "training", 1e-5, {"x": object()}), "JSON"),
        (("a", 1, 0.5, "training", 1e-5, {"x": float("nan")}), "JSON"),
        (("a", 1, 0.5, "training", 1e-5, [1, 2]), "dict"),
    ],
)
def test_record_validates_input(ledger: PrivacyLedger, args: tuple[object, ...], match: str) -> None:
    with pytest.raises(PrivacyLedgerError, match=match):
        ledger.record(*args)  # type: ignore[arg-type]
    assert ledger.entries() == []


def test_exhausted_needs_a_positive_budget(ledger: PrivacyLedger) -> None:
    with pytest.raises(PrivacyLedgerError):
        ledger.exhausted("clinic-a", 0.0)


def test_ledger_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "privacy.db"
    with PrivacyLedger(path) as led:
        led.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 40, "note": "first"})
        led.record("clinic-a", 1, 0.2, "release", 0.0, {"what": "count"})
        before = led.entries()
    with PrivacyLedger(path) as led:
        assert led.entries() == before
        assert led.spent("clinic-a") == pytest.approx(0.7)
        assert led.entries("clinic-a")[1].details == {"steps": 40, "note": "first"}
        # Rules still apply after reopening.
        led.record("clinic-a", 1, 0.5, "training", 1e-5, {"steps": 40, "note": "first"})
        with pytest.raises(PrivacyLedgerError):
            led.record("clinic-a", 2, 0.4, "training", 1e-5, {})
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_synchronous_full(ledger: PrivacyLedger) -> None:
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 == FULL


def test_entries_filter_and_order(ledger: PrivacyLedger) -> None:
    ledger.record("b", 2, 0.3, "training", 1e-5, {})
    ledger.record("a", 1, 0.1, "release", 0.0, {})
    ledger.record("a", 1, 0.2, "training", 1e-5, {})
    assert [(e.facility, e.round, e.kind) for e in ledger.entries()] == [
        ("a", 1, "release"),
        ("a", 1, "training"),
        ("b", 2, "training"),
    ]
    assert [e.facility for e in ledger.entries("b")] == ["b"]
    assert ledger.entries("nobody") == []


def test_budget_exceeded_carries_details() -> None:
    err = BudgetExceeded("over", projected=1.2, budget=1.0, facility="clinic-a")
    assert isinstance(err, Exception) and str(err) == "over"
    assert (err.projected, err.budget, err.facility) == (1.2, 1.0, "clinic-a")
