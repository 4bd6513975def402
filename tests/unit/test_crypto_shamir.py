"""Shamir secret sharing: recovery, secrecy of t-1 shares, known answers and refusals."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfl.crypto import shamir
from hfl.crypto.shamir import PRIME, ShamirError, Share, combine, split


def _is_probable_prime(n: int) -> bool:
    """Miller-Rabin with fixed bases: a 'False' is a proof of compositeness."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71]:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_prime_is_the_smallest_prime_above_2_256() -> None:
    assert PRIME == 2**256 + 297
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime(2**256 + k) for k in range(1, 297))


@settings(max_examples=60, deadline=None)
@given(secret=st.binary(min_size=1, max_size=80), data=st.data())
def test_any_t_shares_recover_the_secret(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 9))
    t = data.draw(st.integers(1, n))
    shares = split(secret, t, n)
    assert [s.x for s in shares] == list(range(1, n + 1))
    subset = data.draw(st.permutations(shares))[: data.draw(st.integers(t, n))]
    assert combine(subset, t) == secret


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), data=st.data())
def test_t_minus_1_shares_are_too_few(secret: bytes, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 9))
    t = data.draw(st.integers(2, n))
    shares = data.draw(st.permutations(split(secret, t, n)))[: t - 1]
    with pytest.raises(ShamirError, match="at least"):
        combine(shares, t)


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    other=st.binary(min_size=32, max_size=32),
    data=st.data(),
)
def test_t_minus_1_shares_are_consistent_with_every_secret(
    secret: bytes, other: bytes, data: st.DataObject
) -> None:
    """For real shares of `secret`, a degree-(t-1) polynomial through them with constant `other` exists:
    adding one more point on it makes `combine` return `other`, so t - 1 shares cannot rule it out."""
    n = data.draw(st.integers(3, 9))
    t = data.draw(st.integers(2, n - 1))
    shares = data.draw(st.permutations(split(secret, t, n)))
    known, spare_x = shares[: t - 1], shares[t - 1].x
    points = [(0, int.from_bytes(other, "big"))] + [(s.x, int.from_bytes(s.y[2:], "big")) for s in known]
    y = shamir._lagrange_at(points, spare_x, PRIME)
    forged = Share(spare_x, (32).to_bytes(2, "big") + y.to_bytes(33, "big"))
    assert combine([*known, forged], t) == other


@settings(max_examples=40, deadline=None)
@given(
    prime=st.sampled_from([5, 7, 11, 13]),
    data=st.data(),
)
def test_t_minus_1_shares_are_uniform_whatever_the_secret_small_field(
    prime: int, data: st.DataObject
) -> None:
    """Perfect secrecy in a small field: over all p**(t-1) choices of the random coefficients, the t-1
    shares at any fixed points take every value exactly once, for every secret (so their distribution
    does not depend on the secret)."""
    t = data.draw(st.integers(2, 3))
    xs = data.draw(st.lists(st.integers(1, prime - 1), min_size=t - 1, max_size=t - 1, unique=True))
    for secret in range(prime):
        seen = {
            tuple(shamir._eval_points([secret, *coeffs], xs, prime))
            for coeffs in itertools.product(range(prime), repeat=t - 1)
        }
        assert len(seen) == prime ** (t - 1)


def test_known_answer_small_field() -> None:
    # f(x) = 1234 + 166x + 94x^2 mod 1613 (the classic textbook example)
    ys = shamir._eval_points([1234, 166, 94], range(1, 7), 1613)
    assert ys == [1494, 329, 965, 176, 1188, 775]
    assert shamir._lagrange_at([(2, 329), (4, 176), (5, 1188)], 0, 1613) == 1234


def test_known_answer_byte_encoding() -> None:
    # t = 2 with hand-made polynomial s + a*x: y_x = s + a*x mod PRIME, encoded as len(2) || 33-byte y.
    secret = bytes(range(1, 33))
    s, a = int.from_bytes(secret, "big"), 2**256 + 5  # a > 2**256 forces modular wrap-around
    shares = [Share(x, (32).to_bytes(2, "big") + ((s + a * x) % PRIME).to_bytes(33, "big")) for x in (3, 7)]
    assert combine(shares, 2) == secret
    assert shares[0].to_bytes().hex().startswith("00030020")
    assert Share.from_bytes(shares[1].to_bytes()) == shares[1]


def test_split_uses_fresh_randomness_and_handles_long_secrets() -> None:
    secret = bytes(range(70))  # 3 chunks, the last one 6 bytes
    a, b = split(secret, 3, 5), split(secret, 3, 5)
    assert a[0].y != b[0].y
    assert len(a[0].y) == 2 + 3 * 33
    assert combine(a[2:], 3) == secret
    assert combine(split(b"\x00" * 32, 2, 2), 2) == b"\x00" * 32


def test_extra_shares_are_checked_for_consistency() -> None:
    shares = split(b"k" * 32, 3, 5)
    bad = shares[4].y[:-1] + bytes([shares[4].y[-1] ^ 1])
    tampered = [*shares[:4], Share(5, bad)]
    with pytest.raises(ShamirError, match="inconsistent"):
        combine(tampered, 3)
    with pytest.raises(ShamirError, match="inconsistent"):
        combine([Share(5, bad), *shares[:3]], 3)


def test_refusals() -> None:
    shares = split(b"s" * 32, 2, 3)
    with pytest.raises(ShamirError, match="same index"):
        combine([shares[0], shares[0]], 2)
    other = split(b"s" * 33, 2, 3)
    with pytest.raises(ShamirError, match="different lengths"):
        combine([shares[0], other[1]], 2)
    with pytest.raises(ShamirError):
        split(b"", 2, 3)
    with pytest.raises(ShamirError):
        split(b"x", 4, 3)
    with pytest.raises(ShamirError):
        split(b"x", 0, 3)
    with pytest.raises(ShamirError):
        split(b"x", 2, 70000)
    with pytest.raises(ShamirError):
        combine(shares, 0)
    with pytest.raises(ShamirError):
        Share(0, shares[0].y)
    with pytest.raises(ShamirError):
        Share(1, shares[0].y[:-1])
    with pytest.raises(ShamirError, match="field element"):
        Share(1, (32).to_bytes(2, "big") + PRIME.to_bytes(33, "big"))
    with pytest.raises(ShamirError):
        Share.from_bytes(b"\x00")
    # a value that does not fit the recorded secret length is refused
    too_big = [Share(x, (1).to_bytes(2, "big") + (300).to_bytes(33, "big")) for x in (1, 2)]
    with pytest.raises(ShamirError, match="does not fit"):
        combine(too_big, 2)
