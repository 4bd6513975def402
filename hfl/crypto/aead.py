"""AES-256-GCM authenticated encryption with a random 12-byte nonce prepended to the ciphertext."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_LEN", "NONCE_LEN", "TAG_LEN", "DecryptionError", "open_", "seal"]

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16


class DecryptionError(Exception):
    """The ciphertext was altered, truncated, bound to other data, or made with another key."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ValueError(f"AES-256-GCM key must be exactly {KEY_LEN} bytes")


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` (and authenticate ``aad``): nonce || ciphertext || tag."""
    _check_key(key)
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a ``seal`` output; raise DecryptionError on any tampering or wrong key/aad."""
    _check_key(key)
    if not isinstance(blob, bytes) or len(blob) < NONCE_LEN + TAG_LEN:
        raise DecryptionError("ciphertext is too short to be valid")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except InvalidTag as exc:
        raise DecryptionError(
            "ciphertext failed authentication (tampered, wrong key or wrong context)"
        ) from exc
