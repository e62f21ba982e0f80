"""Turning a client's ``model`` into an immutable version through the registry, cached briefly.

This is the fleet's one alias-resolution cache. The gateway resolves a request's model once,
here, and forwards the immutable ref (``tenant/name@vN``, or the base id) to the replica, which
serves that ref as given; so every request for one version lands on the replica that has it
warm, and an alias move changes what is served at once: the registry's ``alias.moved``
webhook (or the change feed) makes the cached entries stale at once (``invalidate``); the TTL
only bounds staleness when an event is lost. When the registry is unreachable or failing
(5xx), an expired entry younger than ``stale_max_s`` is served instead of a 503 (and re-armed
for ``ttl_s``, so a registry outage costs one failed lookup per model and TTL, not one per
request): adapters already in use keep serving through a registry outage; only models never
resolved get the 503.

An alias move only demotes the entries it touches (never served again without asking, but
still the last known answer for stale-if-error: the version they name still exists). A
deletion, or a feed reset (a deletion may have been missed), drops them: a deleted adapter is
never served from here again, not even during an outage. Dropping on a move used to leave a
model that was resolved just before the event (the feed delivers it up to a poll later)
with nothing to fall back on: every request for it was a 503 through the next outage.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shared.clients.registry import RegistryClient
from shared.errors import ServiceUnavailable
from shared.modelref import canonical_model
from shared.schemas.registry import Resolution

MAX_ENTRIES = 10_000


@dataclass
class _Entry:
    resolution: Resolution
    expires: float  # monotonic: served without asking the registry until then
    fetched: float  # monotonic: when the registry last said so (bounds stale serving)
    current: bool = True  # False once an alias event said it moved: a fallback only


class ModelResolver:
    def __init__(
        self,
        registry: RegistryClient,
        *,
        ttl_s: float,
        timeout_s: float = 10.0,
        stale_max_s: float = 3600.0,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.stale_max_s = stale_max_s
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], _Entry] = {}
        # Single flight: requests arriving while one lookup of a key is under way wait for it
        # (when an entry expires under load, the registry is asked once, not once per request).
        # The lookup is its own task: a waiter's cancellation never cancels it for the others.
        self._inflight: dict[tuple[str, str], asyncio.Task[Resolution]] = {}
        # Bumped by every invalidation: a lookup that began before one stores its answer only
        # as a stale fallback (it may name the version the alias just left), and nothing at
        # all when ``_drops`` moved too (it may name a deleted version).
        self._epoch = 0
        self._drops = 0

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, tenant: str, model: str) -> Resolution | None:
        """What ``model`` resolves to from the cache, fresh or not (None if never resolved, or
        if an event said it changed since: such an entry is only a stale-if-error fallback)."""
        entry = self._cache.get((tenant, canonical_model(model)))
        return entry.resolution if entry is not None and entry.current else None

    async def resolve(self, tenant: str, model: str) -> Resolution:
        """The immutable identity of ``model`` for ``tenant`` (404 ``model_not_found``).

        Cached under the canonical spelling (``a@01`` is ``a@v1``), so the bounded cache holds
        one entry per version or alias, however clients spell them."""
        model = canonical_model(model)
        key = (tenant, model)
        entry = self._cache.get(key)
        now = time.monotonic()
        if entry is not None and entry.expires > now:
            return entry.resolution
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(key, now))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _lookup(self, key: tuple[str, str], now: float) -> Resolution:
        tenant, model = key
        epoch, drops = self._epoch, self._drops
        try:
            res = await self.registry.resolve(tenant, model, timeout=self.timeout_s)
        except ServiceUnavailable as exc:  # unreachable, or a 5xx
            entry = self._cache.get(key)  # now: a deletion meanwhile has dropped it
            if entry is not None and now - entry.fetched < self.stale_max_s:
                entry.expires = now + self.ttl_s  # the last known version keeps serving
                return entry.resolution
            raise ServiceUnavailable(
                f"registry is unavailable: {exc.message}",
                code="registry_unavailable",
                retry_after=2,
            ) from exc
        if drops != self._drops:
            return res  # a deletion came meanwhile: answer this request, keep nothing
        if len(self._cache) >= self.max_entries and key not in self._cache:
            self._cache.clear()  # bounded: drop everything rather than track LRU order
        if epoch != self._epoch:  # an alias moved meanwhile: kept as a fallback only
            self._cache[key] = _Entry(res, 0.0, now, current=False)
        else:
            self._cache[key] = _Entry(res, now + self.ttl_s, now)
        return res

    def clear(self) -> None:
        """Forget everything (the event feed may have missed changes, deletions among them)."""
        self._epoch += 1
        self._drops += 1
        self._cache.clear()

    def invalidate(self, tenant: str, adapter: str | None, *, moved: bool = False) -> int:
        """Stop serving ``tenant``'s cached resolutions of ``adapter`` (all of the tenant's if
        None) without asking the registry; the number of entries touched.

        ``moved`` (an alias moved: every version still exists): the entries are kept as the
        last known answers, served only when the registry cannot be asked. Otherwise
        (deleted) they are dropped, and a lookup under way keeps nothing."""
        self._epoch += 1
        if not moved:
            self._drops += 1
        touched = [
            k
            for k, e in self._cache.items()
            if k[0] == tenant and (adapter is None or e.resolution.adapter == adapter)
        ]
        for k in touched:
            if moved:
                entry = self._cache[k]
                entry.expires, entry.current = 0.0, False
            else:
                del self._cache[k]
        return len(touched)


def route_key(res: Resolution) -> str:
    """What replica affinity hashes: the immutable version (or the base model)."""
    return res.ref


def adapter_label(res: Resolution) -> str:
    """A bounded metric label: ``name@vN`` for adapters, the base model id otherwise."""
    return f"{res.adapter}@v{res.version}" if res.kind == "adapter" else res.base_model
