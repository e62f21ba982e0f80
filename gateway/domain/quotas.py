"""Quotas per tenant and per API key.

* requests per minute and tokens per minute: token buckets (capacity = the per-minute limit,
  refilled continuously). A generation is admitted only if the tokens bucket covers what it
  may cost (``reservation``: the prompt's estimate + its ``max_tokens`` x ``n``; capped at
  one minute's budget), which is taken at once; when the answer completes or is cut short the
  reservation is settled to what was used (``Admission.settle``: the rest is given back, or
  the overrun charged: the bucket may go into debt, at most one minute's worth, and the next
  request waits (429, ``Retry-After``) until it is repaid).
* concurrent streams: held for the life of a streamed response.
* adapters and concurrent training jobs: counted at the source (registry, training) when a
  create is attempted.

A key is bound by its own limits (if set) and by its tenant's; unset = the gateway defaults.

The limits live in SQL (table ``quotas``), re-read every ``refresh_s`` by every gateway. The
buckets and open streams live in a ``QuotaState`` (``gateway.domain.quota_state``): this
process's memory for one gateway, or the shared database for several
(``gateway.domain.quota_sql``), so N gateways together hold a tenant to its limits.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import select

from gateway.domain.keys import Principal
from gateway.domain.quota_state import MemoryQuotaState, QuotaState, RateLimiter, StreamGate
from gateway.storage.tables import QuotaRow
from shared.db import Database

__all__ = ["Admission", "Limits", "QuotaBook", "Quotas", "RateLimiter", "StreamGate"]

LIMIT_FIELDS = ("rpm", "tpm", "max_streams", "max_adapters", "max_jobs")


@dataclass(frozen=True)
class Limits:
    """One subject's limits; ``None`` = not set here (fall back to the tenant / default)."""

    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    max_adapters: int | None = None
    max_jobs: int | None = None

    def over(self, fallback: Limits) -> Limits:
        if self == _UNSET:  # the common case (no override): nothing to merge
            return fallback
        return Limits(*(getattr(self, f) or getattr(fallback, f) for f in LIMIT_FIELDS))


_UNSET = Limits()


class QuotaBook:
    """The ``quotas`` table in memory, re-read at most every ``refresh_s`` (so a change made
    through another gateway applies here within that time; at once on the gateway that made
    it, which calls ``invalidate``)."""

    def __init__(self, db: Database, *, refresh_s: float = 2.0) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self._rows: dict[tuple[str, str], Limits] = {}
        self._loaded = 0.0

    def _load(self) -> None:
        with self.db.session() as s:
            self._rows = {
                (r.scope, r.subject): Limits(**{f: getattr(r, f) for f in LIMIT_FIELDS})
                for r in s.scalars(select(QuotaRow))
            }
        self._loaded = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._loaded > self.refresh_s

    def load_if_stale(self) -> None:
        """Blocking (call in a thread)."""
        if self.stale():
            self._load()

    def invalidate(self) -> None:
        self._loaded = 0.0

    def tenant(self, tenant: str, defaults: Limits, legacy_rpm: int | None = None) -> Limits:
        """The tenant's effective limits (``legacy_rpm``: the older PATCH /admin/tenants rpm)."""
        row = self._rows.get(("tenant", tenant), Limits())
        return row.over(Limits(rpm=legacy_rpm)).over(defaults)

    def key(self, key_id: str) -> Limits:
        """The key's own limits; unset fields mean "only the tenant's limit applies"."""
        return self._rows.get(("key", key_id), Limits())


DEFAULT_MAX_TOKENS = 256
"""What a generation without ``max_tokens``/``max_completion_tokens`` reserves for its answer
(the inference replicas' own default cap, ``TUNEFLEET_INFERENCE_DEFAULT_MAX_TOKENS``)."""


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):  # a token id (prompt given as token ids)
        return 4
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):  # a chat message or a content part
        return _text_chars(value.get("content")) + _text_chars(value.get("text"))
    return 0


