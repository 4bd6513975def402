"""What the leader's round report means for the authority, without I/O: check that it names only the
round's buckets and registered fogs, turn it into the evidence the reputation takes (a member whose
update a fog refused becomes its own group, hfl.robust.reputation.with_refused) and count who was
absent (hfl.schedule.Attendance), then say what the registry keeps of the round. The servicer
(services/authority/service.py ReportRound) reads the registry, calls these, stores and logs."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from hfl.domain import RoundReport
from hfl.errors import InvalidInput
from hfl.robust.reputation import FLAG_KINDS, Reputation, with_refused
from hfl.schedule import Attendance


@dataclass(frozen=True)
class Evidence:
    """A checked round report, as the reputation takes it."""

    groups: dict[str, list[str]]  # the round's buckets; each refused member is a group of its own
    flags: dict[str, str]  # flagged group -> kind ("norm" for each refused member)
    scheduled: list[str]  # every facility scheduled in the round, bucket by bucket
    gone: list[str]  # facilities left out from now on: they missed too many rounds in a row


def check_report(report: RoundReport, buckets: Mapping[str, Sequence[str]], fogs: Collection[str]) -> None:
    """Refuse a report that flags a bucket that was not part of the round (or with an unknown kind of flag),
    or that names a fog that is not registered."""
    if set(report.flags) - set(buckets) or any(k not in FLAG_KINDS for k in report.flags.values()):
        raise InvalidInput("the round report flags buckets that were not part of the round")
    if not set(report.fogs_down) | set(report.fogs_up) <= set(fogs):
        raise InvalidInput("the round report names fogs that are not registered")


def take_report(
    report: RoundReport,
    buckets: Mapping[str, Sequence[str]],
    fogs: Collection[str],
    attendance: Attendance,
    observation: int,
) -> Evidence:
    """Check the report (:func:`check_report`) and count its absences in ``attendance`` for
    ``observation`` (hfl.bounds.attempt_slot). A replayed or inconsistent report raises InvalidInput and
    changes nothing."""
    check_report(report, buckets, fogs)
    scheduled = [m for members in buckets.values() for m in members]
    try:
        # A fog refused these members' updates as malformed: each is its own group, blame is certain.
        groups, flags = with_refused(buckets, dict(report.flags), list(report.refused))
        # The first change of state, and it refuses a replayed report before anything changes
        # (the reputation checks too).
        gone = attendance.observe(observation, scheduled, list(report.absent))
    except ValueError as e:  # ReputationError included
        raise InvalidInput(f"the round report is inconsistent: {e}") from None
    return Evidence(groups, flags, scheduled, gone)


def round_record(
    attempt: int,
    committed: bool,
    block_hash: bytes,
    evidence: Evidence,
    votes: Mapping[str, bool | None],
    newly_quarantined: Sequence[str],
    reputation: Reputation,
) -> dict[str, object]:
    """What the registry keeps of one round report (the console's Security view reads it)."""
    return {
        "attempt": attempt,
        "committed": committed,
        "block_hash": block_hash.hex(),
        "flags": evidence.flags,
        "votes": dict(votes),
        "newly_quarantined": list(newly_quarantined),
        "suspicion": {f: round(reputation.suspicion(f), 4) for f in sorted(set(evidence.scheduled))},
    }
