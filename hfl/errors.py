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


class Unauthenticated(HflError):
    """A signature or identity check failed."""


class RateLimited(HflError):
    """The caller sent too many requests too fast; it should slow down and retry."""


class ConfigError(HflError, ValueError):
    """Bad configuration: stops start-up with a one-line message."""
