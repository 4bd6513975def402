"""The facility's connection to its fog, without I/O (hfl.rpc.link): frames, reassembly, call ids, and a
refusal for each kind of bad input the issue names (out of order, oversized, replayed, truncated)."""

from __future__ import annotations

import struct
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.errors import InvalidInput, TooLarge
from hfl.proto.v1 import common_pb2, facility_pb2
from hfl.rpc import link
from services.facility.dial import RETRY_MAX_S, RETRY_MIN_S, retry_pause


def _whole(asm: link.Assembler, frames: list[link.Frame]) -> list[tuple[int, bytes]]:
    out = []
    for f in frames:
        got = asm.feed(f)
        if got is not None:
            out.append((got[0], bytes(got[1])))
    return out


def _frames(call_id: int, data: link.Message, chunk: int = link.CHUNK) -> list[link.Frame]:
    return [link.parse_frame(f) for f in link.frames(call_id, data, chunk=chunk)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=64),
)
def test_messages_of_any_size_come_back_whole_and_in_order(messages: list[bytes], chunk: int) -> None:
    asm = link.Assembler(chunk=chunk)
    frames = [f for i, m in enumerate(messages, start=1) for f in _frames(i, m, chunk=chunk)]
    assert all(len(f.chunk) <= chunk for f in frames)
    assert _whole(asm, frames) == list(enumerate(messages, start=1))
    assert not asm.partial
    asm.check_ended()


def test_a_model_of_ten_million_parameters_travels_in_frames_within_the_limit() -> None:
    vec = common_pb2.Vector(dtype=common_pb2.D_TYPE_FLOAT32, length=10_000_000, data=bytes(40_000_000))
    data = link.encode_call(
        "secagg_advertise",
        facility_pb2.SecAggAdvertiseRequest(model=common_pb2.Model(params=vec), bucket_id="b0"),
    )
    raw = list(link.frames(7, data))
    assert len(raw) == -(-len(data) // link.SEND_CHUNK) >= 10
    assert max(len(f) for f in raw) <= link.FRAME_LIMIT
    frames = [link.parse_frame(f) for f in raw]
    [(call_id, whole)] = _whole(link.Assembler(), frames)
    kind, call = link.decode_call(whole)
    request, params = link.unlift(call)
    assert (call_id, kind, request.model.params.length) == (7, "secagg_advertise", 10_000_000)
    assert params is not None and len(params) == 40_000_000  # the parameters, left where they arrived


# A model's parameters as they travel: float64 bytes, finite (a model with NaN or infinite values is refused).
_PARAMS = st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=25).map(
    lambda xs: struct.pack(f"<{len(xs)}d", *xs)
)


def _two_frame_message(call_id: int = 1) -> list[link.Frame]:
    return _frames(call_id, b"x" * 10, chunk=5)


def test_frames_out_of_order_are_refused() -> None:
    first, second = _two_frame_message()
    with pytest.raises(InvalidInput, match="before the call's first frame"):
        link.Assembler(chunk=5).feed(second)
    asm = link.Assembler(chunk=5)
    asm.feed(first)
    with pytest.raises(InvalidInput, match="was due"):
        asm.feed(first)  # frame 0 again


def test_a_call_may_not_start_inside_another() -> None:
    asm = link.Assembler(chunk=5)
    asm.feed(_two_frame_message(1)[0])
    with pytest.raises(InvalidInput, match="began before call 1 was complete"):
        asm.feed(_two_frame_message(2)[0])


def test_oversized_frames_and_messages_are_refused_before_they_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TooLarge, match="frames carry at most 5"):
        link.Assembler(chunk=5).feed(facility_pb2.LinkFrame(call_id=1, seq=0, total=6, chunk=b"x" * 6))
    with pytest.raises(TooLarge, match="announces"):
        link.Assembler(max_message=100).feed(facility_pb2.LinkFrame(call_id=1, seq=0, total=101, chunk=b"x"))
    monkeypatch.setattr(link, "MAX_MESSAGE", 10)
    with pytest.raises(TooLarge, match="carries at most 10"):
        next(link.frames(1, bytes(11)))


