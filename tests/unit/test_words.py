"""Counting in plain English: one shared rule for plurals (the demo, status and ledger lines use it)."""

from __future__ import annotations

from hfl.words import counted


def test_counted_says_one_in_the_singular_and_knows_the_irregular_plurals() -> None:
    assert counted(1, "facility") == "1 facility"
    assert counted(2, "facility") == "2 facilities"
    assert counted(0, "round") == "0 rounds"
    assert counted(1, "committed round") == "1 committed round"
    assert counted(10, "committed round") == "10 committed rounds"
    assert counted(8, "process") == "8 processes"
    assert counted(3, "bucket") == "3 buckets"
