"""Hashcash proof of work: solutions, minimality, binding of the challenge, refusals."""

from __future__ import annotations

import hashlib

import pytest

from hfl.crypto.pow import PowError, check, pow_challenge, solve


def _zero_bits(challenge: bytes, nonce: int) -> int:
    digest = hashlib.sha256(challenge + nonce.to_bytes(8, "big")).digest()
    bits = "".join(f"{b:08b}" for b in digest)
    return len(bits) - len(bits.lstrip("0"))


def test_solution_is_the_smallest_valid_nonce() -> None:
    challenge = pow_challenge(b"epoch-1", "validator-3", b"\x01" * 32)
    nonce = solve(challenge, 10)
    assert _zero_bits(challenge, nonce) >= 10
    assert all(_zero_bits(challenge, n) < 10 for n in range(nonce))
    check(challenge, nonce, 10)
    for n in range(nonce):
        with pytest.raises(PowError, match="too weak"):
            check(challenge, n, 10)


def test_difficulty_zero_accepts_anything() -> None:
    assert solve(b"c", 0) == 0
    check(b"c", 12345, 0)


def test_challenge_binds_epoch_node_and_key() -> None:
    base = pow_challenge(b"epoch", "node", b"key")
    assert len(base) == 32
    others = {
        pow_challenge(b"epoch2", "node", b"key"),
        pow_challenge(b"epoch", "node2", b"key"),
        pow_challenge(b"epoch", "node", b"key2"),
        pow_challenge(b"epoch", "nodek", b"ey"),  # length prefixes keep field boundaries
    }
    assert len(others) == 4 and base not in others
    # a solution for one node is (here, deterministically) not valid for another
    nonce = solve(base, 12)
    with pytest.raises(PowError):
        check(pow_challenge(b"epoch", "node2", b"key"), nonce, 12)


def test_refusals() -> None:
    with pytest.raises(PowError, match="nonce"):
        check(b"c", -1, 4)
    with pytest.raises(PowError, match="nonce"):
        check(b"c", 1 << 64, 4)
    with pytest.raises(PowError, match="nonce"):
        check(b"c", True, 4)
    with pytest.raises(ValueError, match="difficulty"):
        solve(b"c", 65)
    with pytest.raises(ValueError, match="challenge"):
        solve(b"", 4)
    with pytest.raises(ValueError):
        pow_challenge(b"", "n", b"k")
