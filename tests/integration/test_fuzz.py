"""Hypothesis-driven fuzzing of EVERY RPC of every service of a running federation (mTLS on).

Each method is called with the certificate of a role allowed to call it (so the request reaches the
service, not just the authorization check), with (a) random messages built from the method's protobuf
descriptor (odd sizes, huge numbers, empty and garbage fields), (b) bit-flipped serialisations, and
(c) raw bytes that are not a message at all. Every answer must be a clear status (never UNKNOWN, never
INTERNAL: bytes that are not a message of the method's type are INVALID_ARGUMENT, see hfl.rpc.errors),
every service must stay up, and no state may change: ledger head, registered nodes, quarantine list.

Two parts:
- per method, Hypothesis-driven: HFL_FUZZ_EXAMPLES examples per method (default 12), three cases each;
- at volume (test_fuzz_every_rpc_and_stream_at_volume): HFL_FUZZ_CASES cases (default 10,000) spread over
  every RPC and stream, the health service included, pipelined over one channel per server and role:
  random, bit-flipped, truncated, concatenated, unknown-field and oversized messages, NaN and infinite
  numbers, huge strings and long lists. State checked before and after: ledger, registry, quarantine,
  attendance and privacy spend. About a minute for the whole file on 2 cores.
With HFL_RECORD_RESULTS=1 the count actually run is written to bench/results/fuzz_count.json.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pd
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfl.demo import Federation, Proc
from hfl.ledger import LedgerStore
from hfl.proto.v1 import (
    authority_pb2,
    authority_pb2_grpc,
    common_pb2,
    facility_pb2,
    fog_pb2,
    leader_pb2,
    validator_pb2,
)
from hfl.rpc.authz import TABLE, rule_for
from hfl.rpc.limits import CHUNK, FRAME, MIB, request_limit
from hfl.rpc.tls import NodeTls, sync_channel
from tests.conftest import record_result
from tests.integration.helpers import client_tls, start_federation, wait_for_round

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("HFL_FUZZ_EXAMPLES", "12"))
SERVICES = {
    "AuthorityService": (authority_pb2, "authority"),
    "FogService": (fog_pb2, "fog-1"),
    "LeaderService": (leader_pb2, "leader"),
    "ValidatorService": (validator_pb2, "validator-1"),
}
# Who calls, per role: real node ids so identity bindings can pass.
CALLER_IDS = {
    "leader": "leader",
    "fog": "fog-1",
    "facility": "facility-01",
    "validator": "validator-1",
    "operator": "operator",
    "authority": "authority",
}
COUNT: dict[str, int] = {"cases": 0}
FINE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}


def all_methods() -> list[tuple[str, pd.MethodDescriptor]]:
    out = []
    for svc_name, (module, _node) in SERVICES.items():
        svc = module.DESCRIPTOR.services_by_name[svc_name]
        for m in svc.methods:
            out.append((f"/hfl.v1.{svc_name}/{m.name}", m))
    return out


METHODS = all_methods()


@pytest.fixture(scope="module")
def federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Federation, dict[str, Proc], Path]]:
    out = tmp_path_factory.mktemp("fuzz")
    fed, procs = start_federation(
        out,
        facilities=3,
        fogs=1,
        validators=1,
        rounds=1,
        extra_env={"HFL_RPC_BURST": "100000", "HFL_SUBMIT_BURST": "100000", "HFL_ENROL_BURST": "100000"},
    )
    wait_for_round(procs["leader"].info["address"], 1)
    deadline = time.monotonic() + 60  # the leader reports the round and finishes: the federation is quiet
    while not _status(procs)["finished"] and time.monotonic() < deadline:
        time.sleep(0.3)
    try:
        yield fed, procs, out
    finally:
        fed.stop_all()
        record_result(
            "fuzz_count.json",
            {"fuzz_cases": COUNT["cases"], "methods": len(METHODS), "examples_per_method_and_kind": EXAMPLES},
        )


def _status(procs: dict[str, Proc]) -> dict[str, Any]:
    from tests.integration.helpers import leader_status

    s = leader_status(procs["leader"].info["address"])
    return {"round": s.committed_round, "head": s.head_hash, "finished": s.finished}


REVOKE = "/hfl.v1.AuthorityService/RevokeNode"
CONNECT = "/hfl.v1.FogService/Connect"
STRANGER = "facility-99"  # a facility certificate of this federation, not a member of it
QUARANTINE = "/hfl.v1.AuthorityService/QuarantineFacility"
RELEASE = "/hfl.v1.AuthorityService/ReleaseFacility"


def _without(state: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """``state`` without what the operator's commands the fuzzer happened to get right did: the registry
    entries of nodes an accepted RevokeNode removed or an accepted QuarantineFacility revoked, and the
    quarantines that an accepted QuarantineFacility or ReleaseFacility started or ended."""
    changed = caller.revoked | caller.quarantined | caller.released
    keep = [n for n in state["nodes"] if common_pb2.NodeInfo.FromString(n).node_id not in changed]
    quarantined = sorted(set(state["quarantined"]) - caller.quarantined - caller.released)
    return {**state, "nodes": keep, "quarantined": quarantined}


def _state(fed: Federation, procs: dict[str, Proc], out: Path) -> dict[str, Any]:
    with sync_channel(procs["authority"].info["address"], fed.operator()) as ch:
        stub = authority_pb2_grpc.AuthorityServiceStub(ch)
        nodes = stub.ListNodes(authority_pb2.ListNodesRequest(), timeout=10)
        spend = stub.GetPrivacySpend(authority_pb2.GetPrivacySpendRequest(), timeout=10)
    with LedgerStore(out / "state" / "leader" / "ledger.db") as store:
        head = store.head()
        assert head is not None
        return {
            "head": head.hash,
            "blocks": len(store),
            "nodes": sorted(n.SerializeToString(deterministic=True) for n in nodes.nodes),
            "quarantined": list(nodes.quarantined),
            "inactive": list(nodes.inactive),  # attendance
            "privacy": sorted(spend.epsilon_spent.items()),
            "exhausted": list(spend.exhausted),
        }


# ------------------------------------------------------------------------------------------ strategies
_INTS = st.one_of(
    st.integers(0, 3), st.integers(0, 2**16), st.sampled_from([2**31 - 1, 2**32 - 1, 2**63 - 1])
)


def message_strategy(desc: pd.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        one = field_strategy(f, depth)
        if one is None:
            continue
        if f.is_repeated:
            one = st.lists(one, max_size=3)
        fields[f.name] = st.one_of(st.none(), one)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for name, strat in fields.items():
            value = draw(strat)
            if value is None:
                continue
            f = desc.fields_by_name[name]
            if f.is_repeated:
                if f.type == pd.FieldDescriptor.TYPE_MESSAGE:
                    for v in value:
                        getattr(msg, name).add().CopyFrom(v)
                else:
                    getattr(msg, name).extend(value)
            elif f.type == pd.FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return build()


def field_strategy(f: pd.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    t = f.type
    T = pd.FieldDescriptor
    if t == T.TYPE_MESSAGE:
        if f.message_type.GetOptions().map_entry or depth >= 3:
            return None
        return message_strategy(f.message_type, depth + 1)
    if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return _INTS
    if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    if t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if t == T.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values])
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == T.TYPE_FLOAT else 64)
    if t == T.TYPE_BOOL:
        return st.booleans()
    if t == T.TYPE_STRING:
        return st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                ["facility-01", "fog-1", "b0", "leader", "{}", "[", "validator-1", '{"flags": 1}']
            ),
        )
    if t == T.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64),
            st.binary(min_size=32, max_size=32),
            st.just(b"\x00" * 104),
            st.just(b"\xff" * 8 * 13),
        )
    return None


def _flip(data: bytes, positions: list[int]) -> bytes:
    b = bytearray(data)
    for p in positions:
        if b:
            b[p % len(b)] ^= 1 << (p % 8)
    return bytes(b)


# ------------------------------------------------------------------------------------------ calling
class Caller:
    def __init__(self, fed: Federation, procs: dict[str, Proc], out: Path) -> None:
        self.procs = procs
        self.tls: dict[str, NodeTls] = {
            role: client_tls(out, role, node) for role, node in CALLER_IDS.items()
        }
        # Connect is fuzzed as a facility that is not a member: the real facilities stay connected.
        self.tls["link"] = client_tls(out, "facility", STRANGER)
        self.channels: dict[tuple[str, str], grpc.Channel] = {}
        # RevokeNode is an operator's command: a well-formed one naming a real node is carried out (not
        # refused input), so the nodes it removed are allowed to leave the registry, and only those.
        self.revoked: set[str] = set()
        self.quarantined: set[str] = set()
        self.released: set[str] = set()
        ca = (out / "state" / "authority" / "ca" / "ca.pem").read_bytes()
        self.enrol = grpc.secure_channel(
            procs["authority"].info["enrol_address"], grpc.ssl_channel_credentials(ca)
        )

    def channel(self, address: str, role: str) -> grpc.Channel:
        key = (address, role)
        if key not in self.channels:
            self.channels[key] = sync_channel(address, self.tls[role])
        return self.channels[key]

    def call(self, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
        service = method.split("/")[1].split(".")[-1]
        node = SERVICES[service][1]
        if method.endswith("/Enroll"):
            ch = self.enrol
        else:
            rule = rule_for(method)
            role = sorted(rule.roles)[0] if rule else "operator"
            ch = self.channel(self.procs[node].info["address"], "link" if method == CONNECT else role)
        COUNT["cases"] += 1
        if dict(METHODS)[method].client_streaming:  # Connect: one frame, then the facility hangs up
            return _stream_call(ch, method, [payload])
        if dict(METHODS)[method].server_streaming:  # WatchRounds, GetLedger
            fn_s = ch.unary_stream(method)
            try:
                for _ in fn_s(payload, timeout=10):
                    pass
                return grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                return e.code(), e.details() or ""
        fn = ch.unary_unary(method)
        try:
            fn(payload, timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
        self.note_ok(method, payload)
        return grpc.StatusCode.OK, ""

    def note_ok(self, method: str, payload: bytes) -> None:
        if method == REVOKE:
            self.revoked.add(authority_pb2.RevokeNodeRequest.FromString(payload).node_id.strip())
        elif method == QUARANTINE:
            self.quarantined.add(authority_pb2.QuarantineFacilityRequest.FromString(payload).node_id.strip())
        elif method == RELEASE:
            self.released.add(authority_pb2.ReleaseFacilityRequest.FromString(payload).node_id.strip())

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.enrol.close()


@pytest.fixture(scope="module")
def caller(federation: tuple[Federation, dict[str, Proc], Path]) -> Iterator[Caller]:
    fed, procs, out = federation
    c = Caller(fed, procs, out)
    try:
        yield c
    finally:
        c.close()


def _stream_call(ch: grpc.Channel, method: str, frames: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """A facility's connection (FogService.Connect) that sends ``frames`` (raw bytes) and hangs up."""
    try:
        for _ in ch.stream_stream(method)(iter(frames), timeout=10):
            pass
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _check(method: str, code: grpc.StatusCode, details: str) -> None:
    if code == grpc.StatusCode.OK:
        return
    assert code in FINE, f"{method}: {code.name} {details!r}"
    assert "Traceback" not in details and 'File "' not in details, f"{method} leaked internals: {details!r}"


