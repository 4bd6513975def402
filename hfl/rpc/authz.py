"""Who may call what: the authorization table (method -> roles allowed, identity binding, rate limit)
and the server interceptor that enforces it from the caller's mTLS certificate.

Refusals: no usable certificate -> UNAUTHENTICATED (in practice the TLS handshake already refuses
connections without a certificate of this federation); a certificate of the wrong role, or a request
naming another node than the certificate -> PERMISSION_DENIED; too fast -> RESOURCE_EXHAUSTED. A method
missing from the table is refused (fail closed): add new RPCs here.

Servicers read the caller with ``caller()`` (None when HFL_TLS=false) for checks that need the request's
meaning, e.g. a facility only takes StartRound from the fog of its bucket.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from hfl.crypto.x509 import Identity
from hfl.errors import NotAllowed, Unauthenticated, clip
from hfl.rpc.ratelimit import TokenBuckets
from hfl.rpc.settings import NodeSettings
from hfl.rpc.tls import NodeTls

log = logging.getLogger("hfl.authz")

NODE_ROLES = frozenset({"leader", "fog", "facility", "validator"})
ANYONE = NODE_ROLES | {"authority", "operator"}
OVERSEERS = frozenset({"authority", "operator"})  # may read every node's entry and privacy spend

_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("hfl_caller", default=None)


def caller() -> Identity | None:
    """The certificate identity of the peer of the RPC being served (None without TLS)."""
    return _CALLER.get()


def caller_id() -> str | None:
    """The node id in the caller's certificate (None without TLS)."""
    who = caller()
    return who.node_id if who is not None else None


def sees_everything() -> bool:
    """Whether the caller may read the whole federation's registry and privacy ledger: the operator
    (and anyone when TLS is off, a debugging mode with no identities)."""
    who = caller()
    return who is None or who.role in OVERSEERS


def require_caller_is(node_id: str, what: str) -> None:
    """Raise NotAllowed unless TLS is off or the caller's certificate names ``node_id``."""
    who = caller()
    if who is not None and who.node_id != node_id:
        raise NotAllowed(f"{what} must come from {node_id}, not from {who.node_id}")


# ------------------------------------------------------------------------------------------ bindings
def _bind_register(request: Any, who: Identity) -> None:
    if request.node.node_id != who.node_id or request.node.role != who.role:
        raise NotAllowed(
            f"your certificate is for {who.role} {who.node_id}; you cannot register "
            f"{clip(request.node.role, 20)} {clip(request.node.node_id)}"
        )


def _bind_submit(request: Any, who: Identity) -> None:
    if request.node_id != who.node_id:
        raise NotAllowed(
            f"your certificate is for {who.node_id}; you cannot send an update as {clip(request.node_id)}"
        )


def _bind_privacy(request: Any, who: Identity) -> None:
    if request.spend.facility_id != who.node_id:
        raise NotAllowed(
            f"your certificate is for {who.node_id}; you cannot report privacy spent by "
            f"{clip(request.spend.facility_id)}"
        )


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    bind: Callable[[Any, Identity], None] | None = None
    limit: str = "rpc"  # which token bucket: "rpc" (per caller and method) or "submit" (per caller)


_A, _F, _L, _V = (
    "/hfl.v1.AuthorityService/",
    "/hfl.v1.FogService/",
    "/hfl.v1.LeaderService/",
    "/hfl.v1.ValidatorService/",
)
LEADER, FOG, FACILITY, OPERATOR = (
    frozenset({"leader"}),
    frozenset({"fog"}),
    frozenset({"facility"}),
    frozenset({"operator"}),
)

