"""The console's data layer without a federation: plain sentences for what is missing, summary.json read."""

from __future__ import annotations

import json
from pathlib import Path

from hfl.console.data import Connection, Node, Nodes, snapshot
from hfl.console.launch import streamlit_command


def test_no_addresses_gives_plain_problems() -> None:
    snap = snapshot(Connection(leader=None, authority=None, tls=None))
    assert snap.nodes is None and snap.leader is None
    assert snap.problems == ("No authority address is known.", "No leader address is known.")


def test_unreachable_services_become_sentences(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"rounds": 3}))
    conn = Connection(leader="127.0.0.1:1", authority="127.0.0.1:1", tls=None, run=tmp_path)
    snap = snapshot(conn)
    assert snap.summary == {"rounds": 3}
    assert [p.split(" at ")[0] for p in snap.problems] == ["The authority", "The leader"]
    assert all("did not answer" in p for p in snap.problems)


def test_nodes_by_role() -> None:
    nodes = Nodes((Node("f1", "facility", "a", "cardiology"), Node("v1", "validator", "b")), (), ())
    assert [n.node_id for n in nodes.by_role("facility")] == ["f1"]


def test_console_listens_on_loopback_with_xsrf_on() -> None:
    cmd = streamlit_command("127.0.0.1", 8501)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.enableXsrfProtection") + 1] == "true"
    assert "--browser.serverAddress" not in cmd


def test_console_on_every_interface_does_not_look_up_its_public_address() -> None:
    # Streamlit asks checkip.amazonaws.com unless the address it prints is given (the container case).
    cmd = streamlit_command("0.0.0.0", 8501)
    assert cmd[cmd.index("--browser.serverAddress") + 1] == "localhost"
