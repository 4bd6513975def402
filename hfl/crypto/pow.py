"""Hashcash-style proof of work for validator registration.

A nonce is valid when SHA-256(challenge || nonce as 8 big-endian bytes) starts with at least
``difficulty_bits`` zero bits. The challenge binds the epoch seed, the node id and its public key, so a
solution cannot be reused by another node or in another epoch.
"""

from __future__ import annotations

import hashlib

__all__ = ["MAX_DIFFICULTY_BITS", "PowError", "check", "pow_challenge", "solve"]

MAX_DIFFICULTY_BITS = 64
_NONCE_LEN = 8
_DOMAIN = b"hfl/pow/challenge/v1"


class PowError(Exception):
    """The proof of work is missing, malformed or does not meet the difficulty."""


def _check_params(challenge: bytes, difficulty_bits: int) -> None:
    if not isinstance(challenge, bytes) or not challenge:
        raise ValueError("proof-of-work challenge must be non-empty bytes")
    if (
        isinstance(difficulty_bits, bool)
        or not isinstance(difficulty_bits, int)
        or not 0 <= difficulty_bits <= MAX_DIFFICULTY_BITS
    ):
        raise ValueError(f"difficulty must be an integer from 0 to {MAX_DIFFICULTY_BITS} bits")


def _leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def pow_challenge(epoch_seed: bytes, node_id: str, public_key: bytes) -> bytes:
    """The 32-byte challenge a node must solve to register in the epoch given by ``epoch_seed``."""
    if not isinstance(epoch_seed, bytes) or not epoch_seed:
        raise ValueError("epoch seed must be non-empty bytes")
    if not isinstance(node_id, str) or not node_id:
        raise ValueError("node id must be a non-empty string")
    if not isinstance(public_key, bytes) or not public_key:
        raise ValueError("public key must be non-empty bytes")
    h = hashlib.sha256()
    for part in (_DOMAIN, epoch_seed, node_id.encode(), public_key):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def solve(challenge: bytes, difficulty_bits: int) -> int:
    """The smallest nonce meeting the difficulty (about 2**difficulty_bits hashes on average)."""
    _check_params(challenge, difficulty_bits)
    prefix = hashlib.sha256(challenge)
    for nonce in range(1 << (8 * _NONCE_LEN)):
        h = prefix.copy()
        h.update(nonce.to_bytes(_NONCE_LEN, "big"))
        if _leading_zero_bits(h.digest()) >= difficulty_bits:
            return nonce
    raise PowError("no nonce meets this difficulty")  # pragma: no cover - needs 2**64 hashes


def check(challenge: bytes, nonce: int, difficulty_bits: int) -> None:
    """Raise PowError unless ``nonce`` solves ``challenge`` at ``difficulty_bits``."""
    _check_params(challenge, difficulty_bits)
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce < 1 << (8 * _NONCE_LEN):
        raise PowError(f"proof-of-work nonce must be an integer from 0 to 2**64 - 1, got {nonce!r}")
    digest = hashlib.sha256(challenge + nonce.to_bytes(_NONCE_LEN, "big")).digest()
    zeros = _leading_zero_bits(digest)
    if zeros < difficulty_bits:
        raise PowError(f"proof of work too weak: {zeros} leading zero bits, {difficulty_bits} required")