# Exact method names, or a prefix ending in "*".
TABLE: dict[str, Rule] = {
    _A + "Register": Rule(NODE_ROLES, _bind_register),
    _A + "GetRoundConfig": Rule(LEADER),
    _A + "ReportRound": Rule(LEADER),
    _A + "ListNodes": Rule(ANYONE),  # others than the operator see only their own entry
    _A + "ReportPrivacySpend": Rule(FACILITY, _bind_privacy, "submit"),
    _A + "GetPrivacySpend": Rule(FACILITY | OPERATOR),  # a facility sees only its own ε
    _A + "RenewCertificate": Rule(NODE_ROLES),
    _A + "GetRevocations": Rule(NODE_ROLES | OPERATOR),
    _A + "ReleaseFacility": Rule(OPERATOR),
    _A + "RevokeNode": Rule(OPERATOR),
    _A + "GetSecurityReport": Rule(OPERATOR),
    _A + "QuarantineFacility": Rule(OPERATOR),
    _A + "IssueEnrolmentToken": Rule(OPERATOR),
    _A + "ListOperatorActions": Rule(OPERATOR),  # read-only: the console's Security view
    _F + "RunRound": Rule(LEADER),
    _F + "SubmitUpdate": Rule(FACILITY, _bind_submit, "submit"),
    _F + "Evaluate": Rule(LEADER),
    _F + "Connect": Rule(FACILITY),  # the facility's one connection; its certificate names it
    _L + "GetStatus": Rule(OPERATOR),
    _L + "GetModel": Rule(OPERATOR),
    _L + "WatchRounds": Rule(OPERATOR),
    _L + "GetLedger": Rule(OPERATOR),
    _L + "ControlTraining": Rule(OPERATOR),
    _L + "ListOperatorActions": Rule(OPERATOR),  # read-only: the whole chain, for `hfl model export --leader`
    _V + "Vote": Rule(LEADER),
    "/grpc.health.v1.Health/Check": Rule(ANYONE),
    "/grpc.health.v1.Health/Watch": Rule(ANYONE),
}
ENROL_METHOD = _A + "Enroll"


def rule_for(method: str) -> Rule | None:
    rule = TABLE.get(method)
    if rule is not None:
        return rule
    for key, r in TABLE.items():
        if key.endswith("*") and method.startswith(key[:-1]):
            return r
    return None


