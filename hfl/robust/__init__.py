"""Robust aggregation over bucket sums (see rules.py), attacks, and reputation."""

from hfl.robust.attacks import ATTACKS, alie_z, apply_attack, flip_labels
from hfl.robust.offline import aggregate_files
from hfl.robust.reputation import QuarantineTest, Reputation, ReputationError, federation_test, with_refused
from hfl.robust.rules import (
    DEFAULT_RULE,
    REGISTRY,
    RULES,
    AggregateResult,
    Rule,
    aggregate,
    check_rule,
    default_f,
    get_rule,
    guarantee,
    max_faults,
    policy_violation,
    screen,
)

__all__ = [
    "ATTACKS",
    "DEFAULT_RULE",
    "REGISTRY",
    "RULES",
    "AggregateResult",
    "QuarantineTest",
    "Reputation",
    "ReputationError",
    "Rule",
    "aggregate",
    "aggregate_files",
    "alie_z",
    "apply_attack",
    "check_rule",
    "default_f",
    "federation_test",
    "flip_labels",
    "get_rule",
    "guarantee",
    "max_faults",
    "policy_violation",
    "screen",
    "with_refused",
]
