"""A facility's signed report of privacy spent, as the authority records it in its privacy ledger."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hfl.crypto.signing import SigningKey, verify
from hfl.hashing import hash_json
from hfl.privacy.budget import KINDS

__all__ = ["SPEND_DOMAIN", "SpendReport"]

SPEND_DOMAIN = b"hfl/privacy-spend/v1"


@dataclass(frozen=True)
class SpendReport:
    """One spend. ``training``: ``epsilon_total`` is the facility's running total at ``delta`` after this
    round attempt. ``release``: the pure ε (``delta`` 0) of statistics released in that round.
    ``exhausted`` means the facility cannot afford another round and must not be scheduled again."""

    facility_id: str
    round: int
    attempt: int
    kind: str
    epsilon_total: float
    delta: float
    steps: int = 0
    exhausted: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    signature: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.facility_id, str) or not 0 < len(self.facility_id) <= 128:
            raise ValueError("a privacy report must name its facility (1 to 128 characters)")
        for name in ("round", "attempt", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"a privacy report's {name} must be a non-negative integer, got {v!r}")
        if self.kind not in KINDS:
            raise ValueError(f"a privacy report's kind must be 'training' or 'release', got {self.kind!r}")
        for name in ("epsilon_total", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"a privacy report's {name} must be a finite non-negative number, got {v!r}")
        if not isinstance(self.details, dict):
            raise ValueError("a privacy report's details must be a JSON object")
        try:
            json.dumps(self.details, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"a privacy report's details must be plain JSON: {e}") from None

    def signed_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("signature")
        d["epsilon_total"] = float(self.epsilon_total)
        d["delta"] = float(self.delta)
        return d

    def digest(self) -> bytes:
        return hash_json(SPEND_DOMAIN, self.signed_dict())

    def sign(self, key: SigningKey) -> SpendReport:
        return replace(self, signature=key.sign(self.digest()))

    def verify(self, public_key: bytes) -> None:
        """Raise InvalidSignature unless the facility's identity key signed exactly this report."""
        verify(public_key, self.digest(), self.signature)
