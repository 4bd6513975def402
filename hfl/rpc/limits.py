"""Request size limits: per server, enforced by gRPC itself, and per method, checked BEFORE a request is
parsed.

grpcio has one receive limit per server (``grpc.max_receive_message_length``), not per method, and a
server's service config cannot set it. So:

- each server's gRPC receive limit is the largest request any of ITS methods accepts (``server_limit``:
  2 MiB for the authority, 64 KiB for the leader, model-sized for fog and validator). gRPC
  refuses a larger message with RESOURCE_EXHAUSTED while it arrives, without buffering it;
- within a server, hfl.rpc.errors.ErrorInterceptor replaces every handler's request deserializer with
  one that first compares ``len(bytes)`` with ``request_limit(method)``: a request above its method's
  limit is refused with RESOURCE_EXHAUSTED and never parsed. gRPC has received those bytes by then (up
  to the server's limit); they are freed as soon as the call is refused.

A method not listed gets CONTROL: fail small.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

MODEL = 256 * MIB  # carries a model, an update or bucket sums (serde.MAX_VECTOR_LENGTH float64 values)
SECAGG = 8 * MIB  # carries one entry per bucket member (keys, encrypted shares, ids)
REPORT = 2 * MIB  # a leader's round report (hfl.bounds.MAX_REPORT of JSON plus ids)
CONTROL = 64 * KIB  # everything else: registration, status, certificates, releases, health

_A, _F, _L, _V = (
    "/hfl.v1.AuthorityService/",
    "/hfl.v1.FogService/",
    "/hfl.v1.LeaderService/",
    "/hfl.v1.ValidatorService/",
)
CHUNK = 4 * MIB - 64 * KIB  # bytes of a message one frame may carry (what a receiver accepts)
SEND_CHUNK = 256 * KIB  # bytes per frame a sender cuts (at most CHUNK): small, so that the first frames of
# many answers arriving at once cost the fog little while it takes them in turn (services/fog/links.py)
FRAME = CHUNK + 4 * KIB  # one frame of a facility's connection (a chunk plus its header), under gRPC's 4 MiB

# Exact method names; anything else is CONTROL.
REQUEST_LIMITS: dict[str, int] = {
    _A + "ReportRound": REPORT,
    _A + "ReportPrivacySpend": 256 * KIB,  # spend details JSON (hfl.bounds.MAX_JSON)
    _F + "RunRound": MODEL,
    _F + "SubmitUpdate": MODEL,
    _F + "Evaluate": MODEL,
    _F + "Connect": FRAME,  # each frame; whole messages are reassembled and capped by hfl.rpc.link
    _V + "Vote": MODEL,
}


def request_limit(method: str) -> int:
    """The largest request (serialised bytes) ``method`` accepts."""
    return REQUEST_LIMITS.get(method, CONTROL)


# The service each role's server offers (the health service is CONTROL everywhere).
ROLE_SERVICES = {"authority": _A, "fog": _F, "leader": _L, "validator": _V}  # a facility serves nothing


def server_limit(role: str) -> int:
    """gRPC's receive limit for ``role``'s server: the largest request one of its methods accepts."""
    prefix = ROLE_SERVICES.get(role)
    sizes = [n for m, n in REQUEST_LIMITS.items() if prefix is not None and m.startswith(prefix)]
    return max([CONTROL, *sizes])
