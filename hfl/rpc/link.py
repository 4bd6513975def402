"""The facility's connection to its fog, without the I/O: frames, reassembly and the call bookkeeping.

A facility listens on no port. It opens one long-lived mutual-TLS stream to its fog
(FogService.Connect) and the fog sends every stage of a round down it: a FogCall (fog -> facility)
is answered by a FacilityReply (facility -> fog) carrying the same call id. Each message is serialised
and cut into LinkFrames of SEND_CHUNK bytes (a receiver accepts up to CHUNK), sent one after the other,
so a model of 10^7 parameters (40 MB) travels without raising gRPC's message-size limit, and frames of
two messages never interleave on one stream.

Everything here is pure and synchronous; services/fog/links.py and services/facility/dial.py do the
waiting. Bad input (frames out of order, oversized or empty chunks, a message cut short, a call id
replayed or never asked, a message that does not parse) raises an hfl.errors exception, which closes
that one stream with the status hfl.rpc.errors maps it to; nothing else changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import grpc
from google.protobuf import message_factory

from hfl.errors import InvalidInput, TooLarge
from hfl.proto.v1 import facility_pb2
from hfl.rpc import limits

CHUNK = limits.CHUNK  # bytes of a message a frame may carry
SEND_CHUNK = limits.SEND_CHUNK  # bytes of a message per frame sent
MAX_MESSAGE = limits.MODEL  # the largest whole message (a model or masked update of 10^7+ values)
FRAME_LIMIT = limits.FRAME  # a frame's serialised size at most (chunk plus its header)
LATE_MEMORY = 4096  # call ids the fog stopped waiting for, remembered so a late answer is no offence

# FogCall field -> the facility method that answers it (the reply uses the same field name).
CALLS: dict[str, str] = {
    "start_round": "StartRound",
    "evaluate_model": "EvaluateModel",
    "secagg_advertise": "SecAggAdvertise",
    "secagg_share_keys": "SecAggShareKeys",
    "secagg_masked_input": "SecAggMaskedInput",
    "secagg_unmask": "SecAggUnmask",
}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


class Frame(NamedTuple):
    """One LinkFrame as read off the stream: ``chunk`` is a view into the received bytes (no copy)."""

    call_id: int
    seq: int
    total: int
    chunk: bytes | memoryview


# LinkFrame's fields (protos/hfl/v1/facility.proto) and their wire tags: varints 1-3, bytes 4. Frames are
# encoded and read here by hand, so a chunk goes onto and comes off the wire without passing through a
# protobuf object (each such pass copies a model-sized buffer); the bytes are exactly LinkFrame's.
_CALL_ID, _SEQ, _TOTAL, _CHUNK = 1, 2, 3, 4
_SEQ_MAX = 2**32 - 1  # seq is a uint32
_VARINT_MAX = 2**64 - 1


def encode_frame(
    call_id: int, seq: int, total: int, chunk: bytes | memoryview | Sequence[bytes | memoryview]
) -> bytes:
    """A serialised LinkFrame (byte for byte what protobuf writes: zero fields are left out). ``chunk``
    may come in pieces (a chunk cut across the parts of a :class:`Joined` message)."""
    pieces = (chunk,) if isinstance(chunk, (bytes, memoryview)) else tuple(chunk)
    size = sum(len(p) for p in pieces)
    head = bytearray()
    for number, value in ((_CALL_ID, call_id), (_SEQ, seq), (_TOTAL, total)):
        if value:
            head += _varint(number << 3) + _varint(value)
    if size:
        head += _varint(_CHUNK << 3 | 2) + _varint(size)
    return b"".join((head, *pieces))


def parse_frame(data: bytes | memoryview) -> Frame:
    """Read a serialised LinkFrame; its chunk is a view into ``data``. InvalidInput when it is not one
    (cut short, a field of the wrong kind or unknown, a value out of range)."""
    view = memoryview(data)
    n = len(view)
    values = [0, 0, 0, 0]
    chunk: bytes | memoryview = b""
    i = 0
    try:
        while i < n:
            tag, i = _read_varint(view, i)
            number, kind = tag >> 3, tag & 7
            if number in (_CALL_ID, _SEQ, _TOTAL) and kind == 0:
                values[number], i = _read_varint(view, i)
            elif number == _CHUNK and kind == 2:
                size, i = _read_varint(view, i)
                if i + size > n:
                    raise InvalidInput("cut short")
                chunk, i = view[i : i + size], i + size
            else:
                raise InvalidInput("an unknown field")
    except InvalidInput as e:
        raise InvalidInput(f"a frame on the connection is not a valid frame ({e})") from None
    if values[_SEQ] > _SEQ_MAX or max(values) > _VARINT_MAX:
        raise InvalidInput("a frame on the connection carries a number out of range")
    return Frame(values[_CALL_ID], values[_SEQ], values[_TOTAL], chunk)


@dataclass(frozen=True)
class Joined:
    """A serialised message in parts, sent as if they were joined: its frames are cut across the parts,
    so a large part (the model's field, hfl.rpc.link.encode_field) can be shared by the calls of many
    buckets instead of being copied into each (8 MB per bucket at d=10^6)."""

    parts: tuple[bytes | memoryview, ...]

    def __post_init__(self) -> None:
        # lengths and cuts count bytes: a view of wider items (a uint32 array's) is read as its bytes
        parts = tuple(memoryview(p).cast("B") if isinstance(p, memoryview) else p for p in self.parts)
        object.__setattr__(self, "parts", parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


Message = bytes | memoryview | Joined  # a serialised message as the fog hands it to a connection


def check_size(data: Message) -> None:
    """TooLarge when a whole message is larger than a connection carries (the one check both ends use
    before they queue a message)."""
    if len(data) > MAX_MESSAGE:
        raise TooLarge(f"the message is {len(data)} bytes; the connection carries at most {MAX_MESSAGE}")


def frames(call_id: int, data: Message, chunk: int = SEND_CHUNK) -> Iterator[bytes]:
    """Cut one serialised message into serialised frames (one empty frame for an empty message)."""
    if call_id <= 0:
        raise ValueError("call ids start at 1")
    if chunk < 1:
        raise ValueError("frames carry at least one byte")
    check_size(data)
    total = len(data)
    for seq, pieces in enumerate(_chunks(data, chunk)):
        yield encode_frame(call_id, seq, total, pieces)


def _chunks(data: Message, chunk: int) -> Iterator[list[memoryview]]:
    """The message cut into chunks of ``chunk`` bytes (the last may be shorter; one empty chunk for an
    empty message), each as views of the parts it spans: nothing is copied here."""
    parts = data.parts if isinstance(data, Joined) else (data,)
    pieces: list[memoryview] = []
    have = 0
    for part in parts:
        view = memoryview(part)  # slices of a view are not copies
        i = 0
        while i < len(view):
            take = min(chunk - have, len(view) - i)
            pieces.append(view[i : i + take])
            have, i = have + take, i + take
            if have == chunk:
                yield pieces
                pieces, have = [], 0
    if pieces or not len(data):
        yield pieces


# The stream methods whose frames are read by hand (hfl.rpc.errors installs this parser, and sends the
# already serialised frames as they are).
CONNECT = "/hfl.v1.FogService/Connect"  # a facility's connection to its fog
RAW_STREAMS: dict[str, Callable[[bytes], Frame]] = {CONNECT: parse_frame}
# The unary methods whose servicer returns its response already serialised (hfl.rpc.serde writes a fog's
# answer to the leader with each bucket's sum copied once, run_round_response); hfl.rpc.errors sends it
# as it is.
RUN_ROUND = "/hfl.v1.FogService/RunRound"
RAW_RESPONSES: frozenset[str] = frozenset({RUN_ROUND})


# FogCall and FacilityReply have one field set, a message: on the wire that is the field's tag, the
# message's length and the message itself (protobuf's encoding of a length-delimited field). Building
# and reading that by hand saves copying a model-sized message in and out of the wrapper.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes | memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise InvalidInput("a message on the connection is cut short or malformed")
        byte = data[i]
        n |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if not byte & 0x80:
            return n, i


_CALL_FIELDS = {f.name: f for f in facility_pb2.FogCall.DESCRIPTOR.fields}
_REPLY_FIELDS = {f.name: f for f in facility_pb2.FacilityReply.DESCRIPTOR.fields}
_CALL_BY_NUMBER = {f.number: f for f in facility_pb2.FogCall.DESCRIPTOR.fields}
_REPLY_BY_NUMBER = {f.number: f for f in facility_pb2.FacilityReply.DESCRIPTOR.fields}


def _wrap(field_number: int, message: Any) -> bytes:
    body = message.SerializeToString()
    return _varint(field_number << 3 | 2) + _varint(len(body)) + body


def _unwrap(
    data: bytes | memoryview,
    by_number: dict[int, Any],
    what: str,
    lift: dict[str, tuple[int, ...]] | None = None,
) -> tuple[str, Any]:
    """(field name, message) of a serialised wrapper with exactly one message field set; for a field named
    in ``lift``, the message is a :class:`Lifted`."""
    view = memoryview(data)
    try:
        tag, i = _read_varint(view, 0)
        size, i = _read_varint(view, i)
    except InvalidInput:
        raise InvalidInput(f"{what} is not a valid message") from None
    field = by_number.get(tag >> 3)
    if field is None or tag & 7 != 2 or i + size != len(data):
        raise InvalidInput(f"{what} is not a valid message, or names no known call")
    path = (lift or {}).get(field.name)
    try:
        body: bytes | memoryview = view[i:]
        lifted = memoryview(b"")
        if path is not None:
            body, lifted = lift_field(body, path)
        inner = message_factory.GetMessageClass(field.message_type)
        # protobuf parses any buffer; a memoryview slice spares copying a model-sized message
        message = inner.FromString(cast(bytes, body))
    except Exception:
        raise InvalidInput(f"{what} is not a valid message") from None
    return field.name, message if path is None else Lifted(message, lifted)


# Answers with one large bytes field that the fog reads as a view of the received bytes instead of having
# protobuf copy it into a message and copy it again when the field is read (two model-sized copies per
# member, held while answers queue up): the FacilityReply field, and the field numbers that lead, inside
# its message, to the bytes field.
LIFTED: dict[str, tuple[int, ...]] = {
    "secagg_masked_input": (4, 3),  # SecAggMaskedInputResponse.masked (a Vector) .data
}


# Calls with one large bytes field that the facility reads as a view of the received bytes: the FogCall
# field, and the field numbers that lead to the bytes field (the model's parameters, sent to every member).
LIFTED_CALLS: dict[str, tuple[int, ...]] = {
    "secagg_advertise": (2, 2, 3),  # SecAggAdvertiseRequest.model .params (a Vector) .data
}


class Lifted(NamedTuple):
    """An answer whose large bytes field was lifted out: ``message`` with that field left empty, and
    ``data``, a view of the field's bytes inside the received message (empty when it was not set)."""

    message: Any
    data: memoryview


def unlift(message: Any) -> tuple[Any, memoryview | None]:
    """(the message, its lifted bytes or None) of a message that may have come as a :class:`Lifted`."""
    if isinstance(message, Lifted):
        return message.message, message.data
    return message, None


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, where the field starts, where its value starts, where it ends) of each
    field of a serialised message, in order."""
    i, n = 0, len(view)
    while i < n:
        start = i
        tag, i = _read_varint(view, i)
        number, kind = tag >> 3, tag & 7
        value = i
        if kind == 0:
            _, i = _read_varint(view, i)
        elif kind == 1:
            i += 8
        elif kind == 2:
            size, i = _read_varint(view, i)
            value, i = i, i + size
        elif kind == 5:
            i += 4
        else:  # groups (3, 4) are not used by hfl's messages; 6, 7 are not wire types
            raise InvalidInput(f"wire type {kind}")
        if number == 0 or i > n:
            raise InvalidInput("cut short or malformed")
        yield number, kind, start, value, i


def lift_field(data: bytes | memoryview, path: tuple[int, ...]) -> tuple[bytes, memoryview]:
    """A serialised message without the bytes field that ``path`` (field numbers, through embedded
    messages) leads to, and a view of that field's bytes in ``data`` (empty when it is not set).
    Each field on the path must appear at most once (protobuf would merge or overwrite repeats: refused).
    InvalidInput for bytes that are not a message."""
    view = memoryview(data)
    number = path[0]
    kept: list[bytes | memoryview] = []
    found: memoryview | None = None
    for num, kind, start, value, end in _fields(view):
        if num != number:
            kept.append(view[start:end])
        elif kind != 2 or found is not None:
            raise InvalidInput(f"field {num} is not one length-delimited field")
        else:
            found = view[value:end]
    if found is None:
        return b"".join(kept), memoryview(b"")
    if len(path) == 1:
        return b"".join(kept), found
    rest, lifted = lift_field(found, path[1:])
    kept.append(_varint(number << 3 | 2) + _varint(len(rest)) + rest)
    return b"".join(kept), lifted


def encode_call(kind: str, request: Any) -> bytes:
    """A FogCall carrying ``request`` as its ``kind`` field, serialised (done once per bucket and stage:
    every member gets the same bytes)."""
    if kind not in CALLS:
        raise ValueError(f"unknown call {kind!r}")
    return _wrap(_CALL_FIELDS[kind].number, request)


def encode_field(number: int, message: Any) -> bytes:
    """``message`` serialised as the length-delimited field ``number`` of an enclosing message: made once,
    it can be added to many calls (encode_call_with)."""
    return _wrap(number, message)


def encode_call_with(kind: str, request: Any, field: bytes) -> Joined:
    """A FogCall carrying ``request`` as its ``kind`` field, with ``field`` (encode_field: a field of the
    request, serialised, left unset in ``request``) added after the request's other fields. Protobuf reads
    fields in any order, so the call reads as if the field had been set; ``field`` is not copied: every
    bucket's call shares it."""
    if kind not in CALLS:
        raise ValueError(f"unknown call {kind!r}")
    tag, _ = _read_varint(memoryview(field), 0)
    own = request.DESCRIPTOR.fields_by_number.get(tag >> 3)
    if own is None or own.message_type is None:
        raise ValueError(f"field {tag >> 3} is not a message field of {request.DESCRIPTOR.name}")
    if request.HasField(own.name):
        raise ValueError(f"{own.name} is set in the request and added to it: protobuf would merge the two")
    body = request.SerializeToString()
    head = _varint(_CALL_FIELDS[kind].number << 3 | 2) + _varint(len(body) + len(field)) + body
    return Joined((head, field))


