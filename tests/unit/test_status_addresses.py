"""Which federation `hfl status` asks: addresses given by hand, else the demo run's endpoints.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfl.status import _addresses


@pytest.fixture
def last_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder where an earlier demo left runs/latest/endpoints.json behind."""
    run = tmp_path / "runs" / "latest"
    run.mkdir(parents=True)
    rows = [
        {"role": "leader", "address": "127.0.0.1:1111"},
        {"role": "authority", "address": "127.0.0.1:2222"},
    ]
    (run / "endpoints.json").write_text(json.dumps(rows))
    monkeypatch.chdir(tmp_path)
    return run


def test_no_address_reads_the_last_demo(last_demo: Path) -> None:
    assert _addresses(None, None, None) == ("127.0.0.1:1111", "127.0.0.1:2222")
    assert _addresses(str(last_demo), None, None) == ("127.0.0.1:1111", "127.0.0.1:2222")


def test_an_address_given_by_hand_is_not_mixed_with_the_last_demo(last_demo: Path) -> None:
    # Another federation's authority: the demo's leader must not be reported as part of it.
    assert _addresses(None, None, "10.0.0.5:7000") == (None, "10.0.0.5:7000")
    assert _addresses(None, "10.0.0.6:7001", None) == ("10.0.0.6:7001", None)


def test_a_run_folder_named_fills_in_what_was_not_given(last_demo: Path) -> None:
    assert _addresses(str(last_demo), None, "10.0.0.5:7000") == ("127.0.0.1:1111", "10.0.0.5:7000")


def test_the_console_and_operator_commands_read_the_last_demo_only_without_addresses(last_demo: Path) -> None:
    from hfl.cli import build_parser
    from hfl.console.data import Connection

    for argv in (
        ["console"],
        ["release", "f", "--reason", "x"],
        ["revoke", "n", "--reason", "x"],
        ["status"],
    ):
        assert build_parser().parse_args(argv).run is None  # resolved by what else is given
    assert Connection.from_args().leader == "127.0.0.1:1111"
    assert Connection.from_args().run == Path("runs/latest")  # its ledger can be checked
    by_hand = Connection.from_args(authority="10.0.0.5:7000")
    assert (by_hand.leader, by_hand.authority, by_hand.run) == (None, "10.0.0.5:7000", None)
