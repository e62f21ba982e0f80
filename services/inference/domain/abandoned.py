"""What a generation generated before its caller went away, kept for the gateway to bill.

A non-streamed call whose caller closed the connection (the gateway's client gave up) is
cancelled here (``shared.disconnect``); the answer, usage included, never reaches the gateway.
So the replica keeps the tokens it generated, under the caller's request id (``X-Request-Id``,
which the gateway sends), for the gateway to fetch
(``GET /v1/internal/abandoned/{request_id}``) and bill. Bounded: the oldest go first past
``capacity``, and each is kept ``ttl_s`` (the gateway fetches within seconds).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class AbandonedUsage:
    prompt_tokens: int
    completion_tokens: int
    at: float  # time.monotonic() when recorded


class AbandonedLedger:
    def __init__(self, *, capacity: int = 4096, ttl_s: float = 300.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._rows: OrderedDict[tuple[str, str], AbandonedUsage] = OrderedDict()

    def record(self, tenant: str, request_id: str, prompt: int, completion: int) -> None:
        """Keep what the tenant's request ``request_id`` generated (a later one with the same
        id replaces it)."""
        key = (tenant, request_id)
        self._rows.pop(key, None)
        self._rows[key] = AbandonedUsage(prompt, completion, time.monotonic())
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    def get(self, tenant: str, request_id: str) -> AbandonedUsage | None:
        """What was kept for the tenant's ``request_id``; None if nothing (or expired)."""
        self._expire()
        return self._rows.get((tenant, request_id))

    def _expire(self) -> None:
        horizon = time.monotonic() - self.ttl_s
        while self._rows:
            key, first = next(iter(self._rows.items()))
            if first.at >= horizon:
                return
            del self._rows[key]
