"""Pieces shared by the member and aggregator state machines: parameters, encodings and masks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from hfl.crypto import kex, prg
from hfl.secagg.errors import (
    InvalidMessageError,
    SecAggConfigError,
    StageError,
    UnknownMemberError,
    WrongBucketError,
    WrongRoundError,
)
from hfl.secagg.quantize import QuantConfig

__all__ = ["MIN_BUCKET_SIZE", "Stage", "check_threshold", "default_threshold", "unmask_threshold"]

MIN_BUCKET_SIZE = 3
"""The smallest bucket secure aggregation allows: with two members each could subtract its own update
from the sum and learn the other's. The one definition (hfl.schedule.MIN_SECURE_BUCKET is this value)."""

PURPOSE_SHARE_KEY = b"hfl/secagg/share-encryption"
PURPOSE_PAIR_SEED = b"hfl/secagg/pair-seed"
DOMAIN_SELF_MASK = b"hfl/secagg/self-mask"
DOMAIN_PAIR_MASK = b"hfl/secagg/pair-mask"
_AD_DOMAIN = b"hfl/secagg/advertisement/v1"
_AAD_DOMAIN = b"hfl/secagg/encrypted-share/v1"
_PLAINTEXT_DOMAIN = b"hfl/secagg/share-pair/v1"


class Stage(IntEnum):
    """Protocol stages, numbered as in ``run_bucket_in_memory(drop_at=...)``."""

    ADVERTISE = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    UNMASK = 4


STAGE_NAMES: dict[int, str] = {
    Stage.ADVERTISE: "advertise keys",
    Stage.SHARE_KEYS: "share keys",
    Stage.MASKED_INPUT: "masked input",
    Stage.UNMASK: "unmask",
}
"""Plain names of the stages, for logs and messages on both sides (members and fog)."""


def unmask_threshold(g: int) -> int:
    """floor(2g/3) + 1 for a bucket of g, unchecked: the authority writes it into every bucket of a round
    configuration, also into the smaller buckets of a plain (HFL_SECAGG=false) run."""
    return 2 * g // 3 + 1


def default_threshold(g: int) -> int:
    """floor(2g/3) + 1: the smallest t above 2g/3, needed against an aggregator that lies about dropouts."""
    check_bucket_size(g)
    return unmask_threshold(g)


def check_bucket_size(g: int) -> None:
    if isinstance(g, bool) or not isinstance(g, int):
        raise SecAggConfigError(f"bucket size must be an integer, got {g!r}")
    if g < MIN_BUCKET_SIZE:
        raise SecAggConfigError(
            f"a bucket needs at least {MIN_BUCKET_SIZE} members, got {g}: with two members each one "
            "could subtract its own update from the sum and learn the other's"
        )


def check_threshold(t: int, g: int) -> None:
    """Refuse thresholds that are not in (2g/3, g]."""
    check_bucket_size(g)
    if isinstance(t, bool) or not isinstance(t, int):
        raise SecAggConfigError(f"threshold must be an integer, got {t!r}")
    if not (3 * t > 2 * g and t <= g):
        raise SecAggConfigError(
            f"threshold {t} is unsafe or impossible for {g} members: it must be more than two thirds of "
            f"the bucket and at most the bucket size (use {default_threshold(g)})"
        )


def check_member_ids(ids: Iterable[str]) -> tuple[str, ...]:
    """Validated, sorted member ids (sorting fixes share indices and mask signs on every side)."""
    ids = list(ids)
    for i in ids:
        if not isinstance(i, str) or not i:
            raise SecAggConfigError(f"member ids must be non-empty strings, got {i!r}")
    if len(set(ids)) != len(ids):
        raise SecAggConfigError("member ids must be unique")
    check_bucket_size(len(ids))
    return tuple(sorted(ids))


def check_common(round: int, bucket: str, cfg: QuantConfig, d: int, g: int) -> None:
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise SecAggConfigError(f"round must be a non-negative integer, got {round!r}")
    if not isinstance(bucket, str) or not bucket:
        raise SecAggConfigError(f"bucket id must be a non-empty string, got {bucket!r}")
    if not isinstance(cfg, QuantConfig):
        raise SecAggConfigError("cfg must be a QuantConfig")
    if cfg.max_members < g:
        raise SecAggConfigError(
            f"quantisation is sized for {cfg.max_members} members but the bucket has {g}; the sum could "
            "overflow"
        )
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise SecAggConfigError(f"vector length d must be a positive integer, got {d!r}")


