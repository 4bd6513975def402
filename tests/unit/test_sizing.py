"""Buckets sized for the threat (hfl/robust/sizing.py): what a bucketing withstands, and refusals that
say what would work."""

from __future__ import annotations

import itertools
import re

import pytest

from hfl.robust.rules import RULES, check_rule
from hfl.robust.sizing import SizingError, buckets_needed, size_federation, withstands
from hfl.schedule import bucket_sizes


@pytest.mark.parametrize(
    ("rule", "n", "s", "expected"),
    [
        ("trimmed_mean", 12, 3, 1),  # 4 buckets: f = 1
        ("trimmed_mean", 12, 4, 1),  # 3 buckets: f = 1
        ("trimmed_mean", 7, 3, 0),  # 2 buckets
        ("trimmed_mean", 24, 3, 3),
        ("trimmed_mean", 48, 3, 7),
        ("median", 15, 3, 2),
        ("multi_krum", 12, 3, 0),  # multi-Krum needs 2f+3 buckets
        ("multi_krum", 15, 3, 1),
        ("mean", 300, 3, 0),
        ("trimmed_mean", 2, 3, 0),  # one bucket of 2
        ("trimmed_mean", 0, 3, 0),  # no facility, no bucket
    ],
)
def test_known_answers(rule: str, n: int, s: int, expected: int) -> None:
    assert withstands(rule, n, s) == expected
    if n >= 1:
        assert size_federation(n, rule=rule, bucket_size=s).withstands == expected


def test_buckets_needed_inverts_the_rules_own_limit() -> None:
    """The sizing agrees with what the aggregation rule itself accepts (hfl.robust.rules.check_rule)."""
    for rule, m in itertools.product(RULES, range(0, 8)):
        need = buckets_needed(rule, m)
        if need is None:
            assert rule == "mean" and m > 0
            continue
        check_rule(rule, need, m if rule != "mean" else 0)
        if need > 1:
            with pytest.raises(ValueError):
                check_rule(rule, need - 1, m)


@pytest.mark.parametrize("rule", [r for r in RULES if r != "mean"])
def test_accepted_means_every_placement_is_tolerated(rule: str) -> None:
    """Accepted ⇔ however the m misbehaving facilities fall into the buckets, the bad buckets are within
    what the rule tolerates with this round's bucket count (each spoils at most its own bucket)."""
    for n, s, m in itertools.product(range(3, 40), range(3, 7), range(0, 6)):
        n_buckets = len(bucket_sizes(n, s))
        try:
            size_federation(n, rule=rule, bucket_size=s, max_byzantine=m)
            accepted = True
        except SizingError:
            accepted = False
        try:
            check_rule(rule, n_buckets, m)  # m bad buckets at worst: each spoils only its own
            tolerated = True
        except ValueError:
            tolerated = False
        assert accepted == tolerated, (n, s, m)


def _suggestions(message: str) -> dict[str, int]:
    out = {}
    for key, pattern in (
        ("bucket_size", r"HFL_BUCKET_SIZE=(\d+)"),
        ("n", r"enrol at least (\d+) facilities"),
        ("max_byzantine", r"declare HFL_MAX_BYZANTINE=(\d+)"),
    ):
        if found := re.search(pattern, message):
            out[key] = int(found.group(1))
    return out


def test_every_suggestion_in_a_refusal_works() -> None:
    checked = 0
    for rule in ("trimmed_mean", "median", "multi_krum"):
        for n, s, m in itertools.product(range(3, 40), range(3, 8), range(1, 5)):
            try:
                size_federation(n, rule=rule, bucket_size=s, max_byzantine=m)
                continue
            except SizingError as e:
                message = str(e)
            tips = _suggestions(message)
            assert "n" in tips, message
            size_federation(tips["n"], rule=rule, bucket_size=s, max_byzantine=m)
            if "max_byzantine" in tips:
                size_federation(n, rule=rule, bucket_size=s, max_byzantine=tips["max_byzantine"])
            else:
                assert rule == "multi_krum" and "use HFL_RULE=trimmed_mean" in message, message
                size_federation(n, rule="trimmed_mean", bucket_size=s, max_byzantine=0)
            if "bucket_size" in tips:
                assert 3 <= tips["bucket_size"] < s
                size_federation(n, rule=rule, bucket_size=tips["bucket_size"], max_byzantine=m)
            checked += 1
    assert checked > 100


def test_the_rule_setting_must_cover_the_declared_threat() -> None:
    with pytest.raises(SizingError, match="HFL_F=1 lets the rule leave out only 1 bad bucket"):
        size_federation(30, max_byzantine=2, f=1)
    size_federation(30, max_byzantine=2, f=2)
    assert size_federation(30, f=1).withstands == 1  # nothing declared: f caps what is withstood


def test_the_plain_mean_withstands_nothing() -> None:
    with pytest.raises(SizingError, match="the plain mean withstands no misbehaving facility"):
        size_federation(30, rule="mean", max_byzantine=1)
    assert "cannot promise" in size_federation(30, rule="mean", max_byzantine=0).sentence()


def test_without_secure_aggregation_smaller_buckets_may_be_suggested() -> None:
    with pytest.raises(SizingError, match=r"use buckets of 2 \(HFL_BUCKET_SIZE=2\)"):
        size_federation(10, bucket_size=3, max_byzantine=2, secagg=False)
    with pytest.raises(SizingError) as err:
        size_federation(10, bucket_size=3, max_byzantine=2, secagg=True)
    assert "use buckets of" not in str(err.value)


def test_sentences_are_plain() -> None:
    assert size_federation(12).sentence() == (
        "12 facilities in 4 buckets of about 3, combined with the trimmed mean, withstand up to 1 "
        "misbehaving facility in every round, wherever the draw puts them"
    )
