"""The gateway's resolution cache: stale-if-error keeps loaded adapters serving when the
registry is down; a model never resolved gets 503 with Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.domain.events import SeenEvents, apply_event
from gateway.domain.resolver import ModelResolver
from shared.clients.registry import RegistryClient
from shared.errors import ServiceUnavailable

RESOLUTION = {
    "model": "router",
    "kind": "adapter",
    "ref": "acme/router@v1",
    "base_model": "tiny-llama",
    "adapter": "router",
    "version": 1,
    "sha256": "0" * 64,
}


async def test_stale_if_error_only_for_known_models() -> None:
    state = {"up": True, "status": 200}

    def handler(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("registry down", request=request)
        return httpx.Response(state["status"], json=RESOLUTION)

    registry = RegistryClient("http://registry", "t", transport=httpx.MockTransport(handler))
    async with registry:
        resolver = ModelResolver(registry, ttl_s=0.0, stale_max_s=60)
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"
        state["up"] = False
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"  # stale
        with pytest.raises(ServiceUnavailable) as exc:
            await resolver.resolve("acme", "never-seen")
        assert exc.value.headers["Retry-After"] == "2"
        state.update(up=True, status=503)
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"


async def test_outage_costs_one_lookup_per_ttl_and_events_drop_entries() -> None:
    """While the registry is down a stale entry is re-armed: requests do not each wait for a
    failed lookup. An alias event drops the adapter's entries, and only them."""
    calls = {"n": 0, "up": True}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if not calls["up"]:
            raise httpx.ConnectError("registry down", request=request)
        model = request.url.params["model"]
        if model == "tiny-llama":
            return httpx.Response(
                200, json={"model": model, "kind": "base", "base_model": model, "ref": model}
            )
        return httpx.Response(200, json=RESOLUTION)

    registry = RegistryClient(
        "http://registry", "t", transport=httpx.MockTransport(handler), retries=1
    )
    async with registry:
        resolver = ModelResolver(registry, ttl_s=60, stale_max_s=3600)
        await resolver.resolve("acme", "router")
        await resolver.resolve("acme", "tiny-llama")
        assert resolver.invalidate("acme", "router") == 1
        assert resolver.cached("acme", "router") is None
        assert resolver.cached("acme", "tiny-llama") is not None
        await resolver.resolve("acme", "router")
        resolver._cache[("acme", "router")].expires = 0  # the TTL ran out
        calls.update(n=0, up=False)
        for _ in range(5):
            assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"
        assert calls["n"] == 1


async def test_single_flight_and_no_store_across_an_invalidation() -> None:
    """Concurrent misses ask the registry once; a lookup overtaken by an alias event answers
    its request but is not cached (it may name the version the alias just left)."""
    calls = {"n": 0}
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        await release.wait()
        return httpx.Response(200, json=RESOLUTION)

    registry = RegistryClient("http://registry", "t", transport=httpx.MockTransport(handler))
    async with registry:
        resolver = ModelResolver(registry, ttl_s=60)
        waiting = [asyncio.create_task(resolver.resolve("acme", "router")) for _ in range(8)]
        await asyncio.sleep(0.05)
        resolver.invalidate("acme", "router")  # the alias moved while the lookup ran
        release.set()
        refs = {r.ref for r in await asyncio.gather(*waiting)}
        assert refs == {"acme/router@v1"} and calls["n"] == 1
        assert resolver.cached("acme", "router") is None


async def test_an_event_pushed_and_followed_is_applied_once() -> None:
    """The registry's webhook and its change feed carry the same event (same id): the late
    copy must not drop a resolution made after the change."""
    registry = RegistryClient(
        "http://registry",
        "t",
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=RESOLUTION)),
    )
    async with registry:
        resolver = ModelResolver(registry, ttl_s=60)
        seen = SeenEvents(capacity=2)
        moved = {
            "id": "evt_1",
            "type": "alias.moved",
            "tenant": "acme",
            "data": {"adapter": "router"},
        }
        await resolver.resolve("acme", "router")
        assert apply_event(resolver, moved, seen) == 1  # pushed
        await resolver.resolve("acme", "router")  # a request resolves the new version
        assert apply_event(resolver, moved, seen) == 0  # followed: the same event, skipped
        assert resolver.cached("acme", "router") is not None
        for i in (2, 3):  # bounded: the oldest id is forgotten
            apply_event(resolver, {**moved, "id": f"evt_{i}"}, seen)
        await resolver.resolve("acme", "router")
        assert apply_event(resolver, moved, seen) == 1
