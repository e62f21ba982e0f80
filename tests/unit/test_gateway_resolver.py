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
from shared.schemas.registry import Resolution

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


def _event(kind: str, n: int) -> dict[str, object]:
    return {"id": f"evt_{kind}_{n}", "type": kind, "tenant": "acme", "data": {"adapter": "router"}}


async def test_an_alias_move_keeps_the_stale_fallback_and_a_deletion_does_not() -> None:
    """Regression (make reliability, registry_down: 36 of 36 requests 503): the feed delivers
    the ``alias.moved`` of a promotion up to a poll after the PUT, so it often lands just after
    the first request resolved the model, and used to drop that entry: when the registry then
    went down there was nothing to fall back on. A move must only make the entry stale; a
    deletion must still drop it (a deleted adapter is not served, not even in an outage)."""
    state = {"up": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("registry down", request=request)
        return httpx.Response(200, json=RESOLUTION)

    registry = RegistryClient(
        "http://registry", "t", transport=httpx.MockTransport(handler), retries=1
    )
    async with registry:
        resolver = ModelResolver(registry, ttl_s=60, stale_max_s=3600)
        seen = SeenEvents()
        await resolver.resolve("acme", "router")
        assert apply_event(resolver, _event("alias.moved", 1), seen) == 1
        assert resolver.cached("acme", "router") is None  # never served again unasked
        state["up"] = False
        for _ in range(3):  # the registry is down: the last known version keeps serving
            assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"
        state["up"] = True
        resolver._cache[("acme", "router")].expires = 0  # the re-armed TTL ran out
        await resolver.resolve("acme", "router")
        assert resolver.cached("acme", "router") is not None  # asked again: current
        for kind in ("adapter.deleted", "alias.deleted"):
            await resolver.resolve("acme", "router")
            assert apply_event(resolver, _event(kind, 1), seen) == 1
            state["up"] = False
            with pytest.raises(ServiceUnavailable) as exc:
                await resolver.resolve("acme", "router")
            assert exc.value.code == "registry_unavailable"
            state["up"] = True


async def test_events_during_a_lookup_keep_a_move_as_fallback_never_a_deletion() -> None:
    """A lookup overtaken by a move is kept as a fallback only (asked again next time, served
    if the registry is down then); one overtaken by a deletion keeps nothing; a failing lookup
    overtaken by a deletion does not serve the entry the deletion dropped."""
    state = {"up": True, "calls": 0}
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        state["calls"] += 1
        await gate.wait()
        if not state["up"]:
            raise httpx.ConnectError("registry down", request=request)
        return httpx.Response(200, json=RESOLUTION)

    registry = RegistryClient(
        "http://registry", "t", transport=httpx.MockTransport(handler), retries=1
    )

    async def overtaken(resolver: ModelResolver, kind: str, n: int) -> Resolution:
        gate.clear()
        lookup = asyncio.create_task(resolver.resolve("acme", "router"))
        await asyncio.sleep(0.02)
        apply_event(resolver, _event(kind, n), seen)
        gate.set()
        return await lookup

    async with registry:
        resolver = ModelResolver(registry, ttl_s=60, stale_max_s=3600)
        seen = SeenEvents()
        assert (await overtaken(resolver, "alias.moved", 1)).ref == "acme/router@v1"
        assert resolver.cached("acme", "router") is None
        state.update(up=False, calls=0)
        assert (await resolver.resolve("acme", "router")).ref == "acme/router@v1"  # fallback
        assert state["calls"] == 1  # it was asked first

        state["up"] = True
        assert (await overtaken(resolver, "adapter.deleted", 1)).ref == "acme/router@v1"
        state["up"] = False
        with pytest.raises(ServiceUnavailable):
            await resolver.resolve("acme", "router")

        state["up"] = True
        gate.set()
        await resolver.resolve("acme", "router")
        resolver._cache[("acme", "router")].expires = 0  # the TTL ran out
        state["up"] = False  # the next lookup fails, after a deletion came during it
        with pytest.raises(ServiceUnavailable):
            await overtaken(resolver, "adapter.deleted", 2)
