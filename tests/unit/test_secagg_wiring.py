"""Secure aggregation wiring: proto <-> domain conversions and the fog's stage driver with fake facilities."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, BucketResult, RoundConfig, TrainingPlan
from hfl.errors import InvalidInput
from hfl.proto.v1 import common_pb2, facility_pb2
from hfl.rpc import serde
from hfl.rpc.link import CALLS, Joined, Message, decode_call, decode_reply, encode_reply
from hfl.secagg import (
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    QuantConfig,
    SecAggMember,
    UnmaskRequest,
    UnmaskResponse,
    default_threshold,
    quantize,
)
from services.fog.faults import FaultyFog, KeySwappingMemberLink, fog_class
from services.fog.links import Links
from services.fog.rounds import BucketRequest, PhaseMarks, SharedModel
from services.fog.secure import FacilityMemberLink, StageTimeouts, run_secure_bucket

# ---------------------------------------------------------------------------------------------- serde


def test_secagg_round_binds_the_attempt() -> None:
    assert serde.secagg_round(3, 0) != serde.secagg_round(3, 1) != serde.secagg_round(4, 0)
    assert serde.secagg_round(3, 2) == (3 << 16) | 2
    with pytest.raises(InvalidInput, match="attempt"):
        serde.secagg_round(1, 1 << 16)


def test_serde_round_trips() -> None:
    ad = KeyAdvertisement(7, "b0", "f1", b"c" * 32, b"s" * 32, b"g" * 64)
    assert serde.advertisement_from_proto(serde.advertisement_to_proto(ad)) == ad
    share = EncryptedShare(7, "b0", "f1", "f2", b"x" * 120)
    assert serde.share_from_proto(serde.share_to_proto(share)) == share
    y = np.array([0, 1, 2**32 - 1, 12345], dtype=np.uint32)
    back = serde.masked_input_from_proto(
        serde.masked_input_to_proto(MaskedInput(7, "b0", "f1", y)), expected_length=4
    )
    assert (back.round, back.bucket, back.sender) == (7, "b0", "f1")
    assert back.y.dtype == np.uint32 and np.array_equal(back.y, y)
    resp = UnmaskResponse(7, "b0", "f1", (("f1", b"a" * 40), ("f2", b"b" * 40)), (("f3", b"c" * 40),))
    assert serde.unmask_response_from_proto(serde.unmask_response_to_proto(resp)) == resp
    req = UnmaskRequest(serde.secagg_round(1, 2), "b0", ("f1", "f2"), ("f3",))
    round_, attempt, back_req = serde.unmask_request_from_proto(serde.unmask_request_to_proto(1, 2, req))
    assert (round_, attempt, back_req) == (1, 2, req)


def test_serde_refuses_malformed_messages() -> None:
    bad_key = facility_pb2.SecAggKeyAdvertisement(
        round=1, bucket_id="b0", sender="f1", c_pk=b"short", s_pk=b"s" * 32, signature=b"g" * 64
    )
    with pytest.raises(InvalidInput, match="encryption key"):
        serde.advertisement_from_proto(bad_key)
    wrong_type = facility_pb2.SecAggMaskedInputResponse(
        round=1,
        bucket_id="b0",
        sender="f1",
        masked=serde.vector_to_proto(np.zeros(4), common_pb2.D_TYPE_FLOAT64),
    )
    with pytest.raises(InvalidInput, match="UINT32"):
        serde.masked_input_from_proto(wrong_type, expected_length=4)
    short = serde.masked_input_to_proto(MaskedInput(1, "b0", "f1", np.zeros(3, dtype=np.uint32)))
    with pytest.raises(InvalidInput, match="values"):
        serde.masked_input_from_proto(short, expected_length=4)
    with pytest.raises(InvalidInput, match="no bucket"):
        serde.session_from_proto(facility_pb2.SecAggSession(round=1, attempt=0, bucket_id=""))
    huge = facility_pb2.SecAggEncryptedShare(
        round=1, bucket_id="b0", sender="f1", recipient="f2", ciphertext=b"x" * 100_000
    )
    with pytest.raises(InvalidInput, match="too large"):
        serde.share_from_proto(huge)


# ---------------------------------------------------------------------------------------------- fog driver
PLAN = TrainingPlan(lr=0.1, epochs=1, batch_size=8, clip_update=1.0, secure=True, timeout_s=5.0)
# Timeouts: members that answer finish a bucket as soon as the last answer is in, so tests where everyone
# answers wait for no timeout and get room for a loaded machine (ROOMY); tests with a silent member wait
# for one timeout per silent stage (SILENT, short, with room for the others under load).
ROOMY = StageTimeouts(keys=20, masked=20)
SILENT = StageTimeouts(keys=2, masked=2)
ROUND, ATTEMPT, D = 3, 1, 50


class FakeFacilities:
    """In-memory members behind the MemberLink interface, with scripted misbehaviour."""

    def __init__(
        self,
        g: int,
        *,
        silent: dict[str, int] | None = None,
        failing: dict[str, int] | None = None,
        swap_key_of: str | None = None,
    ) -> None:
        self.ids = [f"f{i}" for i in range(g)]
        self.bucket = Bucket("b0", "fog-1", tuple(self.ids), default_threshold(g))
        keys = {m: SigningKey.generate() for m in self.ids}
        identities = {m: k.public_bytes for m, k in keys.items()}
        self.cfg = QuantConfig(clip=PLAN.clip_update, max_members=g)
        rnd = serde.secagg_round(ROUND, ATTEMPT)
        self.members = {
            m: SecAggMember(
                m,
                rnd,
                "b0",
                identities,
                keys[m],
                self.bucket.threshold,
                self.cfg,
                D,
                rng=np.random.default_rng(i),
            )
            for i, m in enumerate(self.ids)
        }
        # Updates already on the quantisation grid, so their quantised value is known exactly.
        grid = np.random.default_rng(99)
        self.updates = {
            m: np.round(grid.uniform(-0.05, 0.05, D) * self.cfg.scale) / self.cfg.scale for m in self.ids
        }
        self.silent = silent or {}  # member -> stage from which it never answers
        self.failing = failing or {}  # member -> stage from which it answers with an error
        self.swap_key_of = swap_key_of
        self.errors: dict[str, str] = {}

    async def _gate(self, member: str, stage: int) -> None:
        if self.silent.get(member, 99) <= stage:
            await asyncio.sleep(3600)
        if self.failing.get(member, 99) <= stage:
            raise ConnectionError("facility unreachable")

    async def advertise(self, member: str, timeout: float) -> KeyAdvertisement:
        await self._gate(member, 1)
        return self.members[member].advertise()

    async def share_keys(
        self, member: str, ads: Sequence[KeyAdvertisement], timeout: float
    ) -> list[EncryptedShare]:
        await self._gate(member, 2)
        if self.swap_key_of is not None:  # a fog that substitutes one member's masking key
            ads = [
                replace(a, s_pk=bytes(32 - 1) + b"\x09") if a.sender == self.swap_key_of else a for a in ads
            ]
        try:
            return self.members[member].share_keys(ads)
        except Exception as e:
            self.errors[member] = f"{type(e).__name__}: {e}"
            raise

    async def masked_input(
        self, member: str, shares: Sequence[EncryptedShare], timeout: float
    ) -> MaskedInput:
        await self._gate(member, 3)
        return self.members[member].masked_input(shares, self.updates[member])

    async def unmask(self, member: str, request: UnmaskRequest, timeout: float) -> UnmaskResponse:
        await self._gate(member, 4)
        return self.members[member].unmask(request.survivors, request.dropped)

    def expected(self, members: Sequence[str]) -> np.ndarray:
        return np.sum([self.updates[m] for m in members], axis=0)


def run(fakes: FakeFacilities, timeouts: StageTimeouts = ROOMY) -> BucketResult:
    return asyncio.run(run_secure_bucket(fakes.bucket, ROUND, ATTEMPT, D, PLAN, fakes, timeouts))


def test_driver_returns_the_exact_sum() -> None:
    fakes = FakeFacilities(5)
    r = run(fakes)
    assert not r.abandoned and r.count == 5 and r.dropped == ()
    assert np.array_equal(r.total, fakes.expected(fakes.ids))
    q = sum(
        quantize(fakes.updates[m], fakes.cfg, np.random.default_rng(0)).astype(np.int64) for m in fakes.ids
    )
    assert np.array_equal(r.total, (q - 5 * fakes.cfg.offset) / fakes.cfg.scale)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_driver_recovers_silent_and_failing_members(stage: int) -> None:
    fakes = FakeFacilities(8, silent={"f1": stage}, failing={"f3": stage})  # t = 6: two dropouts allowed
    r = run(fakes, SILENT)
    assert not r.abandoned, r.reason
    # at the unmask stage they have sent their masked input: still in the sum
    in_sum = fakes.ids if stage == 4 else [m for m in fakes.ids if m not in ("f1", "f3")]
    assert list(r.members) == in_sum
    assert r.count == len(in_sum)
    assert np.array_equal(r.total, fakes.expected(in_sum))


def test_driver_abandons_a_bucket_with_too_many_dropouts() -> None:
    fakes = FakeFacilities(5, failing={"f0": 3, "f1": 3})  # t = 4: two dropouts are one too many
    r = run(fakes)
    assert r.abandoned and r.count == 0 and r.total.size == 0
    assert "abandoned" in r.reason and set(r.dropped) == {"f0", "f1"}


def test_driver_key_substitution_aborts_the_bucket_never_a_wrong_sum() -> None:
    fakes = FakeFacilities(4, swap_key_of="f2")
    r = run(fakes)
    assert r.abandoned
    assert {m for m in fakes.ids if m != "f2"} <= set(fakes.errors)
    assert all("KeySubstitutionError" in fakes.errors[m] and "f2" in fakes.errors[m] for m in fakes.errors)


def test_driver_drops_a_member_that_answers_for_someone_else() -> None:
    fakes = FakeFacilities(5)

    original = fakes.masked_input

    async def impostor(member: str, shares: Sequence[EncryptedShare], timeout: float) -> MaskedInput:
        msg = await original(member, shares, timeout)
        return replace(msg, sender="f0") if member == "f4" else msg

    fakes.masked_input = impostor  # type: ignore[method-assign]
    r = run(fakes)
    assert not r.abandoned and "f4" in r.dropped
    assert np.array_equal(r.total, fakes.expected(fakes.ids[:4]))


def test_driver_refuses_an_unsafe_bucket() -> None:
    fakes = FakeFacilities(4)
    bad = replace(fakes.bucket, threshold=2)
    r = asyncio.run(run_secure_bucket(bad, ROUND, ATTEMPT, D, PLAN, fakes, ROOMY))
    assert r.abandoned and "threshold" in r.reason


# ---------------------------------------------------------------------------------------------- wire link
class WireLink(FacilityMemberLink):
    """The fog's real member link, with the fake facilities answering the calls it serialises in place
    of the facilities' connections; records every call (its bytes) it sends."""

    def __init__(self, fakes: FakeFacilities, marks: PhaseMarks) -> None:
        config = cast(RoundConfig, SimpleNamespace(round=ROUND, attempt=ATTEMPT))
        self.shared = SharedModel(common_pb2.Model())
        request = BucketRequest(common_pb2.RoundConfig(), self.shared, common_pb2.TrainingPlan())
        super().__init__(config, request, "b0", Links(), None, D, marks=marks)
        self.fakes = fakes
        self.sent: dict[str, list[Message]] = {}

    async def _call(self, member: str, kind: str, data: Message, timeout: float) -> Any:
        """The fake facility's answer, serialised and read back as the fog reads a connection's answers
        (hfl.rpc.link.decode_reply: a masked input's vector stays a view of the received bytes)."""
        called, request = decode_call(bytes(data) if isinstance(data, Joined) else data)
        assert called == kind
        self.sent.setdefault(CALLS[kind], []).append(data)
        return decode_reply(encode_reply(kind, self._answer(member, CALLS[kind], request)), kind)

    def _answer(self, member: str, method: str, request: Any) -> Any:
        m = self.fakes.members[member]
        if method == "SecAggAdvertise":
            return facility_pb2.SecAggAdvertiseResponse(
                advertisement=serde.advertisement_to_proto(m.advertise())
            )
        if method == "SecAggShareKeys":
            try:
                shares = m.share_keys([serde.advertisement_from_proto(a) for a in request.advertisements])
            except Exception as e:
                self.fakes.errors[member] = f"{type(e).__name__}: {e}"
                raise
            return facility_pb2.SecAggShareKeysResponse(shares=[serde.share_to_proto(x) for x in shares])
        if method == "SecAggMaskedInput":
            shares = serde.shares_from_proto(request.shares)
            return serde.masked_input_to_proto(m.masked_input(shares, self.fakes.updates[member]))
        _round, _attempt, req = serde.unmask_request_from_proto(request)
        return serde.unmask_response_to_proto(m.unmask(req.survivors, req.dropped))