def check_header(kind: str, msg_round: object, msg_bucket: object, round: int, bucket: str) -> None:
    """Refuse a message from another round (replay) or bucket."""
    if msg_round != round:
        raise WrongRoundError(f"{kind} is for round {msg_round!r}, but this is round {round}")
    if msg_bucket != bucket:
        raise WrongBucketError(f"{kind} is for bucket {msg_bucket!r}, but this is bucket {bucket!r}")


def check_stage(current: object, action: str, table: dict[str, tuple[object, object]]) -> object:
    """Look ``action`` up in a transition table; return the next stage or raise StageError."""
    required, nxt = table[action]
    if current != required:
        want, now = getattr(required, "value", required), getattr(current, "value", current)
        raise StageError(f"cannot {action} now: this is only allowed at stage '{want}', currently '{now}'")
    return nxt


def check_known(sender: object, allowed: Iterable[str], kind: str) -> str:
    if not isinstance(sender, str) or sender not in set(allowed):
        raise UnknownMemberError(f"{kind} from {sender!r}, who is not an active member at this stage")
    return sender


def encode_fields(*parts: bytes | str | int) -> bytes:
    """Unambiguous length-prefixed encoding of typed fields."""
    out = bytearray()
    for p in parts:
        if isinstance(p, bool):
            raise TypeError("booleans are not encoded")
        if isinstance(p, bytes):
            tag, raw = b"b", p
        elif isinstance(p, str):
            tag, raw = b"s", p.encode()
        elif isinstance(p, int):
            tag, raw = b"i", p.to_bytes(8, "big", signed=True)
        else:
            raise TypeError(f"cannot encode {type(p).__name__}")
        out += tag + len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def decode_fields(blob: bytes, count: int) -> list[bytes]:
    """Raw field values of ``encode_fields`` output (exactly ``count`` fields)."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 5 > len(blob):
            raise InvalidMessageError("truncated field")
        n = int.from_bytes(blob[pos + 1 : pos + 5], "big")
        if pos + 5 + n > len(blob):
            raise InvalidMessageError("truncated field")
        out.append(blob[pos + 5 : pos + 5 + n])
        pos += 5 + n
    if len(out) != count:
        raise InvalidMessageError(f"expected {count} fields, found {len(out)}")
    return out


def advertisement_payload(round: int, bucket: str, sender: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return encode_fields(_AD_DOMAIN, round, bucket, sender, c_pk, s_pk)


def share_aad(round: int, bucket: str, sender: str, recipient: str) -> bytes:
    return encode_fields(_AAD_DOMAIN, round, bucket, sender, recipient)


def share_plaintext(sender: str, recipient: str, b_share: bytes, s_share: bytes) -> bytes:
    return encode_fields(_PLAINTEXT_DOMAIN, sender, recipient, b_share, s_share)


def parse_share_plaintext(blob: bytes, sender: str, recipient: str) -> tuple[bytes, bytes]:
    domain, snd, rcp, b_share, s_share = decode_fields(blob, 5)
    if domain != _PLAINTEXT_DOMAIN or snd != sender.encode() or rcp != recipient.encode():
        raise InvalidMessageError(f"encrypted share from {sender!r} names the wrong parties")
    return b_share, s_share


def self_mask(b: bytes, d: int) -> np.ndarray:
    return prg.keystream_uint32(b, d, domain=DOMAIN_SELF_MASK)


def pair_mask(
    my_s_sk: bytes | X25519PrivateKey, peer_s_pk: bytes, round: int, bucket: str, me: str, peer: str, d: int
) -> np.ndarray:
    """PRG(s_uv), with s_uv = HKDF(X25519(s_sk_u, s_pk_v)) bound to round, bucket and the pair."""
    shared = kex.agree(my_s_sk, peer_s_pk)
    seed = kex.derive_key(shared, purpose=PURPOSE_PAIR_SEED, round=round, bucket=bucket, a=me, b=peer)
    return prg.keystream_uint32(seed, d, domain=DOMAIN_PAIR_MASK)


def apply_pair_mask(acc: np.ndarray, mask: np.ndarray, owner: str, peer: str, *, remove: bool) -> None:
    """Add (owner < peer) or subtract (owner > peer) ``mask`` into ``acc`` in place, mod 2**32.

    With ``remove`` the opposite sign is applied, undoing what ``owner`` added.
    """
    add = (owner < peer) != remove
    if add:
        np.add(acc, mask, out=acc)
    else:
        np.subtract(acc, mask, out=acc)


def sorted_unique(ids: Sequence[str], kind: str) -> tuple[str, ...]:
    if len(set(ids)) != len(ids):
        raise InvalidMessageError(f"{kind} lists a member twice")
    return tuple(sorted(ids))