# ------------------------------------------------------------------------- the facilities' connections
def _frame(call_id: int, seq: int, total: int, chunk: bytes) -> bytes:
    return facility_pb2.LinkFrame(call_id=call_id, seq=seq, total=total, chunk=chunk).SerializeToString()


def _metric(procs: dict[str, Proc], node: str, name: str) -> float:
    import urllib.request

    port = procs[node].info["metrics_port"]
    from hfl.health import metric_values

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = metric_values(text, name)
    assert values, f"{name} is not among {node}'s metrics"
    return sum(values)


_REPLY = facility_pb2.FacilityReply(start_round=facility_pb2.StartRoundResponse()).SerializeToString()
BAD_STREAMS = {
    "out of order": (
        [_frame(1, 1, 10, b"x" * 5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "came before the call's first frame",
    ),
    "two messages interleaved": (
        [_frame(1, 0, 10, b"x" * 5), _frame(2, 0, 10, b"y" * 5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "began before call 1 was complete",
    ),
    "an oversized frame": (
        [_frame(1, 0, 2 * CHUNK, b"x" * (CHUNK + 1))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "frames carry at most",
    ),
    "a frame larger than any": (
        [_frame(1, 0, 3 * CHUNK, b"x" * (2 * CHUNK))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "accepts at most",
    ),
    "an oversized message": (
        [_frame(1, 0, 2**40, b"x")],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "announces",
    ),
    "an answer to a call never made (a replay)": (
        [_frame(1, 0, len(_REPLY), _REPLY)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "never asked or was already answered",
    ),
    "a message cut short": (
        [_frame(1, 0, 10, b"x" * 5)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "ended in the middle of call 1",
    ),
    "bytes that are no frame": ([b"\xff\xff\xff"], grpc.StatusCode.INVALID_ARGUMENT, "not a valid message"),
}


def test_bad_input_on_a_facility_connection_closes_that_connection_only(
    caller: Caller, federation: tuple[Federation, dict[str, Proc], Path]
) -> None:
    """Each kind of bad input closes the offending connection with a clear status; the real facilities'
    connections stay open and the federation's state does not change. A node that is not a facility
    (the wrong party) may not open one at all. (First in this file: the fuzzing below revokes nodes.)"""
    fed, procs, out = federation
    before = _state(fed, procs, out)
    fog = str(procs["fog-1"].info["address"])
    assert _metric(procs, "fog-1", "hfl_fog_connected_facilities") == 3
    for case, (frames, want, words) in BAD_STREAMS.items():
        code, details = _stream_call(caller.channel(fog, "link"), CONNECT, frames)
        assert (code, words in details) == (want, True), f"{case}: {code.name} {details!r}"
        assert len(details) < 300 and "Traceback" not in details
    for role in ("validator", "fog", "leader"):
        code, details = _stream_call(caller.channel(fog, role), CONNECT, [])
        assert code == grpc.StatusCode.PERMISSION_DENIED and "may not call Connect" in details, details
    assert _metric(procs, "fog-1", "hfl_fog_connected_facilities") == 3  # the members are still there
    assert _without(_state(fed, procs, out), caller) == _without(before, caller)


def test_every_method_is_covered() -> None:
    names = {m for m, _ in METHODS}
    assert len(names) >= 20
    for m in names:
        if not m.endswith("/Enroll"):
            assert rule_for(m) is not None, f"{m} is missing from the authorization table"
    # ... and every entry of the table names real RPCs (a renamed method must not leave a stale rule)
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    names |= {f"/grpc.health.v1.Health/{m.name}" for m in health.methods}
    for key in TABLE:
        if key.endswith("*"):
            assert any(m.startswith(key[:-1]) for m in names), f"{key} matches no RPC"
        else:
            assert key in names, f"{key} names no RPC of the generated services"


@pytest.mark.parametrize("method", [m for m, _ in METHODS], ids=[m.rpartition("/")[2] for m, _ in METHODS])
def test_fuzz_method(
    method: str, caller: Caller, federation: tuple[Federation, dict[str, Proc], Path]
) -> None:
    fed, procs, out = federation
    desc = dict(METHODS)[method].input_type
    before = _state(fed, procs, out)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        msg=message_strategy(desc),
        flips=st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
        raw=st.binary(max_size=200),
    )
    def run(msg: Message, flips: list[int], raw: bytes) -> None:
        data = msg.SerializeToString()
        code, details = caller.call(method, data)
        _check(method, code, details)
        code, details = caller.call(method, _flip(data, flips))
        _check(method, code, details)
        code, details = caller.call(method, raw)
        _check(method, code, details)

    run()
    after = _state(fed, procs, out)
    assert after["head"] == before["head"] and after["blocks"] == before["blocks"], "the ledger changed"
    assert _without(after, caller)["quarantined"] == _without(before, caller)["quarantined"]
    if not method.endswith("/Register"):
        assert _without(after, caller)["nodes"] == _without(before, caller)["nodes"], "the registry changed"
    for name, p in procs.items():
        assert p.popen.poll() is None, f"{name} crashed while fuzzing {method}"


# ------------------------------------------------------------------------------------------ volume
# Many cases per second over one channel per (server, role), calls pipelined: every RPC and stream,
# including the health service, with random, mutated, truncated, concatenated and oversized messages,
# NaN and infinite numbers, huge strings and long lists. The generator is seeded (reproducible); it makes
# test inputs, nothing secret.
VOLUME = int(os.environ.get("HFL_FUZZ_CASES", "10000"))
IN_FLIGHT = 48
HEALTH = [
    (f"/grpc.health.v1.Health/{m.name}", m) for m in health_pb2.DESCRIPTOR.services_by_name["Health"].methods
]
_ODD = ["{}", "[", '{"flags": 1}', '{"refused": 5}', "null", "\x00", "127.0.0.1:1"]
_IDS = ["facility-01", "facility-02", "fog-1", "b0", "leader", "validator-1", "operator", "authority", ""]


class Mutator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def string(self, small: bool = False) -> str:
        r = self.rng.random() * (0.65 if small else 1.0)
        if r < 0.35:
            return self.rng.choice(_IDS)
        if r < 0.55:
            return "".join(chr(self.rng.randrange(0x20, 0x3000)) for _ in range(self.rng.randrange(40)))
        if r < 0.65:
            return self.rng.choice(
                ["{}", "[", '{"flags": 1}', '{"refused": 5}', "null", "\x00", "127.0.0.1:1"]
            )
        if r < 0.97:
            return "x" * self.rng.choice([65, 256, 501, 5_000])  # just over the field limits
        return "y" * 70_000  # over the control calls' message limit

    def number(self, f: pd.FieldDescriptor) -> Any:
        T = pd.FieldDescriptor
        t = f.type
        if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
            return self.rng.choice([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, 5e-324, 0.5])
        if t == T.TYPE_BOOL:
            return self.rng.random() < 0.5
        if t == T.TYPE_ENUM:
            return self.rng.choice([v.number for v in f.enum_type.values])
        unsigned = t in (T.TYPE_UINT64, T.TYPE_FIXED64, T.TYPE_UINT32, T.TYPE_FIXED32)
        bits = (
            64 if t in (T.TYPE_UINT64, T.TYPE_FIXED64, T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64) else 32
        )
        top = 2**bits - 1 if unsigned else 2 ** (bits - 1) - 1
        low = 0 if unsigned else -(2 ** (bits - 1))
        return self.rng.choice([0, 1, 2, 3, top, low, self.rng.randint(low, top), 2**16])

    def blob(self, small: bool = False) -> bytes:
        n = self.rng.choice([0, 8, 32, 64] if small or self.rng.random() < 0.9 else [104, 5_000, 100_000])
        return self.rng.randbytes(n)

    def message(self, desc: pd.Descriptor, depth: int = 0, small: bool = False) -> Message:
        """A random message; ``small``: short values only (inside long lists: messages stay < ~1 MB)."""
        msg = message_factory.GetMessageClass(desc)()
        for f in desc.fields:
            if self.rng.random() < 0.35:
                continue
            count = 1
            if f.is_repeated:
                count = self.rng.choice([0, 1, 2, 3])
                if not small and depth < 2 and self.rng.random() < 0.03:
                    count = 1_000  # a long list
            for _ in range(count):
                self._set(msg, f, depth, small or count > 3)
        return msg

    def _set(self, msg: Message, f: pd.FieldDescriptor, depth: int, small: bool) -> None:
        T = pd.FieldDescriptor
        if f.type == T.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry:
                vf = f.message_type.fields_by_name["value"]
                value_of_map = self.string(small) if vf.type == T.TYPE_STRING else self.number(vf)
                getattr(msg, f.name)[self.string()[:100]] = value_of_map
                return
            if depth >= 3:
                return
            value = self.message(f.message_type, depth + 1, small)
            if f.is_repeated:
                getattr(msg, f.name).add().CopyFrom(value)
            else:
                getattr(msg, f.name).CopyFrom(value)
            return
        if f.type == T.TYPE_STRING:
            value: Any = self.string(small)
        elif f.type == T.TYPE_BYTES:
            value = self.blob(small)
        else:
            value = self.number(f)
        if f.is_repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)

    def payload(self, desc: pd.Descriptor, limit: int) -> tuple[str, bytes]:
        """(kind, bytes) of one case."""
        data = self.message(desc).SerializeToString()
        r = self.rng.random()
        if r < 0.45:
            return "random", data
        if r < 0.6:
            b = bytearray(data or b"\x00")
            for _ in range(self.rng.randrange(1, 6)):
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            return "flipped", bytes(b)
        if r < 0.7:
            return "truncated", data[: self.rng.randrange(len(data) + 1)]
        if r < 0.78:
            return "concatenated", data + self.message(desc).SerializeToString()
        if r < 0.86:
            return "raw", self.rng.randbytes(self.rng.randrange(300))
        if r < 0.92:  # an unknown field number with any wire type
            tag = (self.rng.randrange(16, 2**20) << 3) | self.rng.choice([0, 1, 2, 5])
            return "unknown field", data + _varint(tag) + self.rng.randbytes(self.rng.randrange(1, 12))
        if limit <= 2 * 1024 * 1024:  # one byte more than the method accepts (model-sized ones: too slow)
            return "oversized", data + b"\x0a" * max(0, limit + 1 - len(data))
        return "long string", data + b"\xfa\x07" + _varint(300_000) + b"z" * 300_000  # field 127


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _target(method: str, procs: dict[str, Proc]) -> tuple[str, str]:
    """(address, caller role) for a method: a role allowed to call it, so cases reach the servicer."""
    if method.startswith("/grpc.health"):
        return str(procs["fog-1"].info["address"]), "facility"
    if method == CONNECT:
        return str(procs["fog-1"].info["address"]), "link"
    service = method.split("/")[1].split(".")[-1]
    node = SERVICES[service][1]
    rule = rule_for(method)
    return str(procs[node].info["address"]), sorted(rule.roles)[0] if rule else "operator"


def test_fuzz_every_rpc_and_stream_at_volume(
    caller: Caller, federation: tuple[Federation, dict[str, Proc], Path]
) -> None:
    """HFL_FUZZ_CASES (default 10,000) cases over every RPC and stream: zero crashes (never INTERNAL or
    UNKNOWN, every service still serving) and zero state changes (ledger, registry, quarantine,
    attendance, privacy spend)."""
    fed, procs, out = federation
    before = _state(fed, procs, out)
    methods = [*METHODS, *HEALTH]
    mut = Mutator(seed=18)
    per_method = -(-VOLUME // len(methods))
    order = [i for i in range(len(methods)) for _ in range(per_method)]
    mut.rng.shuffle(order)
    pending: deque[tuple[str, str, Any, bytes]] = deque()
    seen: dict[str, set[str]] = {}
    bad: list[str] = []

    def settle(method: str, kind: str, fut: Any, data: bytes, stream: bool = False) -> None:
        try:
            if not stream:
                fut.result()
            else:  # a stream: its first answer (health Watch never ends), then hang up
                for _ in fut:
                    break
                fut.cancel()
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.CANCELLED:
            code = grpc.StatusCode.OK  # we hung up
        elif code == grpc.StatusCode.OK:
            caller.note_ok(method, data)
        seen.setdefault(method, set()).add(code.name)
        if code != grpc.StatusCode.OK and (
            code not in FINE or "Traceback" in details or 'File "' in details or len(details) > 400
        ):
            bad.append(f"{method} ({kind}): {code.name} {details[:200]!r}")

    for i in order:  # each case is made just before it is sent: only IN_FLIGHT of them in memory
        method, m = methods[i]
        kind, data = mut.payload(m.input_type, request_limit(method))
        if method.endswith("/Enroll"):
            ch = caller.enrol
        else:
            address, role = _target(method, procs)
            ch = caller.channel(address, role)
        COUNT["cases"] += 1
        if m.client_streaming:  # a facility's connection (Connect): one at a time, a frame or two
            frames = [data] if mut.rng.random() < 0.5 else [data, mut.payload(m.input_type, FRAME)[1]]
            code, details = _stream_call(ch, method, frames)
            seen.setdefault(method, set()).add(code.name)
            if code != grpc.StatusCode.OK and (code not in FINE or "Traceback" in details):
                bad.append(f"{method} ({kind}): {code.name} {details[:200]!r}")
            continue
        if m.server_streaming:  # streams (Health/Watch, WatchRounds, GetLedger): one at a time
            settle(method, kind, ch.unary_stream(method)(data, timeout=20), data, stream=True)
            continue
        pending.append((method, kind, ch.unary_unary(method).future(data, timeout=30), data))
        if len(pending) >= IN_FLIGHT:
            settle(*pending.popleft())
    while pending:
        settle(*pending.popleft())

    assert not bad, f"{len(bad)} cases crashed or leaked internals, e.g.:\n" + "\n".join(bad[:10])
    assert len(order) >= VOLUME and set(seen) == {m for m, _ in methods}
    for name, p in procs.items():
        assert p.popen.poll() is None, f"{name} crashed while fuzzing"
    for name in ("authority", "fog-1", "leader", "validator-1"):  # still serving (a facility serves nothing)
        with sync_channel(str(procs[name].info["address"]), caller.tls["facility"]) as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    after = _state(fed, procs, out)
    assert _without(after, caller) == _without(before, caller), "refused input changed the federation's state"


# ------------------------------------------------------------------------------------------ oversized


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def _raw_call(ch: grpc.Channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        ch.unary_unary(method)(payload, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def _register_payload(specialty_bytes: int) -> bytes:
    node = common_pb2.NodeInfo(
        node_id="facility-01", role="facility", address="127.0.0.1:1", specialty="s" * specialty_bytes
    )
    return authority_pb2.RegisterRequest(node=node).SerializeToString()


def test_an_oversized_request_is_refused_before_decoding_with_little_memory_and_log(
    caller: Caller, federation: tuple[Federation, dict[str, Proc], Path]
) -> None:
    """Finding 4 and 5: a 50 MB specialty was parsed, echoed into the error and the log (5 calls wrote
    262 MB), and the authority grew to 1.2 GB. Now: RESOURCE_EXHAUSTED before parsing, and the server's
    memory and log grow by < 1 MB per refused call. (Here rather than in test_mtls.py: that federation
    renews its certificates every half minute, which moves the authority's memory by tens of MB.)"""
    _fed, procs, _out = federation
    authority = procs["authority"]
    facility = caller.tls["facility"]
    method = "/hfl.v1.AuthorityService/Register"
    with sync_channel(str(authority.info["address"]), facility) as ch:
        # above Register's own limit, below the authority's largest (ReportRound): hfl refuses it unparsed
        code, details = _raw_call(ch, method, _register_payload(MIB))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "at most 65536 bytes" in details and len(details) < 300
        # the attack's size: gRPC refuses it as it arrives
        payload = _register_payload(50 * MIB)
        for _ in range(2):  # warm-up
            code, details = _raw_call(ch, method, payload)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        time.sleep(0.5)
        rss, log = _rss_bytes(authority.popen.pid), authority.log_file.stat().st_size
        calls = 30
        for _ in range(calls):
            code, _details = _raw_call(ch, method, payload)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(0.5)
        rss_growth = _rss_bytes(authority.popen.pid) - rss
        log_growth = authority.log_file.stat().st_size - log
    record_result(
        "oversized_requests.json",
        {
            "calls": calls,
            "request_bytes": len(payload),
            "authority_rss_growth_bytes": rss_growth,
            "authority_log_growth_bytes": log_growth,
        },
    )
    assert rss_growth < calls * MIB, f"the authority grew by {rss_growth / MIB:.1f} MB in {calls} calls"
    assert log_growth < calls * 1000, f"the log grew by {log_growth} bytes in {calls} calls"
    assert authority.popen.poll() is None
