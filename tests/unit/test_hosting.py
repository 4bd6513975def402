"""The facilities file of a multi-facility host (hfl/hosting.py): every mistake is refused in plain words,
naming the file and the facility, before anything starts."""

from __future__ import annotations

import pytest

from hfl.errors import ConfigError
from hfl.hosting import MAX_HOSTED, check_entry, hosted_entries

SETTINGS = {"node_id", "state_dir", "shard", "metrics_port", "role"}


def entry(node: str, **more: str) -> dict[str, str]:
    return {"HFL_NODE_ID": node, "HFL_STATE_DIR": f"/s/{node}", **more}


def test_the_entries_are_returned_in_order() -> None:
    doc = {"facilities": [entry("a"), entry("b", HFL_SHARD="1/2")]}
    assert hosted_entries(doc, "f.json", SETTINGS) == [entry("a"), entry("b", HFL_SHARD="1/2")]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([entry("a")], 'f.json must hold {"facilities": \\[...\\]} with at least one facility'),
        ({"facilities": []}, "with at least one facility"),
        ({"facilities": entry("a")}, "with at least one facility"),
        ({"facilities": [entry(f"f{i}") for i in range(MAX_HOSTED + 1)]}, "one process hosts at most 1000"),
        ({"facilities": [entry("a"), entry("b"), entry("a")]}, "f.json: facility a is listed twice"),
        ({"facilities": [entry("a"), "b"]}, "f.json: facility #2 must be an object of HFL_\\* names"),
    ],
)
def test_a_bad_file_is_refused(doc: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hosted_entries(doc, "f.json", SETTINGS)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"HFL_NODE_ID": "a", "HFL_STATE_DIR": 3}, "#1 must be an object of HFL_\\* names to text values"),
        (entry("a", HFL_NOPE="1"), "#1: HFL_NOPE is not an hfl setting"),
        (entry("a", NODE_ID="b"), "#1: NODE_ID is not an hfl setting"),
        (entry("a", HFL_METRICS_PORT="9"), "#1: HFL_METRICS_PORT is shared by the whole process"),
        (entry("a", HFL_ROLE="fog"), "#1: HFL_ROLE is shared by the whole process"),
        ({"HFL_NODE_ID": "a"}, "#1 needs its own HFL_STATE_DIR"),
        ({"HFL_NODE_ID": "", "HFL_STATE_DIR": "/s"}, "#1 needs its own HFL_NODE_ID"),
    ],
)
def test_a_bad_entry_is_refused(bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_entry(bad, "f.json: facility #1", SETTINGS)
