"""What the validator tests share: the authority's and four validators' keys, and a signed round
configuration of four buckets of three with those validators as its committee."""

from __future__ import annotations

from hfl.crypto.signing import SigningKey
from hfl.domain import Bucket, NodeInfo, RoundConfig

AUTHORITY = SigningKey.generate()
VALIDATORS = {f"validator-{i}": SigningKey.generate() for i in range(1, 5)}


def signed_config(round_: int = 1, committee: tuple[str, ...] = tuple(VALIDATORS)) -> RoundConfig:
    """Round ``round_`` (attempt 0): buckets b0-b3 of fog-1, quorum 3, signed by AUTHORITY."""
    return RoundConfig(
        round=round_,
        attempt=0,
        seed=b"\x01" * 32,
        ledger_head=b"\x02" * 32,
        epoch=0,
        buckets=tuple(Bucket(f"b{i}", "fog-1", (f"f{i}a", f"f{i}b", f"f{i}c"), 3) for i in range(4)),
        committee=tuple(NodeInfo(v, "validator", f"{v}:1", VALIDATORS[v].public_bytes) for v in committee),
        quorum=3,
        facilities=(),
        fogs=(NodeInfo("fog-1", "fog", "fog:1"),),
    ).sign(AUTHORITY)
