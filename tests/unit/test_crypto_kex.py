"""X25519 agreement (RFC 7748) and HKDF-SHA256 derivation (RFC 5869) with context binding."""

from __future__ import annotations

import pytest

from hfl.crypto.kex import (
    KeyExchangeError,
    agree,
    derive_key,
    generate_keypair,
    hkdf_sha256,
    public_from_private,
)

H = bytes.fromhex


def test_rfc7748_section_6_1_diffie_hellman() -> None:
    alice_sk = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pk = H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_sk = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    bob_pk = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert public_from_private(alice_sk) == alice_pk
    assert public_from_private(bob_sk) == bob_pk
    assert agree(alice_sk, bob_pk) == shared
    assert agree(bob_sk, alice_pk) == shared


def test_rfc7748_section_5_2_scalar_multiplication() -> None:
    scalar = H("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = H("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert agree(scalar, u) == H("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


def test_rfc5869_hkdf_vectors() -> None:
    ikm = b"\x0b" * 22
    okm1 = hkdf_sha256(ikm, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm1 == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    okm3 = hkdf_sha256(ikm, salt=b"", info=b"", length=42)
    assert okm3 == H("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


def _info(purpose: bytes, round: int, bucket: bytes, lo: str, hi: str) -> bytes:
    parts = [b"hfl/kex/derive/v1", purpose, round.to_bytes(8, "big"), bucket, lo.encode(), hi.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def test_derive_key_is_hkdf_over_the_documented_context() -> None:
    shared = bytes(range(32))
    got = derive_key(shared, purpose=b"mask", round=7, bucket="b1", a="zeta", b="alpha")
    assert got == hkdf_sha256(shared, salt=None, info=_info(b"mask", 7, b"sb1", "alpha", "zeta"), length=32)
    assert derive_key(shared, purpose=b"mask", round=7, bucket=3, a="x", b="y") == hkdf_sha256(
        shared, salt=None, info=_info(b"mask", 7, b"i3", "x", "y"), length=32
    )


def test_derive_key_binds_every_field_and_ignores_pair_order() -> None:
    shared = generate_keypair().private  # any 32 bytes

    def k(
        purpose: bytes = b"p", round: int = 1, bucket: str | int = "b", a: str = "u", b: str = "v"
    ) -> bytes:
        return derive_key(shared, purpose=purpose, round=round, bucket=bucket, a=a, b=b)

    base = k()
    assert k(a="v", b="u") == base
    variants = {k(purpose=b"q"), k(round=2), k(bucket="c"), k(bucket=1), k(a="w"), k(a="uv", b="w")}
    assert len(variants) == 6 and base not in variants
    long = derive_key(shared, purpose=b"p", round=1, bucket="b", a="u", b="v", length=64)
    assert len(long) == 64


def test_generated_keys_agree_and_hide_the_private_key() -> None:
    a, b = generate_keypair(), generate_keypair()
    assert a.public == public_from_private(a.private)
    assert agree(a.private, b.public) == agree(b.private, a.public)
    assert a.private.hex() not in repr(a)


def test_refusals() -> None:
    sk = generate_keypair().private
    with pytest.raises(KeyExchangeError, match="low-order"):
        agree(sk, bytes(32))
    with pytest.raises(KeyExchangeError):
        agree(sk, bytes(31))
    with pytest.raises(KeyExchangeError):
        agree(b"short", generate_keypair().public)
    with pytest.raises(ValueError, match="itself"):
        derive_key(sk, purpose=b"p", round=1, bucket="b", a="u", b="u")
    with pytest.raises(ValueError, match="round"):
        derive_key(sk, purpose=b"p", round=-1, bucket="b", a="u", b="v")
    with pytest.raises(ValueError, match="purpose"):
        derive_key(sk, purpose=b"", round=1, bucket="b", a="u", b="v")
    with pytest.raises(ValueError):
        derive_key(b"tiny", purpose=b"p", round=1, bucket="b", a="u", b="v")
