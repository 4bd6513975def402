"""Ed25519 identity keys: sign, and verify by raising (never by returning False)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["InvalidSignature", "SigningKey", "verify"]

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


class SigningKey:
    """A node's long-term Ed25519 identity key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise InvalidSignature unless ``signature`` is a valid Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise InvalidSignature("malformed key or signature")
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