def peer_host(context: grpc.aio.ServicerContext) -> str:
    """The caller's IP address (without the port) for per-address limits."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


def certificate_of(context: grpc.aio.ServicerContext) -> bytes | None:
    auth = context.auth_context() or {}
    pems = list(auth.get("x509_pem_cert") or [])
    return bytes(pems[0]) if pems else None


_Check = Callable[[grpc.aio.ServicerContext], Identity | None]  # before the request is parsed
_Bind = Callable[[Any, Identity | None], None]  # after: checks that need the request's content

# The identity the pre-parse check found, for the call it ran for (the same task runs the handler).
_CHECKED: contextvars.ContextVar[tuple[int, Identity | None] | None] = contextvars.ContextVar(
    "hfl_checked", default=None
)


def _identity(check: _Check, context: grpc.aio.ServicerContext) -> Identity | None:
    done = _CHECKED.get()
    if done is not None and done[0] == id(context):
        return done[1]
    return check(context)


def _wrap(handler: grpc.RpcMethodHandler, check: _Check, bind: _Bind) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            who = _identity(check, context)
            bind(request, who)
            token = _CALLER.set(who)
            try:
                return await inner_uu(request, context)
            finally:
                _CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None and not inspect.isasyncgenfunction(handler.unary_stream):
        # a stream answered with context.write() (the standard health service's Watch)
        inner_uw: Any = handler.unary_stream

        async def unary_write(request: Any, context: grpc.aio.ServicerContext) -> None:
            who = _identity(check, context)
            bind(request, who)
            _CALLER.set(who)
            await inner_uw(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_write,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            who = _identity(check, context)
            bind(request, who)
            _CALLER.set(who)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:  # FogService.Connect: who is calling is known before any frame
        inner_ss: Any = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            who = _identity(check, context)
            _CALLER.set(who)
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    # Client-streaming methods are not part of hfl's API: refuse them, never pass them unchecked.
    return _refuse_all(handler)


def _refuse_all(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this kind of call is not served")

    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def acting_for(who: Identity | None) -> contextvars.Token[Identity | None]:
    """Make ``who`` the caller() of the work that follows in this task: a facility serves its fog's
    calls over the connection it opened itself, and the fog is the peer its certificate check named
    (services/facility/dial.py). Undo with ``_CALLER.reset`` via ``done_acting``."""
    return _CALLER.set(who)


def done_acting(token: contextvars.Token[Identity | None]) -> None:
    _CALLER.reset(token)


def _no_binding(request: Any, who: Identity | None) -> None:
    return None


class _CheckingInterceptor(grpc.aio.ServerInterceptor):
    """Runs ``check_for(method)`` on every call (who is calling; it needs no request), then
    ``bind_for(method)`` on the parsed request; the identity found is caller().

    Pass ``precheck`` to hfl.rpc.errors.ErrorInterceptor so the first check runs BEFORE the request is
    parsed: a caller that may not call a method never gets its request parsed. Without it, both run
    after parsing (still before the servicer)."""

    def check_for(self, method: str) -> _Check:
        raise NotImplementedError

    def bind_for(self, method: str) -> _Bind:
        return _no_binding

    def precheck(self, method: str) -> Callable[[grpc.aio.ServicerContext], None]:
        check = self.check_for(method)

        def run(context: grpc.aio.ServicerContext) -> None:
            _CHECKED.set((id(context), check(context)))

        return run

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return _wrap(handler, self.check_for(method), self.bind_for(method))


class AuthInterceptor(_CheckingInterceptor):
    """mTLS identity -> role check -> rate limit -> identity binding, for every RPC of a node's server.
    Install it inside hfl.rpc.errors.ErrorInterceptor so refusals become clear statuses."""

    def __init__(self, tls: NodeTls, settings: NodeSettings) -> None:
        self.tls = tls
        self.rpc_limits = TokenBuckets(settings.rpc_rate, settings.rpc_burst)
        self.submit_limits = TokenBuckets(settings.submit_rate, settings.submit_burst)

    def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        pem = certificate_of(context)
        if pem is None:
            raise Unauthenticated("a client certificate of this federation is required")
        return self.tls.check_peer(pem)

    def check_for(self, method: str) -> _Check:
        rule = rule_for(method)
        short = method.rpartition("/")[2]

        def check(context: grpc.aio.ServicerContext) -> Identity:
            who = self.identify(context)
            if rule is None:
                log.warning(
                    "refused %s: the method is not in the authorization table (hfl/rpc/authz.py)", method
                )
                raise NotAllowed(f"{short} is not open to anyone on this server")
            if who.role not in rule.roles:
                raise NotAllowed(f"a {who.role} may not call {short}")
            if rule.limit == "submit":
                self.submit_limits.take(who.node_id, "submissions")
            else:
                self.rpc_limits.take(f"{who.node_id} {method}", f"{short} calls")
            return who

        return check

    def bind_for(self, method: str) -> _Bind:
        rule = rule_for(method)
        if rule is None or rule.bind is None:
            return _no_binding
        bind = rule.bind

        def run(request: Any, who: Identity | None) -> None:
            if who is not None:
                bind(request, who)

        return run


class EnrolInterceptor(_CheckingInterceptor):
    """The enrolment port (TLS without client certificates): only Enroll, rate-limited per address."""

    def __init__(self, settings: NodeSettings) -> None:
        self.limits = TokenBuckets(settings.enrol_rate, settings.enrol_burst)

    def check_for(self, method: str) -> _Check:
        def check(context: grpc.aio.ServicerContext) -> None:
            if method != ENROL_METHOD:
                raise NotAllowed(
                    "only enrolment is served on this port; use the main port with a certificate"
                )
            self.limits.take(peer_host(context), "enrolment requests")
            return None

        return check
