"""Cryptographic primitives (sans-I/O): signing, Shamir sharing, X25519/HKDF, AEAD, PRG, proof of work."""