def encode_reply(kind: str, response: Any) -> bytes:
    """A FacilityReply carrying ``response`` as its ``kind`` field, serialised. For the kinds in
    ``LIFTED`` the response may be a :class:`Lifted` (the message without its large bytes field, and the
    field's bytes): they are written as one message, the bytes copied once, straight into the result."""
    return bytes(reply_message(kind, response))


def reply_message(kind: str, response: Any) -> bytes | Joined:
    """encode_reply's message as the facility sends it: for a :class:`Lifted` response, its head and the
    lifted bytes as the parts of a Joined message, so a masked vector goes out frame by frame from where
    it lies, never copied into one message first (4 MB per facility at d=10^6)."""
    number = _REPLY_FIELDS[kind].number
    if not isinstance(response, Lifted):
        return _wrap(number, response)
    head = _head(response.message.SerializeToString(), LIFTED[kind], len(response.data))
    size = len(head) + len(response.data)
    return Joined((b"".join((_varint(number << 3 | 2), _varint(size), head)), response.data))


def with_bytes_field(
    body: bytes, path: tuple[int, ...], data: memoryview, number: int
) -> list[bytes | memoryview]:
    """The parts of field ``number`` (length-delimited) holding the serialised message ``body`` with the
    bytes ``data`` added as the field at ``path`` (as in ``LIFTED``): joined, they are that field of an
    enclosing message, and ``data`` is not copied until they are joined."""
    head = _head(body, path, len(data))
    return [_varint(number << 3 | 2), _varint(len(head) + len(data)), head, data]


