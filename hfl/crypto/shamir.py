"""Shamir t-of-n secret sharing of byte strings.

Field: integers modulo PRIME = 2**256 + 297, the smallest prime above 2**256. Every 32-byte string is
then a single field element, so a 32-byte secret (a seed or an X25519 private key) is shared as one
polynomial and comes back bit-exactly. Longer secrets are cut into 32-byte chunks, each shared with its
own independent polynomial. A share's ``y`` is a 2-byte secret length followed by one 33-byte field
element per chunk.

Any t shares give the secret; t - 1 shares are uniformly distributed whatever the secret (the
polynomial's other coefficients come from ``secrets``). When more than t shares are combined, the extra
ones are checked against the polynomial, so a corrupted share is detected instead of silently giving a
wrong secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_SHARES", "PRIME", "ShamirError", "Share", "combine", "split"]

PRIME = 2**256 + 297
CHUNK_LEN = 32  # bytes of secret per field element (2**256 < PRIME)
ELEMENT_LEN = 33  # bytes of one encoded field element
MAX_SHARES = 0xFFFF  # x is encoded in 2 bytes
MAX_SECRET_LEN = 0xFFFF  # secret length is encoded in 2 bytes


class ShamirError(ValueError):
    """Shares or parameters cannot be used (too few, duplicated, corrupted, mismatched)."""


@dataclass(frozen=True)
class Share:
    """One share: the evaluation point ``x`` (1..n) and the encoded values ``y``."""

    x: int
    y: bytes

    def __post_init__(self) -> None:
        if isinstance(self.x, bool) or not isinstance(self.x, int) or not 1 <= self.x <= MAX_SHARES:
            raise ShamirError(f"share index must be an integer from 1 to {MAX_SHARES}, got {self.x!r}")
        if not isinstance(self.y, bytes):
            raise ShamirError("share value must be bytes")
        _parse_y(self.y)

    @property
    def secret_len(self) -> int:
        return int.from_bytes(self.y[:2], "big")

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(2, "big") + self.y

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        if len(raw) < 2:
            raise ShamirError("share is too short to be valid")
        return cls(int.from_bytes(raw[:2], "big"), bytes(raw[2:]))


def _parse_y(y: bytes) -> list[int]:
    if len(y) < 2:
        raise ShamirError("share value is too short to be valid")
    secret_len = int.from_bytes(y[:2], "big")
    if secret_len == 0:
        raise ShamirError("share records an empty secret")
    chunks = -(-secret_len // CHUNK_LEN)
    if len(y) != 2 + chunks * ELEMENT_LEN:
        raise ShamirError(
            f"share value has {len(y)} bytes but a {secret_len}-byte secret needs {2 + chunks * ELEMENT_LEN}"
        )
    values = [
        int.from_bytes(y[2 + i * ELEMENT_LEN : 2 + (i + 1) * ELEMENT_LEN], "big") for i in range(chunks)
    ]
    if any(v >= PRIME for v in values):
        raise ShamirError("share value is not a valid field element (corrupted share)")
    return values


def _check_t_n(t: int, n: int) -> None:
    for name, v in (("threshold t", t), ("number of shares n", n)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ShamirError(f"{name} must be an integer, got {v!r}")
    if not 1 <= t <= n:
        raise ShamirError(f"need 1 <= t <= n, got t={t}, n={n}")
    if n > MAX_SHARES:
        raise ShamirError(f"at most {MAX_SHARES} shares are supported, asked for {n}")


def _eval_points(coeffs: Sequence[int], xs: Sequence[int], prime: int) -> list[int]:
    """Evaluate the polynomial with coefficients ``coeffs`` (constant first) at each x (Horner)."""
    out = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % prime
        out.append(acc)
    return out


def _lagrange_at(points: Sequence[tuple[int, int]], at: int, prime: int) -> int:
    """Value at ``at`` of the unique polynomial of degree < len(points) through ``points``."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % prime
                den = den * (xi - xj) % prime
        total = (total + yi * num * pow(den, -1, prime)) % prime
    return total


def _split_int(
    secret: int, t: int, n: int, prime: int, randbelow: Callable[[int], int] = secrets.randbelow
) -> list[int]:
    coeffs = [secret] + [randbelow(prime) for _ in range(t - 1)]
    return _eval_points(coeffs, range(1, n + 1), prime)


def split(secret: bytes, t: int, n: int) -> list[Share]:
    """Split ``secret`` into n shares with x = 1..n, any t of which recover it."""
    _check_t_n(t, n)
    if not isinstance(secret, bytes | bytearray) or not 1 <= len(secret) <= MAX_SECRET_LEN:
        raise ShamirError(f"secret must be 1 to {MAX_SECRET_LEN} bytes")
    chunks = [int.from_bytes(secret[i : i + CHUNK_LEN], "big") for i in range(0, len(secret), CHUNK_LEN)]
    per_chunk = [_split_int(c, t, n, PRIME) for c in chunks]
    header = len(secret).to_bytes(2, "big")
    shares = []
    for k in range(n):
        y = header + b"".join(values[k].to_bytes(ELEMENT_LEN, "big") for values in per_chunk)
        shares.append(Share(k + 1, y))
    return shares


def combine(shares: Sequence[Share], t: int) -> bytes:
    """Recover the secret from at least t shares; extra shares must agree with the first t."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ShamirError(f"threshold t must be a positive integer, got {t!r}")
    shares = list(shares)
    if len(shares) < t:
        raise ShamirError(f"need at least {t} shares to recover the secret, got {len(shares)}")
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ShamirError("two shares have the same index; each share must come from a different holder")
    if len({len(s.y) for s in shares}) != 1 or len({s.y[:2] for s in shares}) != 1:
        raise ShamirError("shares belong to secrets of different lengths and cannot be combined")
    secret_len = shares[0].secret_len
    values = [_parse_y(s.y) for s in shares]
    out = bytearray()
    for c in range(len(values[0])):
        points = [(xs[i], values[i][c]) for i in range(len(shares))]
        base = points[:t]
        for x_extra, y_extra in points[t:]:
            if _lagrange_at(base, x_extra, PRIME) != y_extra:
                raise ShamirError("shares are inconsistent: at least one share is corrupted or mismatched")
        value = _lagrange_at(base, 0, PRIME)
        width = min(CHUNK_LEN, secret_len - c * CHUNK_LEN)
        if value >= 1 << (8 * width):
            raise ShamirError(
                "recovered value does not fit the secret length (corrupted or mismatched shares)"
            )
        out += value.to_bytes(width, "big")
    return bytes(out)
