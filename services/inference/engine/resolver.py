"""Model-string resolution with a short-lived cache (the registry is the source of truth).

Immutable forms (``name@3``, a base id) are cached for good; alias forms (``name``,
``name@staging``) for ``ttl`` seconds, and dropped at once when the registry announces an
alias move (webhook). If the registry is down, a cached answer keeps serving (stale) and an
uncached one is a 503 with Retry-After.

Keys are canonical (``a@1``, ``a@01`` and ``a@v001`` are one entry: ``shared.modelref``) and
the cache is bounded (``max_entries``: past it, everything is dropped rather than tracking
LRU order), so clients cannot grow it by spelling one version many ways.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.clients.registry import RegistryClient
from shared.errors import ServiceUnavailable
from shared.modelref import canonical_model
from shared.schemas.registry import Resolution


@dataclass
class _Entry:
    resolution: Resolution
    expires: float  # inf for immutable answers


class ModelResolver:
    def __init__(self, registry: RegistryClient, *, ttl: float, max_entries: int = 10_000) -> None:
        self.registry = registry
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._cache)

    async def resolve(self, tenant: str, model: str) -> Resolution:
        model = canonical_model(model)
        key = (tenant, model)
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is not None and entry.expires > now:
            return entry.resolution
        try:
            res = await self.registry.resolve(tenant, model)
        except ServiceUnavailable:
            if entry is not None:
                return entry.resolution  # registry down: keep serving what we knew
            raise
        immutable = res.kind == "base" or res.alias is None
        if len(self._cache) >= self.max_entries and key not in self._cache:
            self._cache.clear()
        self._cache[key] = _Entry(res, float("inf") if immutable else now + self.ttl)
        return res

    def invalidate(
        self, tenant: str, adapter: str | None = None, *, versions_too: bool = False
    ) -> int:
        """Drop cached alias answers of a tenant's adapter (all of the tenant's if None);
        ``versions_too``: its immutable version answers as well (the adapter was deleted)."""
        doomed = [
            k
            for k, e in self._cache.items()
            if k[0] == tenant
            and (versions_too or e.resolution.alias is not None)
            and (adapter is None or e.resolution.adapter == adapter)
        ]
        for k in doomed:
            del self._cache[k]
        return len(doomed)