def test_truncated_and_overlong_messages_are_refused() -> None:
    asm = link.Assembler(chunk=5)
    asm.feed(_two_frame_message()[0])
    with pytest.raises(InvalidInput, match="ended in the middle of call 1"):
        asm.check_ended()
    asm = link.Assembler(chunk=5)
    with pytest.raises(InvalidInput, match="more than the 3 bytes"):
        asm.feed(facility_pb2.LinkFrame(call_id=1, seq=0, total=3, chunk=b"xxxx"))
    asm = link.Assembler(chunk=5)
    with pytest.raises(InvalidInput, match="empty frame"):
        asm.feed(facility_pb2.LinkFrame(call_id=1, seq=0, total=3, chunk=b""))
    with pytest.raises(InvalidInput, match="must name its call"):
        link.Assembler().feed(facility_pb2.LinkFrame(call_id=0, seq=0, total=0))


def test_a_replayed_call_is_refused_by_the_facility() -> None:
    order = link.CallOrder()
    order.accept(1)
    order.accept(5)
    for again in (5, 3):
        with pytest.raises(InvalidInput, match="replay"):
            order.accept(again)


def test_the_fog_refuses_answers_it_never_asked_for_but_drops_late_ones_quietly() -> None:
    book = link.CallBook(late_memory=2)
    a, b, c = book.issue("secagg_unmask"), book.issue("start_round"), book.issue("start_round")
    assert book.answer(a) == "secagg_unmask"
    with pytest.raises(InvalidInput, match="already answered"):
        book.answer(a)  # answered twice
    with pytest.raises(InvalidInput, match="never asked"):
        book.answer(99)
    book.give_up(b)
    assert book.answer(b) is None  # late: dropped, no offence
    with pytest.raises(InvalidInput):
        book.answer(b)  # but only once
    book.give_up(c)
    assert book.answer(c) is None


def test_replies_must_fit_their_call() -> None:
    ok = link.encode_reply("start_round", facility_pb2.StartRoundResponse())
    assert isinstance(link.decode_reply(ok, "start_round"), facility_pb2.StartRoundResponse)
    with pytest.raises(InvalidInput, match="answer to a secagg_unmask call is a start_round answer"):
        link.decode_reply(ok, "secagg_unmask")
    refused = link.decode_reply(link.encode_refusal(grpc.StatusCode.PERMISSION_DENIED, "no budget"), "x")
    assert refused == link.Refused(grpc.StatusCode.PERMISSION_DENIED, "no budget")
    with pytest.raises(InvalidInput, match="error status"):
        link.decode_reply(link.encode_refusal(grpc.StatusCode.OK, ""), "start_round")
    with pytest.raises(InvalidInput, match="not a valid message"):
        link.decode_reply(b"\xff\xff\xff", "start_round")
    with pytest.raises(InvalidInput, match="names no known call"):
        link.decode_call(b"")
    with pytest.raises(InvalidInput, match="not a valid message"):
        link.decode_call(b"\x0a\xff")


def test_reconnect_pauses_grow_with_jitter_and_stay_bounded() -> None:
    pauses = [[retry_pause(a) for _ in range(50)] for a in range(12)]
    assert all(RETRY_MIN_S <= p <= RETRY_MAX_S for row in pauses for p in row)
    assert max(pauses[0]) <= 2 * RETRY_MIN_S  # the first retry comes soon
    assert len(set(pauses[8])) > 40  # jitter: facilities do not come back in step
    assert sum(pauses[10]) / 50 > 5 * sum(pauses[0]) / 50  # and the pause grows


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=300),
)
def test_frames_are_written_and_read_exactly_as_protobuf_does(
    call_id: int, seq: int, total: int, chunk: bytes
) -> None:
    """Frames are encoded and parsed by hand (no copy of the chunk); the bytes are LinkFrame's."""
    proto = facility_pb2.LinkFrame(call_id=call_id, seq=seq, total=total, chunk=chunk)
    assert link.encode_frame(call_id, seq, total, chunk) == proto.SerializeToString()
    frame = link.parse_frame(proto.SerializeToString())
    assert (frame.call_id, frame.seq, frame.total, bytes(frame.chunk)) == (call_id, seq, total, chunk)


def test_a_one_frame_message_is_handed_on_without_a_copy() -> None:
    data = bytes(range(256)) * 8
    [raw] = link.frames(3, data)
    frame = link.parse_frame(raw)
    assert isinstance(frame.chunk, memoryview) and frame.chunk.obj is raw
    got = link.Assembler().feed(frame)
    assert got is not None and got[1] is frame.chunk and bytes(got[1]) == data


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x08", "cut short"),  # a tag without its value
        (b"\x22\x05abc", "cut short"),  # a chunk shorter than it says
        (
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            "cut short or malformed",
        ),  # varint over 64 bits
        (b"\x2a\x01x", "unknown field"),  # field 5
        (b"\x0a\x01x", "unknown field"),  # call_id sent as bytes
        (b"\x10\x80\x80\x80\x80\x10", "out of range"),  # seq of 2**32
    ],
)
def test_frames_that_are_not_link_frames_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        link.parse_frame(raw)


