"""Version refs are never reused (issue 18, item 9).

Deleting an adapter and creating it again used to restart its numbering at 1, so ``a@v1``
named other weights while replicas still had the old ``a@v1`` cached as immutable. Now:

* the registry's per-(tenant, name) counter outlives the adapter: the re-created adapter's
  first version is v2;
* ``adapter.deleted`` reaches the replica, which drops the deleted versions (resolutions and
  loaded weights): the old ``a@v1`` is a 404 there, not the old weights;
* the replica's adapter cache keys on (ref, sha256), so even a ref that did come to name other
  bytes (a deletion from before the counter) loads the new weights.

The replica is the real inference app whose engine is ``DigestEngine``: each answer is the
digest of the adapter weights the cache handed the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from services.inference.app import create_app as create_inference
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.support.adapters import make_adapter, pack
from tests.support.digest_engine import DigestEngine, weights_digest
from tests.support.standin_engine import replica_settings

TOKEN = "version-reuse-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}


class LateASGI(httpx.AsyncBaseTransport):
    """ASGI transport to an app built after this transport (registry <-> replica)."""

    app: FastAPI | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert self.app is not None
        return await httpx.ASGITransport(app=self.app).handle_async_request(request)


@pytest.fixture(params=["sqlite", "postgres"])
async def fleet(
    request: pytest.FixtureRequest, tmp_path: Path, model_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, FastAPI]]:
    from transformers import AutoTokenizer

    url = (
        None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    )

    to_replica = LateASGI()
    registry = create_registry(
        RegistrySettings(
            home=tmp_path / "registry",
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            notify_urls=["http://replica/internal/registry-events"],
            webhook_poll_s=0.05,
            database_url=url,
        ),
        webhook_transport=to_replica,
    )
    engine = DigestEngine(AutoTokenizer.from_pretrained(str(model_dir)))
    replica = create_inference(
        replica_settings(tmp_path / "replica", model_dir, TOKEN),
        engine,  # type: ignore[arg-type]
        registry_transport=httpx.ASGITransport(app=registry),
    )
    to_replica.app = replica
    async with (
        LifespanManager(registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(replica, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=registry), base_url="http://registry", headers=AUTH
        ) as reg,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=replica), base_url="http://replica", headers=AUTH
        ) as rep,
    ):
        yield reg, rep, replica


async def _push(reg: httpx.AsyncClient, archive: Path) -> int:
    with archive.open("rb") as fh:
        r = await reg.post(
            "/v1/adapters/a/versions",
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model":"tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


async def _answer(rep: httpx.AsyncClient, model: str) -> httpx.Response:
    return await rep.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 1})


async def test_recreated_adapter_continues_the_count_and_replicas_serve_its_weights(
    fleet: tuple[httpx.AsyncClient, httpx.AsyncClient, FastAPI], tmp_path: Path, model_dir: Path
) -> None:
    reg, rep, replica = fleet
    old_dir = make_adapter(model_dir, tmp_path / "old", r=4, seed=1)
    new_dir = make_adapter(model_dir, tmp_path / "new", r=4, seed=2)
    old, new = weights_digest(old_dir), weights_digest(new_dir)
    assert old != new

    assert await _push(reg, pack(old_dir, tmp_path / "old.tar.gz")) == 1
    r = await _answer(rep, "a@1")
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == old, r.text
    cache = replica.state.server.cache
    assert cache.get("acme/a@v1") is not None

    r = await reg.delete("/v1/adapters/a")
    assert r.status_code == 200, r.text
    for _ in range(200):  # adapter.deleted, delivered from the outbox to the replica
        if cache.get("acme/a@v1") is None:
            break
        await asyncio.sleep(0.05)
    assert cache.get("acme/a@v1") is None, "the deleted version is still loaded"

    # the name's count survives the deletion: never v1 again
    assert await _push(reg, pack(new_dir, tmp_path / "new.tar.gz")) == 2
    r = await reg.get("/v1/adapters/a/versions")
    assert [v["version"] for v in r.json()["data"]] == [2], r.text
    for model in ("a@2", "a@v2"):
        r = await _answer(rep, model)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == new, (model, r.text)
    r = await _answer(rep, "a@1")
    assert r.status_code == 404, r.text

    # A ref that did come to name other bytes (a deletion from before the counter existed)
    # loads those bytes: the cache keys on (ref, sha256), not the ref alone. Played here by
    # v3 (the old weights again) under v2's ref.
    assert await _push(reg, pack(old_dir, tmp_path / "old.tar.gz")) == 3
    engine = replica.state.server.engine
    v2 = cache.get("acme/a@v2")
    assert v2 is not None and engine.added[-1].path == v2.handle.path
    res = await replica.state.server.resolver.resolve("acme", "a@3")
    reused = res.model_copy(update={"ref": "acme/a@v2", "model": "a@v2"})
    async with cache.use(reused) as handle:
        assert weights_digest(handle.path) == old
        assert handle.path != v2.handle.path  # unpacked apart: one directory per content
    assert cache.get("acme/a@v2").sha256 == res.sha256  # the stale entry went
    assert not v2.handle.path.exists()


async def test_concurrent_pushes_after_a_deletion_take_distinct_numbers(
    fleet: tuple[httpx.AsyncClient, httpx.AsyncClient, FastAPI], tmp_path: Path, model_dir: Path
) -> None:
    """The counter is the one place numbers come from: concurrent first pushes (the counter
    row inserted by one, the others retrying) and pushes after a deletion never collide."""
    reg, _, _ = fleet
    archive = pack(make_adapter(model_dir, tmp_path / "x", r=4), tmp_path / "x.tar.gz")
    first = await asyncio.gather(*(_push(reg, archive) for _ in range(4)))
    assert sorted(first) == [1, 2, 3, 4]
    assert (await reg.delete("/v1/adapters/a")).status_code == 200
    again = await asyncio.gather(*(_push(reg, archive) for _ in range(4)))
    assert sorted(again) == [5, 6, 7, 8]