def prompt_estimate(body: dict[str, Any]) -> int:
    """The prompt's tokens, estimated from its characters (~4 per token; a token id is one)."""
    chars = _text_chars(body.get("prompt")) + _text_chars(body.get("messages"))
    return -(-chars // 4)


def reservation(body: dict[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """The most tokens a generation request may cost: prompt estimate + max_tokens x n."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        cap = default_max_tokens
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1
    return prompt_estimate(body) + cap * n


@dataclass
class Admission:
    """One admitted request's quota: its tokens reservation (settled once to what was used)
    and its stream slot."""

    quotas: Quotas
    who: Principal
    tenant_limits: Limits
    key_limits: Limits
    reserved: dict[str, float] = field(default_factory=dict)
    settled: bool = False

    async def reserve(self, tokens: int) -> None:
        """Take ``tokens`` from the tenant's and key's tpm budgets, or 429 (nothing taken)."""
        pairs = self.quotas._pairs(self.who, self.tenant_limits, self.key_limits, "tpm")
        wants = [(f"tpm:{s}", n) for s, n in pairs]
        self.reserved = await self.quotas.state.reserve(wants, tokens)

    def settle(self, tokens: int) -> bool:
        """Charge the tokens the request used (prompt + generated) instead of its reservation;
        False (nothing done) if it was settled already: a request is charged once."""
        if self.settled:
            return False
        self.settled = True
        pairs = self.quotas._pairs(self.who, self.tenant_limits, self.key_limits, "tpm")
        charges = []
        for subject, limit in pairs:
            key = f"tpm:{subject}"
            charges.append((key, limit, tokens - self.reserved.get(key, 0.0)))
        self.quotas.state.charge(charges)
        return True

    @asynccontextmanager
    async def stream_slot(self) -> AsyncIterator[None]:
        """Hold one concurrent stream for the body of the ``async with`` (429 if none free)."""
        pairs = self.quotas._pairs(self.who, self.tenant_limits, self.key_limits, "max_streams")
        async with self.quotas.state.streams(pairs):
            yield


class Quotas:
    """What the request path calls: admit, charge tokens, hold a stream."""

    def __init__(
        self, db: Database, defaults: Callable[[], Limits], state: QuotaState | None = None
    ) -> None:
        self.book = QuotaBook(db)
        self.state: QuotaState = state or MemoryQuotaState()
        self.defaults = defaults  # read per call: settings may change at runtime

    async def limits(self, who: Principal) -> tuple[Limits, Limits]:
        """(tenant's effective limits, key's own limits)."""
        if self.book.stale():
            await anyio.to_thread.run_sync(self.book.load_if_stale)
        return self.book.tenant(who.tenant, self.defaults(), who.rpm), self.book.key(who.key_id)

    def _pairs(self, who: Principal, t: Limits, k: Limits, field: str) -> list[tuple[str, int]]:
        out = [(f"tenant:{who.tenant}", int(getattr(t, field)))]
        if getattr(k, field):
            out.append((f"key:{who.key_id}", int(getattr(k, field))))
        return out

    async def admit(self, who: Principal) -> tuple[Limits, Limits]:
        """Count one request (rpm) and refuse while the tokens budget is in debt (tpm)."""
        t, k = await self.limits(who)
        rpm = [(f"rpm:{s}", n) for s, n in self._pairs(who, t, k, "rpm")]
        tpm = [(f"tpm:{s}", n) for s, n in self._pairs(who, t, k, "tpm")]
        await self.state.admit(rpm, tpm)
        return t, k

    async def admission(self, who: Principal) -> Admission:
        """``admit`` as an object the request carries to its end (charge, stream slot)."""
        t, k = await self.admit(who)
        return Admission(self, who, t, k)

    async def count_limit(self, who: Principal, field: str) -> int:
        """The smaller of the tenant's and the key's ``field`` (max_adapters, max_jobs)."""
        t, k = await self.limits(who)
        return min(limit for _, limit in self._pairs(who, t, k, field))
