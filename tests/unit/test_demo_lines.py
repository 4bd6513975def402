"""What `hfl demo` prints beside each round's progress line."""

from __future__ import annotations

from hfl.demo import quarantine_lines


def test_a_facility_is_announced_once_in_the_round_it_is_quarantined() -> None:
    assert quarantine_lines((), ()) == []
    assert quarantine_lines((), ("facility-12",)) == [
        "  facility-12 quarantined: left out of every later round"
    ]
    assert quarantine_lines(("facility-12",), ("facility-12",)) == []
    assert quarantine_lines(("facility-12",), ("facility-12", "facility-03", "facility-11")) == [
        "  facility-03 quarantined: left out of every later round",
        "  facility-11 quarantined: left out of every later round",
    ]
    assert quarantine_lines(("facility-12",), ()) == []  # released: nothing to announce here
