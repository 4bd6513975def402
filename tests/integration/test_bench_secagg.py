"""Smoke test of `hfl bench secagg` (separate fog and facility processes on loopback, with mutual TLS and
without; about 30 s)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_secagg_json_is_exact_and_complete() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfl.cli",
            "bench",
            "secagg",
            "--facilities",
            "4",
            "--dim",
            "1000",
            "--bucket",
            "4",
            "--rounds",
            "1",
            "--drop-rate",
            "0",  # dropouts are tested elsewhere; without them the expansion bound below always holds
            "--tls-cost",  # plaintext first, then mutual TLS (the default)
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout)
    assert (row["facilities"], row["dim"], row["bucket"], row["rounds"]) == (4, 1000, 4, 1)
    assert row["bytes_per_facility"] > 0 and row["plain_bytes_per_facility"] > 0
    assert row["bytes_per_facility"] > row["plain_bytes_per_facility"]  # masks, keys and shares cost bytes
    assert row["peak_rss_mb"] > 0 and row["peak_rss_facility_process_mb"] > 0  # Linux: /proc is there
    assert row["ratio"] > 0
    assert row["abandoned_buckets_total"] == 0
    assert row["plain_max_abs_error"] < 1e-5  # float32 on the wire: close to the exact sum, not equal
    assert row["exact"] is True
    assert row["secure_round_s"] > 0 and row["plain_round_s"] > 0 and row["keystream_gbps"] > 0
    assert row["dropouts_median"] == 0
    assert row["tls"] is True  # the default: as in a federation
    assert row["no_tls"]["exact"] is True and row["no_tls"]["secure_round_s"] > 0
    assert row["tls_cost"]["secure"] > 0 and row["tls_cost"]["plain"] > 0
    assert len(row["load_before"]) == 3
    assert row["expansion"] >= 1.0  # a masked update is never smaller than its float32 plaintext
    for path in ("secure", "plain"):  # CPU by process; the floor is the total spread over every core
        cpu = row[f"{path}_cpu_s"]
        assert min(cpu["fog"], cpu["facilities"], cpu["driver"]) >= 0 and cpu["cores"] >= 1
        assert cpu["total"] > 0
        assert cpu["floor_s"] == pytest.approx(cpu["total"] / cpu["cores"], abs=2e-3)
