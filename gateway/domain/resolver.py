"""Turning a client's ``model`` into an immutable version through the registry, cached briefly.

The gateway routes by the immutable version (``tenant/name@vN``), so every request for one
version lands on the replica that has it warm, and an alias move changes the route at once:
the registry's ``alias.moved`` webhook drops the cached entries (``invalidate``); the TTL only
bounds staleness when a webhook is lost. When the registry is unreachable or failing (5xx), an
expired entry younger than ``stale_max_s`` is served instead of a 503, so adapters already in
use keep serving through a registry outage; only models never resolved get the 503.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from shared.errors import ServiceUnavailable, error_from_envelope
from shared.logging import request_id_var
from shared.modelref import canonical_model
from shared.schemas.registry import Resolution


class ModelResolver:
    def __init__(
        self,
        http: httpx.AsyncClient,
        registry_url: str,
        token: str,
        *,
        ttl_s: float,
        timeout_s: float = 10.0,
        stale_max_s: float = 3600.0,
    ) -> None:
        self.http = http
        self.url = registry_url.rstrip("/") + "/v1/resolve"
        self.token = token
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.stale_max_s = stale_max_s
        self._cache: dict[tuple[str, str], tuple[Resolution, float]] = {}

    async def resolve(self, tenant: str, model: str) -> Resolution:
        """The immutable identity of ``model`` for ``tenant`` (404 ``model_not_found``).

        Cached under the canonical spelling (``a@01`` is ``a@v1``), so the bounded cache holds
        one entry per version or alias, however clients spell them."""
        model = canonical_model(model)
        hit = self._cache.get((tenant, model))
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        # expired but recent: served instead of a 503 if the registry cannot answer
        stale = hit[0] if hit is not None and now - hit[1] < self.stale_max_s else None
        headers = {"Authorization": f"Bearer {self.token}", "X-Tenant-Id": tenant}
        rid = request_id_var.get()
        if rid:
            headers["X-Request-Id"] = rid
        try:
            resp = await self.http.get(
                self.url, params={"model": model}, headers=headers, timeout=self.timeout_s
            )
        except httpx.TransportError as exc:
            if stale is not None:
                return stale  # registry down: the last known version keeps serving
            raise ServiceUnavailable(
                "registry is unreachable", code="registry_unavailable", retry_after=2
            ) from exc
        if resp.status_code >= 500 and stale is not None:
            return stale
        if resp.status_code != 200:
            body: Any = resp.json() if resp.content else {}
            raise error_from_envelope(resp.status_code, body)
        res = Resolution.model_validate(resp.json())
        if len(self._cache) > 10_000:  # bounded: drop everything rather than track LRU order
            self._cache.clear()
        self._cache[(tenant, model)] = (res, now + self.ttl_s)
        return res

    def invalidate(self, tenant: str, adapter: str | None) -> int:
        """Drop ``tenant``'s cached resolutions of ``adapter`` (all of the tenant's if None)."""
        doomed = [
            k
            for k, (res, _) in self._cache.items()
            if k[0] == tenant and (adapter is None or res.adapter == adapter)
        ]
        for k in doomed:
            del self._cache[k]
        return len(doomed)


def route_key(res: Resolution) -> str:
    """What replica affinity hashes: the immutable version (or the base model)."""
    return res.ref


def adapter_label(res: Resolution) -> str:
    """A bounded metric label: ``name@vN`` for adapters, the base model id otherwise."""
    return f"{res.adapter}@v{res.version}" if res.kind == "adapter" else res.base_model
