"""X25519 key agreement and HKDF-SHA256 key derivation bound to a protocol context."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_LEN",
    "KeyExchangeError",
    "KeyPair",
    "agree",
    "derive_key",
    "generate_keypair",
    "hkdf_sha256",
    "load_private",
    "public_from_private",
]

KEY_LEN = 32
_INFO_DOMAIN = b"hfl/kex/derive/v1"


class KeyExchangeError(ValueError):
    """A key is malformed or the agreement produced an unusable (all-zero) secret."""


@dataclass(frozen=True, repr=False)
class KeyPair:
    """Raw 32-byte X25519 private and public keys, plus the loaded private key for fast agreement."""

    private: bytes
    public: bytes
    key: X25519PrivateKey = field(compare=False)

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public={self.public.hex()})"


def _check_key(raw: bytes, what: str) -> None:
    if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
        raise KeyExchangeError(f"{what} must be exactly {KEY_LEN} bytes")


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's random source."""
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(private, public, key)


def load_private(private: bytes) -> X25519PrivateKey:
    """Load a raw private key once, to reuse it for many agreements."""
    _check_key(private, "X25519 private key")
    return X25519PrivateKey.from_private_bytes(private)


def public_from_private(private: bytes) -> bytes:
    _check_key(private, "X25519 private key")
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(my_private: bytes | X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw 32-byte X25519 shared secret. Refuses low-order peer keys (all-zero result).

    ``my_private`` is raw bytes or a key from ``load_private``/``KeyPair.key`` (faster when reused).
    """
    key = my_private if isinstance(my_private, X25519PrivateKey) else load_private(my_private)
    _check_key(peer_public, "X25519 public key")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise KeyExchangeError("the peer's public key is invalid (low-order point)") from exc
    if shared == bytes(KEY_LEN):
        raise KeyExchangeError("the peer's public key is invalid (low-order point)")
    return shared


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract then expand)."""
    if not 1 <= length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 output length must be 1..{255 * 32}, got {length}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _context_info(purpose: bytes, round: int, bucket: str | int, a: str, b: str) -> bytes:
    if not isinstance(purpose, bytes) or not purpose:
        raise ValueError("purpose must be non-empty bytes")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be a non-negative integer, got {round!r}")
    if isinstance(bucket, bool) or not isinstance(bucket, str | int):
        raise ValueError(f"bucket must be a string or an integer, got {bucket!r}")
    for who in (a, b):
        if not isinstance(who, str) or not who:
            raise ValueError("party ids must be non-empty strings")
    if a == b:
        raise ValueError(f"cannot derive a pairwise key between {a!r} and itself")
    bucket_enc = b"s" + bucket.encode() if isinstance(bucket, str) else b"i" + str(bucket).encode()
    lo, hi = sorted((a, b))
    return b"".join(
        _field(p)
        for p in (_INFO_DOMAIN, purpose, round.to_bytes(8, "big"), bucket_enc, lo.encode(), hi.encode())
    )


def derive_key(
    shared: bytes, *, purpose: bytes, round: int, bucket: str | int, a: str, b: str, length: int = KEY_LEN
) -> bytes:
    """HKDF-SHA256 of an agreed secret, bound to purpose, round, bucket and the unordered pair {a, b}."""
    if not isinstance(shared, bytes) or len(shared) < 16:
        raise ValueError("shared secret must be at least 16 bytes")
    return hkdf_sha256(shared, salt=None, info=_context_info(purpose, round, bucket, a, b), length=length)
