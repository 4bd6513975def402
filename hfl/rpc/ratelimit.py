"""Per-peer token buckets: the one place where request rates are limited (RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from hfl.errors import RateLimited


class TokenBuckets:
    """One token bucket per key (a peer, or a peer and a method): ``rate`` tokens a second, at most
    ``burst`` saved up. Remembers at most ``max_keys`` peers (least recently seen are forgotten)."""

    def __init__(
        self, rate: float, burst: int, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, what: str = "requests") -> None:
        """Spend one token of ``key``'s bucket, or raise RateLimited."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(f"too many {what} from {key}; slow down and retry in {wait:.1f}s")
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