class KeySwappingWireLink(WireLink, KeySwappingMemberLink):
    """The faulty fog's link (HFL_BYZANTINE=swap_keys, services/fog/faults.py) over the fake facilities."""


def shared_field(shared: SharedModel) -> bytes:
    """The round's serialised model field, once made (read outside the event loop that made it)."""
    assert shared._field is not None and shared._field.done()
    return shared._field.result()


def test_link_serialises_each_bucket_wide_call_once_and_marks_the_phases() -> None:
    fakes = FakeFacilities(5)
    marks = PhaseMarks()
    link = WireLink(fakes, marks)
    r = asyncio.run(run_secure_bucket(fakes.bucket, ROUND, ATTEMPT, D, PLAN, link, ROOMY))
    assert not r.abandoned and r.count == 5
    assert np.array_equal(r.total, fakes.expected(fakes.ids))
    assert {k: len(v) for k, v in link.sent.items()} == {
        "SecAggAdvertise": 5,
        "SecAggShareKeys": 5,
        "SecAggMaskedInput": 5,
        "SecAggUnmask": 5,
    }
    for method in ("SecAggAdvertise", "SecAggShareKeys", "SecAggUnmask"):  # the same bytes for everyone
        assert all(req is link.sent[method][0] for req in link.sent[method]), method
    assert len(decode_call(bytes(link.sent["SecAggShareKeys"][0]))[1].advertisements) == 5
    advert = link.sent["SecAggAdvertise"][0]  # the bucket's own fields and the round's one model copy
    assert isinstance(advert, Joined) and shared_field(link.shared) is advert.parts[-1]
    assert marks.t0 <= marks.marks["distributed"] <= marks.marks["collected"]


