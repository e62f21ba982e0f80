"""Caches that clients cannot grow, and metric series that die with their adapter (issue 18,
item 10).

* The gateway's auth cache is keyed by the key, not the raw header: scheme case and
  whitespace variants of one key are one entry, and the cache is bounded.
* The inference resolver's cache keys on the canonical model string: ``a@1``, ``a@01``,
  ``a@v001``, `` a@1`` are one entry and one registry call; it is bounded; a deleted adapter
  drops its immutable entries too.
* Deleting an adapter announces ``adapter.deleted`` (registry outbox) and the inference
  metrics drop the series of its versions, nobody else's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select

import gateway.deps
from services.inference.engine.resolver import ModelResolver
from services.inference.metrics import InferenceMetrics
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.registry.storage.tables import DeliveryRow
from shared.clients.registry import RegistryClient
from shared.errors import NotFound
from shared.metrics import new_registry, render
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app
from tests.support.adapters import make_adapter, pack

TOKEN = "cache-test-token"
EVENTS = "http://inference/internal/registry-events"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = gateway_app(tmp_path)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        yield app, http


async def test_auth_cache_is_keyed_by_the_key_and_bounded(
    gw: tuple[FastAPI, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, http = gw
    cache = app.state.gateway.auth_cache
    for header in (
        f"Bearer {BOOTSTRAP}",
        f"bearer {BOOTSTRAP}",
        f"BEARER  {BOOTSTRAP}",
        f"Bearer {BOOTSTRAP}   ",
        f"Bearer \t{BOOTSTRAP}",
    ):
        r = await http.get("/admin/tenants", headers={"Authorization": header})
        assert r.status_code == 200, (header, r.text)
    assert len(cache) == 1, len(cache)
    # bounded: more valid keys than the bound never hold more entries than it
    monkeypatch.setattr(gateway.deps, "AUTH_CACHE_MAX", 3)
    keys = []
    for _ in range(6):
        r = await http.post(
            "/admin/keys",
            json={"tenant": "system", "role": "sre"},
            headers={"Authorization": f"Bearer {BOOTSTRAP}"},
        )
        keys.append(r.json()["key"])
    for key in keys:
        r = await http.get("/admin/tenants", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert len(cache) <= 3


class Counting(httpx.AsyncBaseTransport):
    """The real registry app, counting the calls made to it."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def registry(tmp_path: Path, model_dir: Path) -> AsyncIterator[FastAPI]:
    app = create_registry(
        RegistrySettings(
            home=tmp_path / "registry",
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            notify_urls=[EVENTS],
            webhook_poll_s=3600,  # the outbox is read here, not delivered
        )
    )
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


async def test_resolver_cache_canonical_bounded_and_dropped_on_delete(
    registry: FastAPI, tmp_path: Path, model_dir: Path
) -> None:
    archive = pack(make_adapter(model_dir, tmp_path / "a", r=4), tmp_path / "a.tar.gz")
    counting = Counting(registry)
    client = RegistryClient("http://registry", TOKEN, transport=counting)
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    async with httpx.AsyncClient(transport=counting, base_url="http://registry") as http:
        with archive.open("rb") as fh:
            r = await http.post(
                "/v1/adapters/a/versions",
                headers=auth,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model":"tiny-llama"}'},
            )
        assert r.status_code == 201, r.text
        resolver = ModelResolver(client, max_entries=3)
        counting.calls = 0
        refs = {(await resolver.resolve("acme", m)).ref for m in ("a@1", "a@01", "a@v001", " a@1")}
        assert refs == {"acme/a@v1"}
        assert (counting.calls, len(resolver)) == (1, 1)
        for m in ("tiny-llama", "a@2", "a@3"):  # 404s are not cached
            with contextlib.suppress(NotFound):
                await resolver.resolve("acme", m)
        assert len(resolver) <= 3
        await resolver.resolve("acme", "a@v1")
        r = await http.delete("/v1/adapters/a", headers=auth)
        assert r.status_code == 200, r.text
        assert resolver.invalidate("acme", "a") == 1
        assert len(resolver) <= 1  # only the base model is left
    with registry.state.registry.db.session() as s:
        events = [d.payload for d in s.scalars(select(DeliveryRow)) if d.event == "adapter.deleted"]
    assert events and events[0]["data"] == {"adapter": "a", "versions": [1]}, events
    assert events[0]["tenant"] == "acme"
    await client.aclose()


def test_deleted_adapter_metric_series_are_removed() -> None:
    registry = new_registry()
    m = InferenceMetrics(registry, lambda: {})
    for tenant, adapter in (
        ("acme", "a@v1"),
        ("acme", "a@v2"),
        ("acme", "ab@v1"),
        ("globex", "a@v1"),
    ):
        m.requests.labels(tenant, adapter, "200").inc()
        m.prompt_tokens.labels(tenant, adapter).inc(3)
        m.e2e.labels(tenant, adapter).observe(0.1)
    assert m.forget_adapter("acme", "a") == 6  # 2 versions x 3 metrics
    lines = render(registry).decode().splitlines()

    def series(tenant: str, adapter: str) -> int:
        return sum(f'adapter="{adapter}"' in x and f'tenant="{tenant}"' in x for x in lines)

    assert series("acme", "a@v1") == series("acme", "a@v2") == 0
    assert series("acme", "ab@v1") > 0 and series("globex", "a@v1") > 0


async def test_feedback_tallies_and_metrics_carry_the_tenant() -> None:
    """Two tenants' ``router@v1`` are different adapters: one's feedback never moves the
    other's accuracy (it used to: one tally and one series per adapter label)."""
    from gateway.domain.feedback import FeedbackBook, Prediction

    registry = new_registry()
    book = FeedbackBook(registry)
    await book.remember(["req-a"], Prediction("acme", "router@v1", "billing"))
    await book.remember(["req-g"], Prediction("globex", "router@v1", "billing"))
    assert (await book.record("acme", "req-a", "billing"))["accuracy"] == 1.0
    out = await book.record("globex", "req-g", "outage")
    assert (out["accuracy"], out["count"]) == (0.0, 1)  # not 0.5 over both tenants
    text = render(registry).decode()
    assert 'tunefleet_gateway_feedback_accuracy{adapter="router@v1",tenant="acme"} 1.0' in text
    assert 'tunefleet_gateway_feedback_accuracy{adapter="router@v1",tenant="globex"} 0.0' in text


def test_abandoned_usage_ledger_is_bounded_per_tenant_and_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a replica keeps of abandoned calls (for the gateway to bill) cannot grow past its
    capacity, is read per tenant (another tenant's request id finds nothing), and expires."""
    import time

    from services.inference.domain.abandoned import AbandonedLedger

    ledger = AbandonedLedger(capacity=3, ttl_s=60)
    for i in range(5):
        ledger.record("acme", f"r{i}", 3, i)
    assert ledger.get("acme", "r0") is None and ledger.get("acme", "r1") is None
    kept = ledger.get("acme", "r4")
    assert kept is not None and (kept.prompt_tokens, kept.completion_tokens) == (3, 4)
    assert ledger.get("globex", "r4") is None
    later = time.monotonic() + 61
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert ledger.get("acme", "r4") is None
