"""Size limits of every field hfl stores or forwards, in one place.

Anything a caller sends that ends up in the registry, a signed round configuration, the ledger or a log
is checked against these limits at the boundary (hfl.rpc.serde and the services' request checks), and
refused with a clear InvalidInput (INVALID_ARGUMENT) before it is stored, forwarded or echoed. The limits
are generous for real deployments and small enough that one registration cannot inflate every round.
"""

from __future__ import annotations

from collections.abc import Iterable

from hfl.errors import InvalidInput

MAX_ID = 64  # node ids, bucket ids, roles, kinds, rule names
MAX_ADDRESS = 255  # host:port (a DNS name is at most 253 characters)
MAX_NAME = 64  # specialties and other short names
MAX_REASON = 500  # free text in people's words: release reasons, vote and bucket reasons
MAX_JSON = 64 * 1024  # JSON side fields (reports, plan extras, spend details, round events)
MAX_REPORT = 1024 * 1024  # a round report or committee draw (JSON that grows with the federation)
MAX_LIST = 10_000
ATTEMPT_BITS = 16
MAX_ROUND = 2 ** (62 - ATTEMPT_BITS) - 1  # round numbers (round and attempt are packed into 62 bits)
MAX_ATTEMPT = (1 << ATTEMPT_BITS) - 1  # attempts of one round (0xFFFF)

# One round attempt as one number. There are two encodings, and both must keep their meaning: each is
# signed or stored, so changing one would break running peers or existing state files.
#
# * ``secagg_round_id``: ``(round << 16) | attempt``. Signed into every secure-aggregation message (the
#   protocol's round id, hfl.rpc.serde.secagg_round), so a message of one attempt is refused in any other.
# * ``attempt_slot``: ``round × 1000 + attempt``. Stored: the privacy ledger's slots (privacy.db,
#   hfl.privacy.federation.spend_slot) and the authority's reputation and attendance observations (its
#   registry; the round a facility was quarantined in is read back with ``slot_round``).
SLOTS_PER_ROUND = 1000


def secagg_round_id(round_: int, attempt: int) -> int:
    """``(round << 16) | attempt`` (unchecked; hfl.rpc.serde.secagg_round checks the ranges)."""
    return (round_ << ATTEMPT_BITS) | attempt


def attempt_slot(round_: int, attempt: int) -> int:
    """``round × 1000 + attempt`` (unchecked; strictly increasing while attempts stay below 1000)."""
    return round_ * SLOTS_PER_ROUND + attempt


def slot_round(slot: int) -> int:
    """The round of an ``attempt_slot`` number."""
    return slot // SLOTS_PER_ROUND


def text(value: str, what: str, limit: int, *, required: bool = False) -> str:
    """``value`` if it is at most ``limit`` characters (and not empty when ``required``)."""
    if required and not value:
        raise InvalidInput(f"{what} is missing")
    if len(value) > limit:
        raise InvalidInput(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    return value


def shorten(value: str, limit: int = MAX_REASON) -> str:
    """For what hfl itself sends: ``value`` cut to ``limit`` characters (a receiver refuses longer)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def node_id(value: str, what: str = "node id") -> str:
    return text(value, what, MAX_ID, required=True)


def ids(values: Iterable[str], what: str, *, limit: int = MAX_LIST) -> tuple[str, ...]:
    """A repeated field of ids: at most ``limit`` of them, each 1 to MAX_ID characters."""
    out: list[str] = []
    for v in values:
        if len(out) >= limit:
            raise InvalidInput(f"{what} lists more than {limit} entries")
        out.append(node_id(v, f"an entry of {what}"))
    return tuple(out)


def address(value: str, what: str = "address") -> str:
    """host:port, at most MAX_ADDRESS characters, no spaces or control characters."""
    text(value, what, MAX_ADDRESS)
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} must be host:port without spaces or control characters")
    return value


def reason(value: str, what: str = "reason") -> str:
    return text(value, what, MAX_REASON)


def round_attempt(round_: int, attempt: int) -> tuple[int, int]:
    """A round number and attempt as stored (SQLite integers are 64-bit signed) and signed."""
    if not 0 <= round_ <= MAX_ROUND:
        raise InvalidInput(f"round {round_} is out of range (0 to {MAX_ROUND})")
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise InvalidInput(f"round attempt {attempt} is out of range (0 to {MAX_ATTEMPT})")
    return int(round_), int(attempt)