def test_link_that_swaps_keys_makes_every_member_abort() -> None:
    fakes = FakeFacilities(4)
    link = KeySwappingWireLink(fakes, PhaseMarks())
    r = asyncio.run(run_secure_bucket(fakes.bucket, ROUND, ATTEMPT, D, PLAN, link, ROOMY))
    assert r.abandoned and r.count == 0
    assert all(req is link.sent["SecAggShareKeys"][0] for req in link.sent["SecAggShareKeys"])
    assert set(fakes.errors) == set(fakes.ids)  # the victim sees its own advertisement altered
    assert all("KeySubstitutionError" in e for e in fakes.errors.values())
    assert "was altered" in fakes.errors["f0"]


def test_only_a_fog_with_the_fault_set_swaps_keys() -> None:
    from hfl.rpc.settings import Settings
    from services.fog.service import Fog

    assert fog_class(Settings(role="fog")) is Fog
    assert fog_class(Settings(role="fog", byzantine="swap_keys")) is FaultyFog


# ------------------------------------------------------------------------------------ the facility's side
def test_a_facility_masks_its_own_update_in_place_lets_it_go_and_refuses_a_second_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stage 3 at the facility: the update is clipped in place (it is the facility's own), the masked
    vector goes out as a view (no copy into protobuf), the update is not kept for the rest of the round,
    and a repeated request is refused as stale instead of masking again. Once it has unmasked (stage 4),
    the session is gone and the process hands its freed pages back soon after."""
    from hfl import memory
    from hfl.errors import StaleRound
    from hfl.rpc.link import Lifted
    from services.facility.secure import SecureAggregation, Session

    fakes = FakeFacilities(3)
    ads = [m.advertise() for m in fakes.members.values()]
    shares = [s for m in fakes.members.values() for s in m.share_keys(ads)]
    me = "f0"
    request = facility_pb2.SecAggMaskedInputRequest(
        session=serde.session_to_proto(ROUND, ATTEMPT, "b0"),
        shares=[serde.share_to_proto(s) for s in shares if s.recipient == me],
    )

    async def flush(round_: int, attempt: int) -> None:
        return None

    host = SimpleNamespace(privacy=SimpleNamespace(flush=flush), last_round=ROUND)
    secure = SecureAggregation(cast(Any, host))

    async def main() -> None:
        update: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        delta = fakes.updates[me].copy()
        delta[0] = 5 * PLAN.clip_update  # beyond the clip: clipped where it lies
        update.set_result(delta)
        sess = Session((ROUND, ATTEMPT, "b0"), fakes.members[me], cast(Any, update), PLAN.clip_update)
        secure._sessions[sess.key] = sess
        out = await secure.masked_input(request)
        assert isinstance(out, Lifted) and len(out.data) == 4 * D
        assert delta[0] == PLAN.clip_update  # clipped in place, no model-sized copy
        assert sess.update is None  # the update is let go
        got = decode_reply(encode_reply("secagg_masked_input", out), "secagg_masked_input")
        assert serde.masked_input_from_proto(got.message, expected_length=D, data=got.data).sender == me
        with pytest.raises(StaleRound, match="already sent"):
            await secure.masked_input(request)
        released: list[int] = []
        monkeypatch.setattr(memory, "release_free_memory", lambda: released.append(1) or True)
        monkeypatch.setattr(memory, "RELEASE_AFTER_S", 0.0)
        everyone = tuple(fakes.members)
        unmask = UnmaskRequest(round=0, bucket="b0", survivors=everyone, dropped=())
        await secure.unmask(serde.unmask_request_to_proto(ROUND, ATTEMPT, unmask))
        assert sess.key not in secure._sessions and released == []
        await asyncio.sleep(0.01)
        assert released == [1]

    asyncio.run(main())
