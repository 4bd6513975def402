"""hfl bench secagg's CPU report: medians by process, and a round's total as the median of the rounds'
totals, over the cores for the shortest such a round could take."""

from __future__ import annotations

import os

import pytest

from hfl.bench.secagg import _cpu_summary


def test_the_total_is_the_median_round_not_the_sum_of_the_medians() -> None:
    rows = [{"cpu_s": [1.0, 4.0, 0.1]}, {"cpu_s": [2.0, 3.0, 0.2]}, {"cpu_s": [1.5, 6.0, 0.1]}]
    cpu = _cpu_summary("secure", rows)["secure_cpu_s"]
    assert (cpu["fog"], cpu["facilities"], cpu["driver"]) == (1.5, 4.0, 0.1)  # 5.6 added up
    assert cpu["total"] == pytest.approx(5.2)  # round totals 5.1, 5.2, 7.6
    assert cpu["floor_s"] == pytest.approx(5.2 / (os.cpu_count() or 1), abs=1e-3)


def test_no_report_when_a_process_could_not_be_read() -> None:
    assert _cpu_summary("plain", [{"cpu_s": [1.0, None, 0.1]}]) == {}
    assert _cpu_summary("plain", []) == {}
