"""AES-256-GCM wrapper: known-answer vectors, round trip and tamper detection."""

from __future__ import annotations

import pytest

from hfl.crypto.aead import DecryptionError, open_, seal

H = bytes.fromhex


@pytest.mark.parametrize(
    ("key", "iv", "pt", "aad", "ct_tag"),
    [
        # McGrew & Viega GCM spec, test cases 13, 14 and 16 (AES-256)
        ("00" * 32, "00" * 12, "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
        (
            "00" * 32,
            "00" * 12,
            "00" * 16,
            "",
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919",
        ),
        (
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            "cafebabefacedbaddecaf888",
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
            "76fc6ece0f4e1768cddf8853bb2d551b",
        ),
    ],
)
def test_gcm_known_answers_through_open(key: str, iv: str, pt: str, aad: str, ct_tag: str) -> None:
    assert open_(H(key), H(iv) + H(ct_tag), H(aad)) == H(pt)


def test_round_trip_and_fresh_nonces() -> None:
    key = bytes(range(32))
    a, b = seal(key, b"share bytes", b"ctx"), seal(key, b"share bytes", b"ctx")
    assert a[:12] != b[:12]
    assert len(a) == 12 + len(b"share bytes") + 16
    assert open_(key, a, b"ctx") == b"share bytes"


def test_any_single_bit_flip_is_detected() -> None:
    key = bytes(range(32))
    blob = seal(key, b"hello secure aggregation", b"aad")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 1 << (i % 8)
        with pytest.raises(DecryptionError):
            open_(key, bytes(tampered), b"aad")


def test_wrong_context_key_or_truncation_is_refused() -> None:
    key = bytes(range(32))
    blob = seal(key, b"x", b"round 1")
    with pytest.raises(DecryptionError):
        open_(key, blob, b"round 2")
    with pytest.raises(DecryptionError):
        open_(bytes(32), blob, b"round 1")
    with pytest.raises(DecryptionError, match="too short"):
        open_(key, blob[:20], b"round 1")
    with pytest.raises(ValueError):
        seal(b"short key", b"x", b"")
