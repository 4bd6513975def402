"""Errors with a meaning for callers. Services raise these; hfl.rpc.errors maps them to gRPC status
codes in one place. Messages are written for people: say what was wrong and what to do."""

from __future__ import annotations


class HflError(Exception):
    """Base class of errors a caller can act on."""


class InvalidInput(HflError, ValueError):
    """The request itself is malformed (sizes, dimensions, non-finite values, unknown names)."""


class StaleRound(HflError):
    """The message belongs to a round or stage that is over or has not started."""


class NotAllowed(HflError):
    """The caller may not do this (wrong role, not a member of this bucket, quarantined)."""


class NotFound(HflError):
    """The thing asked for does not exist."""


class AlreadyDone(HflError):
    """A duplicate: the same message was already accepted."""


class NotReady(HflError):
    """The service cannot do this yet (not enough nodes registered, still starting)."""


class BudgetSpent(NotReady):
    """No facility can train any more because every one that could has used up its privacy budget."""


class Unauthenticated(HflError):
    """A signature or identity check failed."""


class RateLimited(HflError):
    """The caller sent too many requests too fast; it should slow down and retry."""


class TooLarge(HflError):
    """The request is larger than the call accepts (refused before it is read)."""


class ConfigError(HflError, ValueError):
    """Bad configuration: stops start-up with a one-line message."""


CLIP_DEFAULT = 80


def clip(value: object, limit: int = CLIP_DEFAULT) -> str:
    """``repr`` of user input, cut to about ``limit`` characters for error messages and logs: a caller
    can never make hfl write more than this of what it sent ("…(50000000 characters)" says how much was
    cut)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…({len(text)} characters)"
