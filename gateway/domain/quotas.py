"""Request-rate quotas: a token bucket per tenant, in memory (one gateway).

Several gateways would share buckets through Redis (INCR with expiry per window) or route a
tenant's traffic to one gateway by consistent hashing; both keep this interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, per_minute: int, cost: float = 1.0) -> None:
        """Spend ``cost`` from ``key``'s bucket (capacity = per_minute) or raise 429."""
        now = time.monotonic()
        rate = per_minute / 60.0
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=float(per_minute), updated=now)
        b.tokens = min(float(per_minute), b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens < cost:
            raise RateLimited(
                f"rate limit of {per_minute} requests per minute exceeded",
                retry_after=(cost - b.tokens) / rate,
            )
        b.tokens -= cost
