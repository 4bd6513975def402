"""The authority records which fog each bucket was drawn in, so the quarantine test judges a facility
against its own fog's buckets (hfl.robust.reputation: a pool per fog)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hfl.robust.reputation import Reputation
from services.authority.registry import Registry


def test_pools_are_recorded_with_the_configuration(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.record_config(3, 1, b"h" * 32, b"\x00" * 32, {"b0": ["x", "y", "z"]}, {"b0": "fog-1"})
    assert reg.config_buckets(3, 1) == {"b0": ["x", "y", "z"]}
    assert reg.config_pools(3, 1) == {"b0": "fog-1"}
    assert reg.config_pools(3, 2) is None  # never issued
    reg.record_config(4, 0, b"h" * 32, b"\x00" * 32, {"b0": ["x", "y", "z"]})
    assert reg.config_pools(4, 0) is None  # nothing recorded: one pool
    reg.close()


def test_the_layout_gives_buckets_and_pools_in_one_read(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.record_config(
        3, 1, b"h" * 32, b"\x00" * 32, {"b0": ["x", "y"], "b1": ["z"]}, {"b0": "f1", "b1": "f2"}
    )
    reg.record_config(4, 0, b"h" * 32, b"\x00" * 32, {"b0": ["x"]})
    assert reg.config_layout(3, 1) == ({"b0": ["x", "y"], "b1": ["z"]}, {"b0": "f1", "b1": "f2"})
    assert reg.config_layout(4, 0) == ({"b0": ["x"]}, None)  # pools not recorded
    assert reg.config_layout(3, 2) is None  # never issued
    reg.close()


def test_a_registry_from_before_pools_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE configs (round INTEGER, attempt INTEGER, hash BLOB, head BLOB, buckets TEXT, "
        "PRIMARY KEY (round, attempt))"
    )
    old.execute("INSERT INTO configs VALUES (1, 0, x'00', x'00', '{\"b0\": [\"x\"]}')")
    old.commit()
    old.close()
    reg = Registry(path)
    assert reg.config_buckets(1, 0) == {"b0": ["x"]} and reg.config_pools(1, 0) is None
    reg.record_config(2, 0, b"h" * 32, b"\x00" * 32, {"b0": ["x"]}, {"b0": "fog-2"})
    assert reg.config_pools(2, 0) == {"b0": "fog-2"}
    reg.close()


def test_a_flag_in_one_fog_is_no_evidence_about_another_fogs_facilities() -> None:
    rep = Reputation()
    buckets = {f"b{i}": [f"f{i}{j}" for j in range(3)] for i in range(8)}
    pools = {f"b{i}": "fog-a" if i < 4 else "fog-b" for i in range(8)}
    rep.observe(1, buckets, {"b0": "norm"}, pools)
    up, down = rep.test.steps(12, [3])
    assert rep.evidence("f00") == up and rep.evidence("f10") == down  # judged within fog-a's 12
    assert rep.evidence("f40") == 0.0  # fog-b had no flag: nothing either way
    one_pool = Reputation()
    one_pool.observe(1, buckets, {"b0": "norm"})
    assert one_pool.evidence("f40") < 0  # judged as one pool of 24, it would count as a clean round