def test_a_facility_answer_too_large_to_send_becomes_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facility never queues a message over the limit: the fog gets RESOURCE_EXHAUSTED instead."""
    import asyncio

    from services.facility.dial import FogDialer

    async def big_answer(request: object) -> facility_pb2.SecAggMaskedInputResponse:
        vec = common_pb2.Vector(dtype=common_pb2.D_TYPE_UINT32, length=64, data=b"\x00" * 256)
        return facility_pb2.SecAggMaskedInputResponse(masked=vec)

    monkeypatch.setattr(link, "MAX_MESSAGE", 200)
    dialer = FogDialer("facility-01", None, "authority", lambda name: big_answer, tls_on=False)  # type: ignore[arg-type]
    outbox: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
    request = facility_pb2.SecAggMaskedInputRequest()
    asyncio.run(dialer._answer(outbox, 7, "secagg_masked_input", request, None))
    item = outbox.get_nowait()
    assert item is not None
    call_id, data = item
    assert call_id == 7 and len(data) <= 200
    answer = link.decode_reply(data, "secagg_masked_input")
    assert isinstance(answer, link.Refused) and answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "256" in answer.details or "bytes" in answer.details
    with pytest.raises(TooLarge):
        link.check_size(b"x" * 201)
    link.check_size(b"x" * 200)  # exactly the limit passes


# ------------------------------------------------------------ a masked input's vector, read without copies
def _masked(round_: int, sender: str, data: bytes, dtype: int = common_pb2.D_TYPE_UINT32) -> Any:
    vec = common_pb2.Vector(dtype=dtype, length=len(data) // 4, data=data)  # type: ignore[arg-type]
    return facility_pb2.SecAggMaskedInputResponse(round=round_, bucket_id="b0", sender=sender, masked=vec)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.text(max_size=20),
    st.binary(max_size=400),
    st.sampled_from([common_pb2.D_TYPE_UINT32, common_pb2.D_TYPE_FLOAT32, common_pb2.D_TYPE_FLOAT64]),
)
def test_a_masked_input_is_read_as_protobuf_reads_it_with_its_vector_left_in_place(
    round_: int, sender: str, data: bytes, dtype: int
) -> None:
    sent = _masked(round_, sender, data, dtype)
    wire = link.encode_reply("secagg_masked_input", sent)
    got = link.decode_reply(wire, "secagg_masked_input")
    assert isinstance(got, link.Lifted)
    assert bytes(got.data) == data
    assert got.data.obj is wire or not data  # a view of the received bytes, not a copy
    expected = facility_pb2.SecAggMaskedInputResponse()
    expected.CopyFrom(sent)
    expected.masked.data = b""
    assert got.message == expected


def test_a_masked_input_whose_fields_come_in_another_order_reads_the_same() -> None:
    """Protobuf allows fields in any order, and unknown fields: the lifted reading follows it."""
    vec = common_pb2.Vector(dtype=common_pb2.D_TYPE_UINT32, length=2, data=bytes([1, 0, 0, 0, 2, 0, 0, 0]))
    masked = b"\x22" + bytes([len(vec.SerializeToString())]) + vec.SerializeToString()  # field 4 first
    rest = facility_pb2.SecAggMaskedInputResponse(round=3, sender="f-1").SerializeToString()
    unknown = b"\xf8\x01\x07"  # field 31, a varint protobuf does not know: kept, as protobuf keeps it
    body = masked + rest + unknown
    wire = b"\x2a" + bytes([len(body)]) + body  # FacilityReply.secagg_masked_input is field 5
    assert link._REPLY_FIELDS["secagg_masked_input"].number == 5
    got = link.decode_reply(wire, "secagg_masked_input")
    assert bytes(got.data) == vec.data
    assert (got.message.round, got.message.sender, got.message.masked.length) == (3, "f-1", 2)


@pytest.mark.parametrize(
    "body",
    [
        b"\x22\x02\x18\x00" + b"\x22\x02\x18\x00",  # the masked vector twice (protobuf would merge them)
        b"\x22\x06\x1a\x01a\x1a\x01b",  # its data twice (protobuf would keep the last)
        b"\x20\x05",  # the masked vector as a number
        b"\x22\x09\x1a\x07abc",  # cut short
        b"\x22\x02\x1b\x00",  # a group, which hfl's messages never use
    ],
)
def test_a_masked_input_with_its_vector_repeated_misplaced_or_cut_short_is_refused(body: bytes) -> None:
    wire = b"\x2a" + bytes([len(body)]) + body
    with pytest.raises(InvalidInput):
        link.decode_reply(wire, "secagg_masked_input")


def test_a_vector_whose_values_come_twice_is_refused() -> None:
    from hfl.rpc import serde

    m = _masked(1, "f-1", b"\x00" * 8)
    with pytest.raises(InvalidInput, match="twice"):
        serde.masked_input_from_proto(m, expected_length=2, data=b"\x00" * 8)
    m.masked.data = b""
    got = serde.masked_input_from_proto(m, expected_length=2, data=memoryview(b"\x01\x00\x00\x00" * 2))
    assert got.y.tolist() == [1, 1] and not got.y.flags.writeable


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.text(max_size=20), st.binary(max_size=400))
def test_a_masked_input_written_with_its_vector_beside_it_reads_as_the_whole_message(
    round_: int, sender: str, data: bytes
) -> None:
    """The facility writes the response and its vector's bytes as one message (no copy of the vector
    into protobuf): protobuf reads it as the whole message, and the fog's lifted reading gets the bytes."""
    whole = _masked(round_, sender, data)
    without = facility_pb2.SecAggMaskedInputResponse()
    without.CopyFrom(whole)
    without.masked.data = b""
    wire = link.encode_reply("secagg_masked_input", link.Lifted(without, memoryview(data)))
    (field,) = facility_pb2.FacilityReply.FromString(wire).ListFields()
    assert field[0].name == "secagg_masked_input" and field[1] == whole
    got = link.decode_reply(wire, "secagg_masked_input")
    assert bytes(got.data) == data and got.message == without


