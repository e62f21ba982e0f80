"""Where quota state lives: the buckets (rpm, tpm) and open streams of every subject.

Two backends behind one interface (:class:`QuotaState`):

* :class:`MemoryQuotaState`: in this process (one gateway; the default on SQLite);
* ``gateway.domain.quota_sql.SqlQuotaState``: in the gateway database, shared by every
  gateway on it (the default on Postgres; ``TUNEFLEET_GATEWAY_STATE_STORE``).

A bucket is named ``rpm:<subject>`` or ``tpm:<subject>``, a subject ``tenant:<id>`` or
``key:<id>``; each (bucket, per-minute limit) pair is a token bucket whose capacity is the
limit, refilled continuously.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from shared.errors import RateLimited

Pairs = list[tuple[str, int]]
"""(bucket or subject, limit) pairs: the tenant's, then the key's when it has its own."""


class QuotaState(Protocol):
    async def admit(self, rpm: Pairs, tpm: Pairs) -> None:
        """Take one request from every rpm bucket and refuse (429) while a tpm bucket is in
        debt."""

    async def reserve(self, wants: Pairs, cost: float) -> dict[str, float]:
        """Take ``cost`` tokens (at most one minute's budget) from every tpm bucket, or none
        (429 ``tokens_rate_limit_exceeded``); what each one gave."""

    def charge(self, charges: list[tuple[str, int, float]]) -> None:
        """Spend (bucket, per_minute, cost) even past zero (at most a minute of debt); a
        negative cost gives tokens back. Never blocks: a shared store applies it soon after."""

    def streams(self, subjects: Pairs) -> AbstractAsyncContextManager[None]:
        """Hold one concurrent stream against every (subject, limit) for the ``async with``
        body, or 429 ``too_many_streams`` holding none."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def too_many_streams(limit: int) -> RateLimited:
    return RateLimited(
        f"at most {limit} concurrent streams allowed; wait for one to finish",
        retry_after=1,
        code="too_many_streams",
    )


def tokens_exceeded(per_minute: int, cost: float, left: float, need: float) -> RateLimited:
    return RateLimited(
        f"rate limit of {per_minute} tokens per minute exceeded: this request may "
        f"use {int(cost)} tokens (prompt + max_tokens), {max(0, int(left))} are left",
        retry_after=max(1.0, (need - left) * 60.0 / per_minute),
        code="tokens_rate_limit_exceeded",
    )


def in_debt(per_minute: int, left: float) -> RateLimited:
    return RateLimited(
        f"rate limit of {per_minute} tokens per minute exceeded",
        retry_after=(1.0 - left) * 60.0 / per_minute,
        code="tokens_rate_limit_exceeded",
    )


def requests_exceeded(per_minute: int, short: float, what: str = "requests") -> RateLimited:
    """``short``: how many the bucket lacks (it refills ``per_minute`` a minute)."""
    return RateLimited(
        f"rate limit of {per_minute} {what} per minute exceeded",
        retry_after=short * 60.0 / per_minute,
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by an arbitrary string (``rpm:acme``, ``tpm:key_…``)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, key: str, per_minute: int) -> _Bucket:
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=float(per_minute), updated=now)
        b.tokens = min(float(per_minute), b.tokens + (now - b.updated) * per_minute / 60.0)
        b.updated = now
        return b

    def take(self, key: str, per_minute: int, cost: float = 1.0, what: str = "requests") -> None:
        """Spend ``cost`` from ``key``'s bucket (capacity = per_minute) or raise 429."""
        b = self._refill(key, per_minute)
        if b.tokens < cost:
            raise requests_exceeded(per_minute, cost - b.tokens, what)
        b.tokens -= cost

    def check_positive(self, key: str, per_minute: int, what: str = "tokens") -> None:
        """429 while ``key``'s bucket is in debt (see the module docstring)."""
        b = self._refill(key, per_minute)
        if b.tokens <= 0:
            raise in_debt(per_minute, b.tokens)

    def charge(self, key: str, per_minute: int, cost: float) -> None:
        """Spend ``cost`` even past zero (never more than one minute of debt); a negative
        ``cost`` gives tokens back (never above the capacity)."""
        b = self._refill(key, per_minute)
        b.tokens = min(float(per_minute), max(-float(per_minute), b.tokens - cost))

    def reserve(self, wants: list[tuple[str, int]], cost: float) -> dict[str, float]:
        """Take ``cost`` tokens (at most one minute's budget) from every (key, per_minute)
        bucket, or none of them (429 ``tokens_rate_limit_exceeded``); what each one gave."""
        for key, per_minute in wants:
            b, need = self._refill(key, per_minute), min(cost, float(per_minute))
            if b.tokens < need or b.tokens <= 0:
                raise tokens_exceeded(per_minute, cost, b.tokens, need)
        taken = {}
        for key, per_minute in wants:
            taken[key] = min(cost, float(per_minute))
            self._buckets[key].tokens -= taken[key]
        return taken


class StreamGate:
    """Concurrent streamed responses per subject."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    @contextmanager
    def hold(self, subjects: list[tuple[str, int]]) -> Iterator[None]:
        """Count one stream against every (subject, limit) or raise 429 without counting."""
        for subject, limit in subjects:
            if self.open.get(subject, 0) >= limit:
                raise too_many_streams(limit)
        for subject, _ in subjects:
            self.open[subject] = self.open.get(subject, 0) + 1
        try:
            yield
        finally:
            for subject, _ in subjects:
                self.open[subject] -= 1


class MemoryQuotaState:
    """This process's buckets and stream counters: exact for one gateway, N times the limits
    for N gateways (use ``SqlQuotaState`` there)."""

    def __init__(self) -> None:
        self.rate = RateLimiter()
        self.gate = StreamGate()

    async def admit(self, rpm: Pairs, tpm: Pairs) -> None:
        for bucket, limit in rpm:
            self.rate.take(bucket, limit)
        for bucket, limit in tpm:
            self.rate.check_positive(bucket, limit)

    async def reserve(self, wants: Pairs, cost: float) -> dict[str, float]:
        return self.rate.reserve(wants, cost)

    def charge(self, charges: list[tuple[str, int, float]]) -> None:
        for bucket, limit, cost in charges:
            self.rate.charge(bucket, limit, cost)

    @asynccontextmanager
    async def streams(self, subjects: Pairs) -> AsyncIterator[None]:
        with self.gate.hold(subjects):
            yield

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
