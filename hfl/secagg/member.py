"""Facility side of secure aggregation (Bonawitz et al. 2017, signed key advertisements).

A member only ever releases its update masked by a self mask PRG(b) and pairwise masks PRG(s_uv) that
cancel in the sum. The aggregator later learns b for members that sent their masked input and s_sk
for members that dropped after sharing keys, never both for the same member.

Any refusal other than a call in the wrong stage aborts the member (fail closed): the aggregator then
treats it as dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np

from hfl.crypto import aead, kex, shamir
from hfl.crypto.signing import InvalidSignature, SigningKey, verify
from hfl.secagg import protocol as p
from hfl.secagg.errors import (
    BucketAbandoned,
    DuplicateMessageError,
    InconsistentUnmaskRequestError,
    InvalidInputError,
    InvalidMessageError,
    KeySubstitutionError,
    SecAggConfigError,
    SecAggError,
    ShareDecryptionError,
    StageError,
)
from hfl.secagg.messages import EncryptedShare, KeyAdvertisement, MaskedInput, UnmaskResponse
from hfl.secagg.quantize import QuantConfig, QuantizationError, quantize

__all__ = ["MemberStage", "SecAggMember"]


class MemberStage(Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared keys"
    MASKED = "sent masked input"
    DONE = "done"
    ABORTED = "aborted"


# action -> (stage it requires, stage it leads to)
_TRANSITIONS: dict[str, tuple[object, object]] = {
    "advertise": (MemberStage.NEW, MemberStage.ADVERTISED),
    "share_keys": (MemberStage.ADVERTISED, MemberStage.SHARED),
    "masked_input": (MemberStage.SHARED, MemberStage.MASKED),
    "unmask": (MemberStage.MASKED, MemberStage.DONE),
}


class SecAggMember:
    """One facility's state machine for one round in one bucket.

    ``members`` maps every member id of the bucket (including this one) to its certified Ed25519
    identity public key. Order does not matter: ids are sorted, and a member's Shamir index is its
    1-based position in that order.
    """

    def __init__(
        self,
        node_id: str,
        round: int,
        bucket: str,
        members: Mapping[str, bytes],
        signing_key: SigningKey,
        t: int,
        cfg: QuantConfig,
        d: int,
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._ids = p.check_member_ids(members)
        g = len(self._ids)
        p.check_threshold(t, g)
        p.check_common(round, bucket, cfg, d, g)
        if node_id not in members:
            raise SecAggConfigError(f"{node_id!r} is not in the member list of bucket {bucket!r}")
        for mid, pk in members.items():
            if not isinstance(pk, bytes) or len(pk) != 32:
                raise SecAggConfigError(f"identity key of {mid!r} must be a 32-byte Ed25519 public key")
        if signing_key.public_bytes != members[node_id]:
            raise SecAggConfigError(f"the signing key given does not match the certified key of {node_id!r}")
        self.node_id = node_id
        self.round = round
        self.bucket = bucket
        self.t = t
        self.cfg = cfg
        self.d = d
        self._identity = dict(members)
        self._index = {mid: i + 1 for i, mid in enumerate(self._ids)}
        self._signing_key = signing_key
        self._rng = rng if rng is not None else np.random.default_rng(int.from_bytes(os.urandom(32), "big"))
        self._stage = MemberStage.NEW
        self._c: kex.KeyPair | None = None
        self._s: kex.KeyPair | None = None
        self._ads: dict[str, KeyAdvertisement] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (my share of b_owner, of s_sk_owner)
        self._u2: frozenset[str] = frozenset()
        self._b: bytes | None = None  # self-mask seed
        self._share_keys_for: dict[str, bytes] = {}  # peer -> AEAD key for shares exchanged with it

    @property
    def stage(self) -> MemberStage:
        return self._stage

    def _enter(self, action: str) -> MemberStage:
        if self._stage is MemberStage.ABORTED:
            raise StageError(f"member {self.node_id!r} aborted earlier and takes no further part this round")
        nxt = p.check_stage(self._stage, action, _TRANSITIONS)
        assert isinstance(nxt, MemberStage)
        return nxt

    def _abort(self) -> None:
        self._stage = MemberStage.ABORTED
        self._c = self._s = None
        self._b = None
        self._share_keys_for.clear()
        self._held.clear()

    # Stage 1 -------------------------------------------------------------------------------------
    def advertise(self) -> KeyAdvertisement:
        """Fresh X25519 keys for encryption (c) and masking (s), signed with the identity key."""
        nxt = self._enter("advertise")
        self._c, self._s = kex.generate_keypair(), kex.generate_keypair()
        payload = p.advertisement_payload(
            self.round, self.bucket, self.node_id, self._c.public, self._s.public
        )
        ad = KeyAdvertisement(
            self.round,
            self.bucket,
            self.node_id,
            self._c.public,
            self._s.public,
            self._signing_key.sign(payload),
        )
        self._ads[self.node_id] = ad
        self._stage = nxt
        return ad

    # Stage 2 -------------------------------------------------------------------------------------
    def share_keys(self, ads: Sequence[KeyAdvertisement]) -> list[EncryptedShare]:
        """Verify every advertisement, then Shamir-share b and s_sk to every advertised peer, encrypted."""
        nxt = self._enter("share_keys")
        try:
            out = self._share_keys(ads)
        except SecAggError:
            self._abort()
            raise
        self._stage = nxt
        return out

    def _share_keys(self, ads: Sequence[KeyAdvertisement]) -> list[EncryptedShare]:
        assert self._c is not None and self._s is not None
        own = self._ads[self.node_id]
        seen: dict[str, KeyAdvertisement] = {}
        for ad in ads:
            if not isinstance(ad, KeyAdvertisement):
                raise InvalidMessageError(f"expected key advertisements, got {type(ad).__name__}")
            p.check_header("key advertisement", ad.round, ad.bucket, self.round, self.bucket)
            p.check_known(ad.sender, self._ids, "key advertisement")
            if ad.sender in seen:
                raise DuplicateMessageError(f"two key advertisements from {ad.sender!r}")
            if ad.sender == self.node_id:
                if ad != own:
                    raise KeySubstitutionError(
                        f"this member's own advertisement ({self.node_id!r}) was altered"
                    )
                seen[ad.sender] = ad
                continue
            payload = p.advertisement_payload(ad.round, ad.bucket, ad.sender, ad.c_pk, ad.s_pk)
            try:
                verify(self._identity[ad.sender], payload, ad.signature)
            except InvalidSignature as exc:
                raise KeySubstitutionError(
                    f"the key advertisement of {ad.sender!r} is not signed by its certified identity key; "
                    "its keys were substituted or altered, so this member stops"
                ) from exc
            if len(ad.c_pk) != kex.KEY_LEN or len(ad.s_pk) != kex.KEY_LEN:
                raise InvalidMessageError(f"{ad.sender!r} advertised malformed public keys")
            seen[ad.sender] = ad
        if seen.get(self.node_id) != own:
            raise KeySubstitutionError(
                f"this member's own advertisement ({self.node_id!r}) is missing or altered"
            )
        if len(seen) < self.t:
            raise BucketAbandoned(f"only {len(seen)} members advertised keys; at least {self.t} are needed")
        self._ads = seen
        g = len(self._ids)
        b = os.urandom(32)
        b_shares = shamir.split(b, self.t, g)
        s_shares = shamir.split(self._s.private, self.t, g)
        out = []
        for peer in sorted(seen):
            i = self._index[peer] - 1
            if peer == self.node_id:
                self._held[peer] = (b_shares[i].to_bytes(), s_shares[i].to_bytes())
                continue
            try:
                shared = kex.agree(self._c.key, seen[peer].c_pk)
            except kex.KeyExchangeError as exc:
                raise InvalidMessageError(f"{peer!r} advertised an unusable encryption key") from exc
            key = kex.derive_key(
                shared,
                purpose=p.PURPOSE_SHARE_KEY,
                round=self.round,
                bucket=self.bucket,
                a=self.node_id,
                b=peer,
            )
            self._share_keys_for[peer] = key
            plaintext = p.share_plaintext(self.node_id, peer, b_shares[i].to_bytes(), s_shares[i].to_bytes())
            aad = p.share_aad(self.round, self.bucket, self.node_id, peer)
            out.append(
                EncryptedShare(self.round, self.bucket, self.node_id, peer, aead.seal(key, plaintext, aad))
            )
        self._b = b
        return out

    # Stage 3 -------------------------------------------------------------------------------------
    def masked_input(self, shares_for_me: Sequence[EncryptedShare], x: np.ndarray) -> MaskedInput:
        """Store the shares addressed to me and return my quantised update plus all masks, mod 2**32."""
        nxt = self._enter("masked_input")
        try:
            out = self._masked_input(shares_for_me, x)
        except SecAggError:
            self._abort()
            raise
        self._stage = nxt
        return out

    def _masked_input(self, shares_for_me: Sequence[EncryptedShare], x: np.ndarray) -> MaskedInput:
        assert self._c is not None and self._s is not None and self._b is not None
        arr = np.asarray(x)
        if arr.ndim != 1 or arr.shape[0] != self.d:
            raise InvalidInputError(f"the update must be a vector of length {self.d}, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInputError(f"the update must be numeric, got {arr.dtype}")
        try:
            q = quantize(np.asarray(arr, dtype=np.float64), self.cfg, self._rng)  # it does not write x
        except QuantizationError as exc:
            raise InvalidInputError(str(exc)) from exc
        received: dict[str, tuple[bytes, bytes]] = {}
        my_index = self._index[self.node_id]
        for msg in shares_for_me:
            if not isinstance(msg, EncryptedShare):
                raise InvalidMessageError(f"expected encrypted shares, got {type(msg).__name__}")
            p.check_header("encrypted share", msg.round, msg.bucket, self.round, self.bucket)
            if msg.recipient != self.node_id:
                raise InvalidMessageError(
                    f"an encrypted share addressed to {msg.recipient!r} was routed here"
                )
            sender = p.check_known(msg.sender, set(self._ads) - {self.node_id}, "encrypted share")
            if sender in received:
                raise DuplicateMessageError(f"two encrypted shares from {sender!r}")
            key = self._share_keys_for[sender]
            try:
                plaintext = aead.open_(
                    key, msg.ciphertext, p.share_aad(self.round, self.bucket, sender, self.node_id)
                )
            except aead.DecryptionError as exc:
                raise ShareDecryptionError(
                    f"the encrypted share from {sender!r} failed authentication (tampered or misrouted)"
                ) from exc
            b_raw, s_raw = p.parse_share_plaintext(plaintext, sender, self.node_id)
            try:
                b_share, s_share = shamir.Share.from_bytes(b_raw), shamir.Share.from_bytes(s_raw)
            except shamir.ShamirError as exc:
                raise InvalidMessageError(f"malformed share from {sender!r}: {exc}") from exc
            if b_share.x != my_index or s_share.x != my_index:
                raise InvalidMessageError(f"{sender!r} sent a share meant for another member")
            received[sender] = (b_raw, s_raw)
        u2 = frozenset(received) | {self.node_id}
        if len(u2) < self.t:
            raise BucketAbandoned(
                f"only {len(u2)} members shared keys with {self.node_id!r}; at least {self.t} are needed"
            )
        self._held.update(received)
        self._u2 = u2
        y = q
        np.add(y, p.self_mask(self._b, self.d), out=y)
        for peer in sorted(u2 - {self.node_id}):
            try:
                mask = p.pair_mask(
                    self._s.key, self._ads[peer].s_pk, self.round, self.bucket, self.node_id, peer, self.d
                )
            except kex.KeyExchangeError as exc:
                raise InvalidMessageError(f"{peer!r} advertised an unusable masking key") from exc
            p.apply_pair_mask(y, mask, self.node_id, peer, remove=False)
        self._b = None
        return MaskedInput(self.round, self.bucket, self.node_id, y)

    # Stage 4 -------------------------------------------------------------------------------------
    def unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> UnmaskResponse:
        """My shares of b for each survivor and of s_sk for each dropped member, after consistency checks."""
        nxt = self._enter("unmask")
        try:
            out = self._unmask(survivors, dropped)
        except SecAggError:
            self._abort()
            raise
        self._stage = nxt
        self._held.clear()
        self._share_keys_for.clear()
        self._c = self._s = None
        return out

    def _unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> UnmaskResponse:
        surv, drop = list(survivors), list(dropped)
        if len(set(surv)) != len(surv) or len(set(drop)) != len(drop):
            raise InconsistentUnmaskRequestError("the unmask request lists a member twice")
        both = set(surv) & set(drop)
        if both:
            raise InconsistentUnmaskRequestError(
                f"the unmask request lists {sorted(both)} as both survived and dropped; answering would "
                "reveal their update, so this member refuses"
            )
        unknown = (set(surv) | set(drop)) - self._u2
        if unknown:
            raise InconsistentUnmaskRequestError(
                f"the unmask request names {sorted(unknown)}, who did not share keys with this member"
            )
        if self.node_id in drop:
            raise InconsistentUnmaskRequestError(
                f"the unmask request lists {self.node_id!r} as dropped, but it sent its masked input"
            )
        if len(surv) < self.t:
            raise InconsistentUnmaskRequestError(
                f"only {len(surv)} survivors listed; at least {self.t} are needed to release any sum"
            )
        return UnmaskResponse(
            self.round,
            self.bucket,
            self.node_id,
            tuple((v, self._held[v][0]) for v in sorted(surv)),
            tuple((v, self._held[v][1]) for v in sorted(drop)),
        )
