"""What a replica serves: immutable refs, looked up in the registry once each.

The gateway resolves aliases (its resolver is the fleet's one alias cache, dropped by alias
webhooks) and forwards the immutable ref it resolved (``MODEL_REF_HEADER``:
``tenant/name@vN`` or a base id). A ref never changes meaning, so its answer (sha256, rank,
archive) is cached here for good, bounded, and dropped only when the adapter is deleted. A
direct caller that names an alias (``name``, ``name@staging``) is answered by asking the
registry every time: nothing here can serve a moved alias stale, so alias events need no
invalidation on the replica.

Keys are canonical (``a@1``, ``a@01`` and ``a@v001`` are one entry: ``shared.modelref``) and
the cache is bounded (``max_entries``: past it, everything is dropped rather than tracking
LRU order), so clients cannot grow it by spelling one version many ways. If the registry is
down, a cached ref keeps serving; an uncached model is a 503 with Retry-After.
"""

from __future__ import annotations

from shared.clients.registry import RegistryClient
from shared.errors import InvalidRequest
from shared.modelref import canonical_model
from shared.schemas.registry import Resolution


class ModelResolver:
    def __init__(self, registry: RegistryClient, *, max_entries: int = 10_000) -> None:
        self.registry = registry
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], Resolution] = {}

    def __len__(self) -> int:
        return len(self._cache)

    async def resolve(self, tenant: str, model: str) -> Resolution:
        """``model`` in any form; only immutable answers (a version, a base) are cached."""
        model = canonical_model(model)
        key = (tenant, model)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        res = await self.registry.resolve(tenant, model)
        if res.kind == "base" or res.alias is None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[key] = res
        return res

    async def resolve_ref(self, tenant: str, ref: str) -> Resolution:
        """An immutable ref as the gateway forwards it: ``tenant/name@vN`` or a base id."""
        owner, _, model = ref.rpartition("/")
        if "@" not in model:  # a base id (which may hold a "/" of its own)
            return await self.resolve(tenant, ref)
        if owner != tenant:
            raise InvalidRequest(f"model ref {ref!r} is not one of this tenant's versions")
        return await self.resolve(tenant, model)

    def clear(self) -> None:
        """Forget everything (after a gap in the event feed: a deletion may have been missed)."""
        self._cache.clear()

    def invalidate(self, tenant: str, adapter: str | None = None) -> int:
        """Drop the cached versions of a tenant's deleted adapter (all of the tenant's if
        None)."""
        doomed = [
            k
            for k, res in self._cache.items()
            if k[0] == tenant and res.kind == "adapter" and adapter in (None, res.adapter)
        ]
        for k in doomed:
            del self._cache[k]
        return len(doomed)