def _head(body: bytes, path: tuple[int, ...], size: int) -> bytes:
    """The serialised message ``body`` with a bytes field of ``size`` bytes at ``path`` (field numbers,
    through embedded messages) added last, up to where that field's bytes begin."""
    number = path[0]
    if len(path) == 1:
        return body + _varint(number << 3 | 2) + _varint(size)
    rest, inner = lift_field(body, (number,))  # the embedded message, taken out to be written last
    head = _head(bytes(inner), path[1:], size)
    return rest + _varint(number << 3 | 2) + _varint(len(head) + size) + head


def encode_refusal(code: grpc.StatusCode, details: str) -> bytes:
    return facility_pb2.FacilityReply(
        refused=facility_pb2.CallRefused(code=code.value[0], details=details)
    ).SerializeToString()


def decode_call(data: bytes | memoryview) -> tuple[str, Any]:
    """(kind, request) of a serialised FogCall (a :class:`Lifted` for the kinds in ``LIFTED_CALLS``);
    InvalidInput when it does not parse or names no call."""
    if not data:
        raise InvalidInput("a call from the fog names no known call")
    return _unwrap(data, _CALL_BY_NUMBER, "a call from the fog", LIFTED_CALLS)


@dataclass(frozen=True)
class Refused:
    """The facility refused the call: a gRPC status code and its reason."""

    code: grpc.StatusCode
    details: str


