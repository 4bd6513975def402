"""Errors raised by the secure-aggregation protocol. All derive from SecAggError."""

from __future__ import annotations

__all__ = [
    "BucketAbandoned",
    "DuplicateMessageError",
    "InconsistentUnmaskRequestError",
    "InvalidInputError",
    "InvalidMessageError",
    "KeySubstitutionError",
    "ReconstructionError",
    "SecAggConfigError",
    "SecAggError",
    "ShareDecryptionError",
    "StageError",
    "UnknownMemberError",
    "WrongBucketError",
    "WrongRoundError",
]


class SecAggError(Exception):
    """Base class for every secure-aggregation refusal."""


class SecAggConfigError(SecAggError, ValueError):
    """The bucket settings are unusable (too few members, bad threshold, mismatched sizes)."""


class StageError(SecAggError):
    """A step or message arrived out of order, or the party already finished or aborted."""


class WrongRoundError(SecAggError):
    """A message belongs to another training round (for example a replay of an old one)."""


class WrongBucketError(SecAggError):
    """A message belongs to another bucket."""


class DuplicateMessageError(SecAggError):
    """The same party sent the same kind of message twice in one stage."""


class UnknownMemberError(SecAggError):
    """A message names a party that is not (or no longer) part of this stage of the bucket."""


class InvalidMessageError(SecAggError):
    """A message is malformed or its contents do not match what the protocol expects."""


class InvalidInputError(SecAggError, ValueError):
    """A local model update is unusable (wrong length, NaN/infinite, or not clipped)."""


class KeySubstitutionError(SecAggError):
    """A key advertisement is not signed by the member it names: someone swapped or altered keys."""


class ShareDecryptionError(SecAggError):
    """An encrypted share failed authentication: it was tampered with or misrouted."""


class InconsistentUnmaskRequestError(SecAggError):
    """The aggregator's survivor/dropout lists are contradictory; answering could reveal an update."""


class BucketAbandoned(SecAggError):
    """Too few members remain to finish the bucket safely; its round contribution is dropped."""


class ReconstructionError(SecAggError):
    """The unmasking shares do not reconstruct consistent secrets, so no sum can be released."""
