"""Protocol messages: frozen dataclasses of plain fields, so a serde layer can copy them field by field.

Every message carries the round and bucket; messages between two parties carry sender and recipient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BucketSum",
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInput",
    "UnmaskRequest",
    "UnmaskResponse",
]


@dataclass(frozen=True)
class KeyAdvertisement:
    """Stage 1, member -> all: two fresh X25519 public keys signed with the member's identity key."""

    round: int
    bucket: str
    sender: str
    c_pk: bytes  # encrypts the shares sent to this member
    s_pk: bytes  # derives this member's pairwise masks
    signature: bytes  # Ed25519 over (round, bucket, sender, c_pk, s_pk)


@dataclass(frozen=True)
class EncryptedShare:
    """Stage 2, member -> member via the aggregator: the sender's Shamir shares of b and s_sk, sealed."""

    round: int
    bucket: str
    sender: str
    recipient: str
    ciphertext: bytes


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 3, member -> aggregator: the quantised update plus masks, a uint32 vector of length d."""

    round: int
    bucket: str
    sender: str
    y: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, aggregator -> survivors: who sent a masked input and who dropped after sharing keys."""

    round: int
    bucket: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4, member -> aggregator: shares of b for survivors and of s_sk for dropped members.

    Each entry is (owner id, serialised Share).
    """

    round: int
    bucket: str
    sender: str
    b_shares: tuple[tuple[str, bytes], ...]
    s_shares: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, eq=False)
class BucketSum:
    """The bucket result: the exact float64 sum of the members' dequantised updates
    (BucketAggregator.result), or the sum of their quantised vectors, uint32 (integer_result)."""

    total: np.ndarray
    count: int
    members: tuple[str, ...]
    dropped: tuple[str, ...]