def decode_reply(data: bytes | memoryview, expected: str) -> Any:
    """The response of a serialised FacilityReply to a call of kind ``expected`` (a :class:`Lifted` for the
    kinds in ``LIFTED``), or Refused. InvalidInput when it does not parse or answers another kind of
    call."""
    if not data:
        raise InvalidInput(f"the answer to a {expected} call is an empty answer")
    kind, msg = _unwrap(data, _REPLY_BY_NUMBER, "an answer from the facility", LIFTED)
    if kind == "refused":
        code = _CODES.get(msg.code, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.OK:
            raise InvalidInput("a refusal must carry an error status")
        return Refused(code, msg.details[:300])
    if kind != expected:
        raise InvalidInput(f"the answer to a {expected} call is a {kind} answer")
    return msg


@dataclass
class Assembler:
    """Frames in, whole messages out, for one direction of one stream. Frames of a message must come
    in order, each carrying the same total; the next message starts only after the last one ends."""

    max_message: int = MAX_MESSAGE
    chunk: int = CHUNK
    _call: int = 0
    _seq: int = 0
    _total: int = 0
    _parts: list[bytes | memoryview] = field(default_factory=list)
    _have: int = 0

    @property
    def partial(self) -> bool:
        return bool(self._call)

    def feed(self, frame: Frame | facility_pb2.LinkFrame) -> tuple[int, bytes | memoryview] | None:
        """Take one frame; returns (call id, message bytes) when it completes a message. A message of
        one frame is returned as the frame's own chunk (a view, not a copy)."""
        size = len(frame.chunk)
        if size > self.chunk:
            raise TooLarge(f"a frame carries {size} bytes; frames carry at most {self.chunk}")
        if frame.total > self.max_message:
            raise TooLarge(
                f"call {frame.call_id} announces {frame.total} bytes; a message may have at most "
                f"{self.max_message}"
            )
        if frame.call_id == 0:
            raise InvalidInput("a frame must name its call (call ids start at 1)")
        if not self._call:
            if frame.seq != 0:
                raise InvalidInput(
                    f"frame {frame.seq} of call {frame.call_id} came before the call's first frame"
                )
            self._call, self._seq, self._total, self._parts, self._have = (
                frame.call_id,
                0,
                frame.total,
                [],
                0,
            )
        elif frame.call_id != self._call:
            raise InvalidInput(
                f"call {frame.call_id} began before call {self._call} was complete "
                f"({self._have} of {self._total} bytes)"
            )
        elif frame.seq != self._seq or frame.total != self._total:
            raise InvalidInput(
                f"call {self._call}: frame {frame.seq} (of {frame.total} bytes) came where frame "
                f"{self._seq} (of {self._total} bytes) was due"
            )
        if size == 0 and self._total > 0:
            raise InvalidInput(f"call {self._call}: an empty frame in a message of {self._total} bytes")
        if self._have + size > self._total:
            raise InvalidInput(f"call {self._call} carries more than the {self._total} bytes it announced")
        self._parts.append(frame.chunk)
        self._have += size
        self._seq += 1
        if self._have < self._total:
            return None
        done = (self._call, self._parts[0] if len(self._parts) == 1 else b"".join(self._parts))
        self._call, self._parts, self._have = 0, [], 0
        return done

    def check_ended(self) -> None:
        """The stream ended: refuse a message cut short."""
        if self._call:
            raise InvalidInput(
                f"the connection ended in the middle of call {self._call} "
                f"({self._have} of {self._total} bytes arrived)"
            )


class CallBook:
    """The fog's side of the call ids on one stream: ids it issued and awaits, and ids it stopped
    waiting for (a late answer to those is dropped quietly). Any other answer is refused."""

    def __init__(self, late_memory: int = LATE_MEMORY) -> None:
        self._next = 1
        self.pending: dict[int, str] = {}  # call id -> kind
        self._late: OrderedDict[int, None] = OrderedDict()
        self._late_memory = late_memory

    def issue(self, kind: str) -> int:
        call_id = self._next
        self._next += 1
        self.pending[call_id] = kind
        return call_id

    def give_up(self, call_id: int) -> None:
        """No longer waiting (timed out or cancelled)."""
        if self.pending.pop(call_id, None) is not None:
            self._late[call_id] = None
            while len(self._late) > self._late_memory:
                self._late.popitem(last=False)

    def answer(self, call_id: int) -> str | None:
        """The kind of call this answer is for, or None for a late answer to drop. InvalidInput for an
        answer to a call never asked, or already answered."""
        kind = self.pending.pop(call_id, None)
        if kind is not None:
            return kind
        if call_id in self._late:
            del self._late[call_id]
            return None
        raise InvalidInput(f"an answer to call {call_id}, which was never asked or was already answered")


class CallOrder:
    """The facility's side: the fog's call ids must increase; a repeated or older id is a replay."""

    def __init__(self) -> None:
        self.last = 0

    def accept(self, call_id: int) -> None:
        if call_id <= self.last:
            raise InvalidInput(f"call {call_id} repeats or predates call {self.last} (a replay)")
        self.last = call_id