def test_the_facility_sends_its_masked_vector_as_it_is() -> None:
    import numpy as np

    from hfl.rpc import serde
    from hfl.secagg import MaskedInput

    y = np.array([1, 2**32 - 1, 7], dtype=np.uint32)
    response, data = serde.masked_input_lifted(MaskedInput(5, "b0", "f-1", y))
    assert np.shares_memory(np.frombuffer(data, dtype=np.uint32), y) and bytes(data) == y.tobytes()
    wire = link.encode_reply("secagg_masked_input", link.Lifted(response, data))
    got = link.decode_reply(wire, "secagg_masked_input")
    back = serde.masked_input_from_proto(got.message, expected_length=3, data=got.data)
    assert back.y.tolist() == y.tolist() and (back.round, back.bucket, back.sender) == (5, "b0", "f-1")
    # what the facility's connection sends: the same bytes, its frames cut from the vector where it lies
    sent = link.reply_message("secagg_masked_input", link.Lifted(response, data))
    assert isinstance(sent, link.Joined) and bytes(sent) == wire
    assert np.shares_memory(np.frombuffer(sent.parts[-1], dtype=np.uint32), y)
    assert list(link.frames(9, sent, chunk=5)) == list(link.frames(9, wire, chunk=5))


@settings(max_examples=40, deadline=None)
@given(_PARAMS, st.text(max_size=10))
def test_a_model_sent_to_a_facility_is_read_with_its_parameters_left_in_place(
    data: bytes, bucket: str
) -> None:
    """The facility reads the advertise call as protobuf would, the model's parameters lifted out; the
    parameters then come back as a read-only view of the received bytes, their hash checked."""
    import numpy as np

    from hfl.domain import ModelSpec
    from hfl.rpc import serde

    values = np.frombuffer(data, dtype="<f8")
    model = serde.model_to_proto(ModelSpec("logreg", 3), values, 4)
    sent = facility_pb2.SecAggAdvertiseRequest(model=model, bucket_id=bucket)
    wire = link.encode_call("secagg_advertise", sent)
    kind, call = link.decode_call(wire)
    request, params_data = link.unlift(call)
    assert kind == "secagg_advertise" and params_data is not None and bytes(params_data) == data
    expected = facility_pb2.SecAggAdvertiseRequest()
    expected.CopyFrom(sent)
    expected.model.params.data = b""
    assert request == expected
    _spec, params, round_ = serde.model_from_proto(request.model, data=params_data)
    assert round_ == 4 and np.array_equal(params, values, equal_nan=True) and not params.flags.writeable
    if data:  # a changed value no longer matches the model's hash
        sent.model.params.data = bytes([data[0] ^ 0x01]) + data[1:]
        _k, call2 = link.decode_call(link.encode_call("secagg_advertise", sent))
        with pytest.raises(InvalidInput, match="hash"):
            serde.model_from_proto(call2.message.model, data=call2.data)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=5),
    st.integers(min_value=1, max_value=16),
)
def test_a_message_in_parts_is_cut_into_the_frames_of_the_joined_message(
    parts: list[bytes], chunk: int
) -> None:
    """A Joined message goes out frame for frame as the same bytes joined would, whatever its parts and
    wherever the chunks cut them (several parts in one frame, one part over several frames, empty parts)."""
    joined = link.Joined(tuple(parts))
    whole = b"".join(parts)
    assert len(joined) == len(whole) and bytes(joined) == whole
    assert list(link.frames(3, joined, chunk=chunk)) == list(link.frames(3, whole, chunk=chunk))


