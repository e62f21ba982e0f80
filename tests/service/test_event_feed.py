"""The registry's change feed (issue 16, item 3): every committed change, in order, for the
fleet's own followers; a long poll that answers as soon as something happens; ``reset`` when a
follower cannot have seen everything. And ``EventFollower`` applying it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from services.registry.app import create_app as create_registry
from services.registry.domain import feed
from services.registry.settings import RegistrySettings
from shared.clients.registry import RegistryClient
from shared.events_follower import EventFollower
from shared.schemas.registry import RegistryEvent
from tests.support.adapters import make_adapter, pack

TOKEN = "feed-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}


@pytest.fixture(params=["sqlite", "postgres"])
async def registry(
    request: pytest.FixtureRequest, tmp_path: Path, model_dir: Path
) -> AsyncIterator[FastAPI]:
    url = (
        None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    )
    app = create_registry(
        RegistrySettings(
            home=tmp_path,
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            feed_poll_s=0.05,
            database_url=url,
        )
    )
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


async def test_feed_orders_every_change_and_long_polls(
    registry: FastAPI, tmp_path: Path, model_dir: Path
) -> None:
    archive = pack(make_adapter(model_dir, tmp_path / "a", r=4), tmp_path / "a.tar.gz")
    client = RegistryClient("http://registry", TOKEN, transport=httpx.ASGITransport(app=registry))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=registry), base_url="http://registry", headers=AUTH
    ) as http:
        head = await client.events(None)
        assert (head.data, head.last_seq, head.reset) == ([], 0, False)
        r = await http.get("/v1/internal/events", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        for _ in range(2):
            with archive.open("rb") as fh:
                r = await http.post(
                    "/v1/adapters/a/versions",
                    files={"file": ("a.tar.gz", fh)},
                    data={"metadata": '{"base_model":"tiny-llama"}'},
                )
            assert r.status_code == 201, r.text
        page = await client.events(0)
        assert [(e.seq, e.type) for e in page.data] == [
            (1, "version.created"),
            (2, "version.created"),
        ]
        assert page.last_seq == 2 and page.data[1].data["version"] == 2

        # a long poll answers when the alias moves, not at the end of its wait
        waiting = asyncio.create_task(client.events(2, wait_s=20))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        moved = time.monotonic()
        r = await http.put("/v1/adapters/a/aliases/production", json={"version": 2})
        assert r.status_code == 200, r.text
        page = await waiting
        assert time.monotonic() - moved < 1.0
        assert [e.type for e in page.data] == ["alias.moved"] and page.last_seq == 3
        assert page.data[0].tenant == "acme" and page.data[0].data["to_version"] == 2
        empty = await client.events(3, wait_s=0.2)
        assert (empty.data, empty.last_seq, empty.reset) == ([], 3, False)

        # a follower ahead of the feed (a new database) or behind what is kept starts over
        assert (await client.events(99)).reset
        with registry.state.registry.db.session(write=True) as s:
            for _ in range(5):
                feed.record_event(
                    s,
                    {
                        "tenant": "acme",
                        "type": "alias.deleted",
                        "data": {},
                        "id": "e",
                        "created": 0,
                    },
                    keep=2,
                )
            s.execute(feed.delete(feed.EventRow).where(feed.EventRow.seq <= 6))
        behind = await client.events(3)
        assert behind.reset and behind.last_seq == 8 and behind.data == []
        assert not (await client.events(6)).reset
    await client.aclose()


async def test_follower_applies_in_order_and_resets_at_start(registry: FastAPI) -> None:
    client = RegistryClient("http://registry", TOKEN, transport=httpx.ASGITransport(app=registry))
    seen: list[tuple[int, str]] = []
    resets: list[int | None] = []

    async def apply(event: RegistryEvent) -> None:
        seen.append((event.seq, event.type))

    async def reset() -> None:
        resets.append(follower.after)

    follower = EventFollower(client, apply, reset, wait_s=0.2)
    assert await follower.poll_once() == 0 and resets == [None] and follower.after == 0
    with registry.state.registry.db.session(write=True) as s:
        for kind in ("alias.moved", "adapter.deleted"):
            feed.record_event(
                s, {"tenant": "acme", "type": kind, "data": {}, "id": "e", "created": 0}
            )
    assert await follower.poll_once() == 2
    assert seen == [(1, "alias.moved"), (2, "adapter.deleted")] and follower.after == 2
    assert resets == [None]  # no reset while it follows
    await client.aclose()


class Outage(httpx.AsyncBaseTransport):
    """The real registry app, unreachable while ``down`` is set."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.down = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("registry down", request=request)
        return await self.inner.handle_async_request(request)


async def test_follower_resumes_after_an_outage_without_losing_events(registry: FastAPI) -> None:
    transport = Outage(registry)
    client = RegistryClient("http://registry", TOKEN, transport=transport, retries=1)
    seen: list[int] = []
    resets = 0

    async def apply(event: RegistryEvent) -> None:
        seen.append(event.seq)

    async def reset() -> None:
        nonlocal resets
        resets += 1

    follower = EventFollower(client, apply, reset, wait_s=0.2, retry_s=0.05, max_retry_s=0.1)
    follower.start()
    try:
        for _ in range(100):
            if follower.after is not None:
                break
            await asyncio.sleep(0.02)
        transport.down = True
        await asyncio.sleep(0.4)  # the long poll under way ends (empty); the next ones fail
        with registry.state.registry.db.session(write=True) as s:  # changes during the outage
            for _ in range(3):
                feed.record_event(
                    s,
                    {"tenant": "acme", "type": "alias.moved", "data": {}, "id": "e", "created": 0},
                )
        await asyncio.sleep(0.5)
        assert seen == []
        transport.down = False
        for _ in range(100):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.02)
        assert seen == [1, 2, 3] and resets == 1  # resumed where it was: no reset, no loss
    finally:
        await follower.stop()
        await client.aclose()
