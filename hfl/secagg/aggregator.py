"""Fog side of secure aggregation: route messages, track dropouts, remove masks from the sum.

The aggregator only ever holds masked vectors and, at the end, the self-mask seeds b of members that
sent a masked input and the masking keys s_sk of members that dropped before sending one. From these
it removes exactly the masks that do not cancel, leaving the sum of the survivors' quantised updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np

from hfl.crypto import kex, shamir
from hfl.secagg import protocol as p
from hfl.secagg.errors import (
    BucketAbandoned,
    DuplicateMessageError,
    InvalidInputError,
    InvalidMessageError,
    ReconstructionError,
    StageError,
)
from hfl.secagg.messages import (
    BucketSum,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from hfl.secagg.quantize import QuantConfig, QuantizationError, check_sum, dequantize_sum

__all__ = ["AggregatorStage", "BucketAggregator"]


class AggregatorStage(Enum):
    ADVERTISE = "collecting key advertisements"
    SHARE_KEYS = "collecting encrypted shares"
    MASKED_INPUT = "collecting masked inputs"
    UNMASK = "collecting unmask responses"
    DONE = "done"
    ABANDONED = "abandoned"


# close_stage moves along this table.
_NEXT_STAGE: dict[AggregatorStage, AggregatorStage] = {
    AggregatorStage.ADVERTISE: AggregatorStage.SHARE_KEYS,
    AggregatorStage.SHARE_KEYS: AggregatorStage.MASKED_INPUT,
    AggregatorStage.MASKED_INPUT: AggregatorStage.UNMASK,
    AggregatorStage.UNMASK: AggregatorStage.DONE,
}

# action -> (stage it requires, stage it leads to); receiving a message does not change the stage.
_ACTIONS: dict[str, tuple[object, object]] = {
    "accept a key advertisement": (AggregatorStage.ADVERTISE, AggregatorStage.ADVERTISE),
    "accept encrypted shares": (AggregatorStage.SHARE_KEYS, AggregatorStage.SHARE_KEYS),
    "accept a masked input": (AggregatorStage.MASKED_INPUT, AggregatorStage.MASKED_INPUT),
    "accept an unmask response": (AggregatorStage.UNMASK, AggregatorStage.UNMASK),
    "compute the result": (AggregatorStage.DONE, AggregatorStage.DONE),
}

# The protocol stage (as used for drop bookkeeping) of each collecting stage.
_PROTOCOL_STAGE = {
    AggregatorStage.ADVERTISE: p.Stage.ADVERTISE,
    AggregatorStage.SHARE_KEYS: p.Stage.SHARE_KEYS,
    AggregatorStage.MASKED_INPUT: p.Stage.MASKED_INPUT,
    AggregatorStage.UNMASK: p.Stage.UNMASK,
}


class BucketAggregator:
    """The aggregator's state machine for one bucket in one round.

    Collect a stage's messages with the ``add_*`` methods, then call ``close_stage()``: members that
    did not answer (or were ``mark_dropped``) are recorded as dropped at that stage.
    """

    def __init__(
        self, round: int, bucket: str, member_ids: Sequence[str], t: int, cfg: QuantConfig, d: int
    ) -> None:
        self._ids = p.check_member_ids(member_ids)
        p.check_threshold(t, len(self._ids))
        p.check_common(round, bucket, cfg, d, len(self._ids))
        self.round = round
        self.bucket = bucket
        self.t = t
        self.cfg = cfg
        self.d = d
        self._index = {mid: i + 1 for i, mid in enumerate(self._ids)}
        self._stage = AggregatorStage.ADVERTISE
        self._active: set[str] = set(self._ids)  # expected to answer in the current stage
        self._dropped_at: dict[str, p.Stage] = {}
        self._ads: dict[str, KeyAdvertisement] = {}
        self._shares: dict[str, dict[str, EncryptedShare]] = {}  # sender -> recipient -> share
        # Masked inputs are summed as they arrive (mod 2**32, so the order does not matter): the
        # aggregator holds one vector per bucket, not one per member.
        self._inputs: dict[str, None] = {}  # who sent one
        self._sum = np.zeros(0, dtype=np.uint32)
        self._responses: dict[str, UnmaskResponse] = {}
        self._u1: tuple[str, ...] = ()
        self._u2: tuple[str, ...] = ()
        self._u3: tuple[str, ...] = ()
        self._result: BucketSum | None = None

    # Introspection -------------------------------------------------------------------------------
    @property
    def stage(self) -> AggregatorStage:
        return self._stage

    @property
    def members(self) -> tuple[str, ...]:
        return self._ids

    @property
    def alive(self) -> tuple[str, ...]:
        """Members still expected to answer in the current stage."""
        return tuple(sorted(self._active))

    @property
    def dropped_at(self) -> dict[str, p.Stage]:
        """Member id -> the stage at which it stopped answering."""
        return dict(self._dropped_at)

    def _require(self, action: str) -> None:
        if self._stage is AggregatorStage.ABANDONED:
            raise StageError(f"bucket {self.bucket!r} was abandoned; it accepts no further messages")
        p.check_stage(self._stage, action, _ACTIONS)

    def _require_after(self, stage: AggregatorStage, what: str) -> None:
        order = [*_NEXT_STAGE, AggregatorStage.DONE]
        if self._stage is AggregatorStage.ABANDONED or order.index(self._stage) <= order.index(stage):
            raise StageError(f"{what} is only available after the stage '{stage.value}' is closed")

    # Stage 1 -------------------------------------------------------------------------------------
    def add_advertisement(self, ad: KeyAdvertisement) -> None:
        self._require("accept a key advertisement")
        if not isinstance(ad, KeyAdvertisement):
            raise InvalidMessageError(f"expected a key advertisement, got {type(ad).__name__}")
        p.check_header("key advertisement", ad.round, ad.bucket, self.round, self.bucket)
        p.check_known(ad.sender, self._active, "key advertisement")
        if ad.sender in self._ads:
            raise DuplicateMessageError(f"{ad.sender!r} already sent its key advertisement")
        for key in (ad.c_pk, ad.s_pk):
            if not isinstance(key, bytes) or len(key) != kex.KEY_LEN:
                raise InvalidMessageError(f"key advertisement of {ad.sender!r} has a malformed public key")
        self._ads[ad.sender] = ad

    def advertisements(self) -> list[KeyAdvertisement]:
        """All accepted advertisements, to be sent to every member that advertised."""
        self._require_after(AggregatorStage.ADVERTISE, "the advertisement list")
        return [self._ads[m] for m in self._u1]

    # Stage 2 -------------------------------------------------------------------------------------
    def add_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """One member's encrypted shares: exactly one for every other member that advertised."""
        self._require("accept encrypted shares")
        shares = list(shares)
        if not shares or not all(isinstance(s, EncryptedShare) for s in shares):
            raise InvalidMessageError("expected a non-empty list of encrypted shares")
        for s in shares:
            p.check_header("encrypted share", s.round, s.bucket, self.round, self.bucket)
        sender = p.check_known(shares[0].sender, self._active, "encrypted shares")
        if any(s.sender != sender for s in shares):
            raise InvalidMessageError("a batch of encrypted shares must all come from one sender")
        if sender in self._shares:
            raise DuplicateMessageError(f"{sender!r} already sent its encrypted shares")
        recipients = [s.recipient for s in shares]
        if len(set(recipients)) != len(recipients):
            raise DuplicateMessageError(f"{sender!r} sent two shares to the same recipient")
        expected = set(self._u1) - {sender}
        if set(recipients) != expected:
            raise InvalidMessageError(
                f"{sender!r} must send one share to each of {sorted(expected)}, got {sorted(recipients)}"
            )
        self._shares[sender] = {s.recipient: s for s in shares}

    def shares_for(self, member: str) -> list[EncryptedShare]:
        """The encrypted shares addressed to ``member`` from every member that shared keys."""
        self._require_after(AggregatorStage.SHARE_KEYS, "share routing")
        p.check_known(member, self._u2, "share request")
        return [self._shares[s][member] for s in self._u2 if s != member]

    # Stage 3 -------------------------------------------------------------------------------------
    def add_masked_input(self, msg: MaskedInput) -> None:
        self._require("accept a masked input")
        if not isinstance(msg, MaskedInput):
            raise InvalidMessageError(f"expected a masked input, got {type(msg).__name__}")
        p.check_header("masked input", msg.round, msg.bucket, self.round, self.bucket)
        p.check_known(msg.sender, self._active, "masked input")
        if msg.sender in self._inputs:
            raise DuplicateMessageError(f"{msg.sender!r} already sent its masked input")
        y = np.asarray(msg.y)
        if y.dtype != np.uint32 or y.shape != (self.d,):
            raise InvalidInputError(
                f"masked input from {msg.sender!r} must be a uint32 vector of length {self.d}, "
                f"got {y.dtype} of shape {y.shape}"
            )
        if not self._inputs:
            self._sum = np.zeros(self.d, dtype=np.uint32)
        np.add(self._sum, y, out=self._sum)
        self._inputs[msg.sender] = None

    # Stage 4 -------------------------------------------------------------------------------------
    def unmask_request(self) -> UnmaskRequest:
        """Who survived (sent a masked input) and who dropped after sharing keys."""
        self._require_after(AggregatorStage.MASKED_INPUT, "the unmask request")
        dropped = tuple(m for m in self._u2 if m not in set(self._u3))
        return UnmaskRequest(self.round, self.bucket, self._u3, dropped)

    def add_unmask_response(self, resp: UnmaskResponse) -> None:
        self._require("accept an unmask response")
        if not isinstance(resp, UnmaskResponse):
            raise InvalidMessageError(f"expected an unmask response, got {type(resp).__name__}")
        p.check_header("unmask response", resp.round, resp.bucket, self.round, self.bucket)
        p.check_known(resp.sender, self._active, "unmask response")
        if resp.sender in self._responses:
            raise DuplicateMessageError(f"{resp.sender!r} already sent its unmask response")
        req = self.unmask_request()
        if (
            tuple(o for o, _ in resp.b_shares) != req.survivors
            or tuple(o for o, _ in resp.s_shares) != req.dropped
        ):
            raise InvalidMessageError(f"unmask response from {resp.sender!r} does not answer the request")
        self._responses[resp.sender] = resp

    # Dropouts and stage closing --------------------------------------------------------------------
    def mark_dropped(self, member: str) -> None:
        """Record that ``member`` stopped answering; anything it sent in the current stage is discarded,
        except a masked input, which is summed on arrival: a member whose masked input came is a
        survivor (StageError)."""
        if self._stage in (AggregatorStage.DONE, AggregatorStage.ABANDONED):
            raise StageError(f"bucket {self.bucket!r} is already {self._stage.value}")
        p.check_known(member, self._active, "drop notice")
        if self._stage is AggregatorStage.MASKED_INPUT and member in self._inputs:
            raise StageError(f"{member!r} already sent its masked input, which is in the sum (a survivor)")
        stage = _PROTOCOL_STAGE[self._stage]
        self._active.discard(member)
        self._dropped_at[member] = stage
        self._received().pop(member, None)
        self._check_enough(len(self._active), "still connected")

    def _received(self) -> dict[str, Any]:
        """Messages collected in the current stage, keyed by sender."""
        by_stage: dict[AggregatorStage, dict[str, Any]] = {
            AggregatorStage.ADVERTISE: self._ads,
            AggregatorStage.SHARE_KEYS: self._shares,
            AggregatorStage.MASKED_INPUT: self._inputs,
            AggregatorStage.UNMASK: self._responses,
        }
        return by_stage[self._stage]

    def _check_enough(self, n: int, what: str) -> None:
        if n < self.t:
            stage = self._stage
            self._stage = AggregatorStage.ABANDONED
            # No round here: self.round is the protocol's packed id (round << 16 | attempt), e.g.
            # 2686976 for round 41; whoever logs this already says which round it was.
            raise BucketAbandoned(
                f"bucket {self.bucket!r}: only {n} of {len(self._ids)} members {what} at stage "
                f"'{stage.value}', but {self.t} are needed; the bucket is abandoned"
            )

    def close_stage(self) -> AggregatorStage:
        """End the current stage: silent members count as dropped here. Returns the new stage."""
        if self._stage not in _NEXT_STAGE:
            raise StageError(f"bucket {self.bucket!r} is {self._stage.value}; there is no stage to close")
        answered = tuple(m for m in self._ids if m in self._received())
        for m in sorted(self._active - set(answered)):
            self._dropped_at[m] = _PROTOCOL_STAGE[self._stage]
        self._check_enough(len(answered), "answered")
        if self._stage is AggregatorStage.ADVERTISE:
            self._u1 = answered
        elif self._stage is AggregatorStage.SHARE_KEYS:
            self._u2 = answered
        elif self._stage is AggregatorStage.MASKED_INPUT:
            self._u3 = answered
        # after UNMASK, U3 members stay in the sum whether or not they answered
        self._active = set(answered)
        self._stage = _NEXT_STAGE[self._stage]
        return self._stage

    # Result ----------------------------------------------------------------------------------------
    def result(self) -> BucketSum:
        """Reconstruct the secrets, remove all remaining masks and return the exact bucket sum (float64)."""
        s = self.integer_result()
        return dataclasses.replace(s, total=dequantize_sum(s.total, s.count, self.cfg))

    def integer_result(self) -> BucketSum:
        """As :meth:`result`, but the sum as the survivors' quantised vectors add up (uint32, checked to be
        in range): ``dequantize_sum(total, count, cfg)`` is result()'s sum exactly. Half the bytes of the
        float64 sum; what a fog sends its leader (hfl.rpc.serde.bucket_result_from_proto turns it back)."""
        self._require("compute the result")
        if self._result is None:
            self._result = self._compute()
        return self._result

    def _combine(self, owner: str, which: int) -> bytes:
        shares = []
        for sender, resp in sorted(self._responses.items()):
            raw = dict(resp.b_shares if which == 0 else resp.s_shares)[owner]
            try:
                share = shamir.Share.from_bytes(raw)
            except shamir.ShamirError as exc:
                raise ReconstructionError(f"{sender!r} sent a malformed share for {owner!r}") from exc
            if share.x != self._index[sender]:
                raise ReconstructionError(f"{sender!r} sent a share with another member's index")
            shares.append(share)
        try:
            return shamir.combine(shares, self.t)
        except shamir.ShamirError as exc:
            raise ReconstructionError(f"cannot reconstruct the secret of {owner!r}: {exc}") from exc

    def _compute(self) -> BucketSum:
        survivors = self._u3
        dropped = tuple(m for m in self._u2 if m not in set(survivors))
        total = self._sum.copy()  # the survivors' masked inputs (kept, so a failed result can be retried)
        for u in survivors:
            np.subtract(total, p.self_mask(self._combine(u, 0), self.d), out=total)
        for v in dropped:
            s_sk = self._combine(v, 1)
            try:
                ok = kex.public_from_private(s_sk) == self._ads[v].s_pk
            except kex.KeyExchangeError:
                ok = False
            if not ok:
                raise ReconstructionError(
                    f"the reconstructed masking key of {v!r} does not match its advertisement"
                )
            s_key = kex.load_private(s_sk)
            for u in survivors:
                try:
                    mask = p.pair_mask(s_key, self._ads[u].s_pk, self.round, self.bucket, v, u, self.d)
                except kex.KeyExchangeError as exc:
                    raise ReconstructionError(f"{u!r} advertised an unusable masking key") from exc
                p.apply_pair_mask(total, mask, u, v, remove=True)
        try:
            check_sum(total, len(survivors), self.cfg)
        except QuantizationError as exc:
            raise ReconstructionError(f"bucket {self.bucket!r}: {exc}") from exc
        all_dropped = tuple(m for m in self._ids if m not in set(survivors))
        return BucketSum(total, len(survivors), survivors, all_dropped)
