"""Buckets sized for the threat (hfl/robust/sizing.py): what a bucketing withstands, and refusals that
say what would work."""

from __future__ import annotations

import itertools
import re

import pytest

from hfl.robust.reputation import default_max_byzantine, federation_test
from hfl.robust.rules import RULES, check_rule, get_rule
from hfl.robust.sizing import Sizing, SizingError, buckets_needed, size_federation, withstands
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
    if n >= 1:  # declaring what they withstand: larger buckets are then not refused for quarantine
        assert size_federation(n, rule=rule, bucket_size=s, max_byzantine=expected).withstands == expected


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
        "12 facilities in 4 buckets of 3, combined with the trimmed mean, withstand up to 1 "
        "misbehaving facility in every round, wherever the draw puts them"
    )


@pytest.mark.parametrize(
    ("n", "drawn", "sizes"),
    [
        (8, 0, "2 buckets of 4"),
        (10, 0, "3 buckets of 3 or 4"),
        (13, 0, "4 buckets of 3 or 4"),
        (9, 3, "3 buckets of 3"),
        (10, 3, "3 buckets of at least 3"),
    ],
)
def test_sentences_say_the_sizes_the_buckets_really_have(n: int, drawn: int, sizes: str) -> None:
    """8 facilities in buckets of 3 make 2 buckets of 4 (hfl.schedule.bucket_sizes), not "about 3"."""
    sizing = Sizing(n, 3, "trimmed_mean", 0, drawn)
    assert sizing.sentence().startswith(f"{n} facilities in {sizes}, combined with")


TOO_FEW_FOR_QUARANTINE = "too few to single out"


@pytest.mark.parametrize(
    ("n", "s", "m", "buckets"),
    [(12, 4, 2, 3), (24, 4, 4, 6), (48, 4, 8, 12), (48, 8, 8, 6), (6, 4, 1, 1), (18, 4, 3, 4), (24, 5, 4, 4)],
)
def test_buckets_too_large_to_single_out_the_assumed_offenders_are_refused(
    n: int, s: int, m: int, buckets: int
) -> None:
    """Nothing declared: one facility in six may misbehave, and quarantine needs two buckets per offender.
    Buckets of 3 would give that many, so a larger size that does not is refused, saying what works."""
    with pytest.raises(SizingError) as err:
        size_federation(n, bucket_size=s)
    text = str(err.value)
    plural = "facility" if m == 1 else "facilities"
    assert text.startswith(
        f"{n} facilities in buckets of {s} make {buckets} bucket{'s' if buckets != 1 else ''}, too few to "
        f"single out the {m} misbehaving {plural} a federation of {n} is assumed to have (one in six; "
        f"quarantine needs 2 buckets per misbehaving facility, so {2 * m}): use buckets of "
    ), text
    assert "\n" not in text


def test_the_refusal_names_the_example_of_the_issue() -> None:
    with pytest.raises(SizingError) as err:
        size_federation(12, bucket_size=4)
    assert str(err.value) == (
        "12 facilities in buckets of 4 make 3 buckets, too few to single out the 2 misbehaving facilities a "
        "federation of 12 is assumed to have (one in six; quarantine needs 2 buckets per misbehaving "
        "facility, so 4): use buckets of 3 (HFL_BUCKET_SIZE=3), or declare HFL_MAX_BYZANTINE=1 if you "
        "accept a weaker guarantee"
    )


@pytest.mark.parametrize(
    ("n", "s", "declared"),
    [
        (12, 3, None),
        (24, 3, None),
        (48, 3, None),
        (3, 3, None),  # even buckets of 3 cannot single one out: runs as before, saying what it withstands
        (7, 3, None),
        (5, 4, None),  # buckets of 3 make one bucket too
        (8, 4, None),  # one assumed offender, two buckets
        (11, 4, None),
        (12, 4, 1),  # a smaller declared number, with larger buckets
        (24, 4, 2),
        (48, 4, 5),
        (48, 8, 2),
    ],
)
def test_buckets_that_can_single_out_the_offenders_or_cannot_be_helped_are_accepted(
    n: int, s: int, declared: int | None
) -> None:
    size_federation(n, bucket_size=s, max_byzantine=declared)


def test_the_plain_mean_is_not_refused_for_quarantine() -> None:
    """The plain mean promises nothing in the first place and is there for comparison runs, which must be
    able to use the same buckets as the defended run they are compared with."""
    assert size_federation(12, rule="mean", bucket_size=4).withstands == 0
    assert size_federation(48, rule="mean", bucket_size=8).withstands == 0
    for rule in ("median", "multi_krum", "centered_clipping"):
        with pytest.raises(SizingError, match=TOO_FEW_FOR_QUARANTINE):
            size_federation(12, rule=rule, bucket_size=4)


def test_buckets_of_3_or_fewer_are_never_refused_for_quarantine() -> None:
    for n, s in itertools.product(range(1, 60), (1, 2, 3)):
        size_federation(n, bucket_size=s, secagg=False)  # no SizingError: nothing is declared


@pytest.mark.parametrize("rule", [r for r in RULES if get_rule(r).tolerates_bad_buckets])
def test_refused_exactly_when_larger_buckets_lose_what_buckets_of_3_give(rule: str) -> None:
    for n, s in itertools.product(range(3, 80), range(3, 12)):
        want = 2 * default_max_byzantine(n)
        try:
            size_federation(n, rule=rule, bucket_size=s)
            refused = False
        except SizingError as e:
            assert TOO_FEW_FOR_QUARANTINE in str(e)
            refused = True
        assert refused == (max(1, n // s) < want <= n // 3), (n, s)


def test_every_suggestion_in_a_quarantine_refusal_works() -> None:
    """The bucket size it names gives enough buckets, and the smaller number it offers to declare passes
    the every-round check and gives a quarantine test that can tell offenders apart."""
    checked = 0
    for rule in ("trimmed_mean", "median", "multi_krum"):
        for n, s in itertools.product(range(3, 80), range(4, 12)):
            try:
                size_federation(n, rule=rule, bucket_size=s)
                continue
            except SizingError as e:
                message = str(e)
            tips = _suggestions(message)
            assert 3 <= tips["bucket_size"] < s, message
            size_federation(n, rule=rule, bucket_size=tips["bucket_size"])
            assert tips["bucket_size"] == s - 1 or n // (tips["bucket_size"] + 1) < 2 * default_max_byzantine(
                n
            )
            if "max_byzantine" in tips:
                m = tips["max_byzantine"]
                assert 1 <= m < default_max_byzantine(n), message
                size_federation(n, rule=rule, bucket_size=s, max_byzantine=m)
                assert federation_test(n, s, m).detects, message
            checked += 1
    assert checked > 100