@settings(max_examples=40, deadline=None)
@given(_PARAMS, st.text(max_size=10), st.booleans())
def test_a_call_with_the_shared_model_field_reads_as_the_call_with_the_model_set(
    data: bytes, bucket: str, secure: bool
) -> None:
    """Each bucket's call to hand out the model is its own fields plus the round's one serialised model
    field (encode_call_with): the facility reads it exactly as the call with the model set, the
    parameters still lifted out where they arrived."""
    import numpy as np

    from hfl.domain import ModelSpec
    from hfl.rpc import serde

    kind = "secagg_advertise" if secure else "start_round"
    cls = facility_pb2.SecAggAdvertiseRequest if secure else facility_pb2.StartRoundRequest
    model = serde.model_to_proto(ModelSpec("logreg", 3), np.frombuffer(data, dtype="<f8"), 4)
    from services.fog.rounds import MODEL_FIELD

    plan = common_pb2.TrainingPlan(epochs=2)
    field = link.encode_field(MODEL_FIELD, model)
    call = link.encode_call_with(kind, cls(plan=plan, bucket_id=bucket), field)
    assert call.parts[-1] is field  # shared, not copied
    [(_, whole)] = _whole(link.Assembler(chunk=7), _frames(1, call, chunk=7))
    got_kind, got = link.decode_call(whole)
    expected = cls(model=model, plan=plan, bucket_id=bucket)
    assert got_kind == kind
    request, params = link.unlift(got)
    if secure:
        assert params is not None and bytes(params) == data
        request.model.params.data = data
    assert request == expected


def test_a_shared_field_is_refused_when_the_request_sets_it_too_or_is_not_a_message_field() -> None:
    """Protobuf would merge a model set in the request with the one added after it: refused, as is a field
    number the request has no message field for."""
    import numpy as np

    from hfl.domain import ModelSpec
    from hfl.rpc import serde
    from services.fog.rounds import MODEL_FIELD

    model = serde.model_to_proto(ModelSpec("logreg", 1), np.zeros(2), 1)
    field = link.encode_field(MODEL_FIELD, model)
    with pytest.raises(ValueError, match="merge"):
        link.encode_call_with("start_round", facility_pb2.StartRoundRequest(model=model), field)
    with pytest.raises(ValueError, match="not a message field"):
        link.encode_call_with("start_round", facility_pb2.StartRoundRequest(), link.encode_field(15, model))
    link.encode_call_with("start_round", facility_pb2.StartRoundRequest(), field)  # unset: accepted


def test_a_part_that_views_wider_items_is_counted_and_cut_in_bytes() -> None:
    """A memoryview of uint32 values is 4 bytes an item: the message's length and its frames count bytes."""
    import numpy as np

    values = np.arange(10, dtype=np.uint32)
    message = link.Joined((b"head", memoryview(values)))
    assert len(message) == 4 + 40 == len(bytes(message))
    assert bytes(message) == b"head" + values.tobytes()
    [(_, whole)] = _whole(link.Assembler(chunk=7), _frames(1, message, chunk=7))
    assert bytes(whole) == b"head" + values.tobytes()
