"""An erased (deleted) adapter leaves no unpacked copy on an inference replica (issue 18,
item 8).

The real registry and the real inference app in-process; the replica's engine is the
scripted stand-in of ``test_quota_replica_cancel`` (no vLLM), so the adapter cache is the
real one: it downloads, verifies and unpacks the archive under the replica's adapter dir.
The adapter is then deleted in the registry and the ``adapter.deleted`` event the registry
queued is delivered to the replica, signed as the registry signs it: every loaded version is
unloaded and its directory removed; one serving a request at that moment goes when the
request ends.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import select

from services.inference.app import create_app as create_inference
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.registry.storage.tables import DeliveryRow
from shared import signing
from tests.security.test_quota_replica_cancel import ScriptedEngine
from tests.support.adapters import make_adapter, pack
from tests.support.standin_engine import replica_settings

TOKEN = "erasure-replica-token"
H = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}


class Fleet:
    def __init__(self, registry: FastAPI, inference: FastAPI, root: Path) -> None:
        self.registry, self.inference, self.root = registry, inference, root

    def client(self, app: FastAPI) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc", headers=H, timeout=60
        )

    def copies(self) -> list[Path]:
        """The replica's unpacked adapter directories."""
        return sorted(p for p in self.root.iterdir() if p.is_dir())

    async def deliver_deletions(self) -> None:
        """Every ``adapter.deleted`` the registry queued, to the replica, signed."""
        with self.registry.state.registry.db.session() as s:
            rows = [d.payload for d in s.scalars(select(DeliveryRow))]
        async with self.client(self.inference) as http:
            for payload in rows:
                if payload.get("type") != "adapter.deleted":
                    continue
                body = json.dumps(payload).encode()
                sig = {signing.HEADER: signing.sign(TOKEN, body)}
                r = await http.post("/internal/registry-events", content=body, headers=sig)
                assert r.status_code == 200, r.text


@pytest.fixture
async def fleet(tmp_path: Path, model_dir: Path) -> AsyncIterator[Fleet]:
    from transformers import AutoTokenizer

    registry = create_registry(
        RegistrySettings(
            home=tmp_path / "registry",
            internal_token=SecretStr(TOKEN),
            seed_models_dir=model_dir.parent,
            notify_urls=["http://inference/internal/registry-events"],
            webhook_poll_s=3600,  # the outbox is read and delivered by the test
        )
    )
    settings = replica_settings(tmp_path / "inference", model_dir, TOKEN)
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(str(model_dir)), Counter())
    inference = create_inference(
        settings,
        engine,  # type: ignore[arg-type]
        registry_transport=httpx.ASGITransport(app=registry),
    )
    async with (
        LifespanManager(registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(inference, startup_timeout=60, shutdown_timeout=60),
    ):
        yield Fleet(registry, inference, settings.adapter_dir())


async def push(fleet: Fleet, name: str, archive: Path) -> None:
    async with fleet.client(fleet.registry) as http:
        r = await http.post(
            f"/v1/adapters/{name}/versions",
            files={"file": ("a.tar.gz", archive.read_bytes())},
            data={"metadata": json.dumps({"base_model": "tiny-llama"})},
        )
    assert r.status_code == 201, r.text


async def complete(fleet: Fleet, model: str, max_tokens: int = 2) -> dict[str, Any]:
    async with fleet.client(fleet.inference) as http:
        body = {"model": model, "prompt": "Hi", "max_tokens": max_tokens}
        r = await http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_deleting_an_adapter_removes_its_unpacked_copies(
    fleet: Fleet, tmp_path: Path, model_dir: Path
) -> None:
    archive = pack(make_adapter(model_dir, tmp_path / "a", r=4, seed=3), tmp_path / "a.tar.gz")
    for name in ("erased", "erased", "kept"):  # erased@v1, erased@v2, kept@v1
        await push(fleet, name, archive)
    for model in ("erased@v1", "erased@v2", "kept@v1"):
        await complete(fleet, model)
    assert len(fleet.copies()) == 3

    # erased@v2 is serving a long request when the deletion arrives
    busy = asyncio.create_task(complete(fleet, "erased@v2", max_tokens=40))
    cache = fleet.inference.state.server.cache
    for _ in range(200):
        entry = cache.get("acme/erased@v2")
        if entry is not None and entry.in_use:
            break
        await asyncio.sleep(0.01)
    async with fleet.client(fleet.registry) as http:
        assert (await http.delete("/v1/adapters/erased")).status_code == 200
    await fleet.deliver_deletions()

    refs = [a.handle.ref for a in cache.loaded()]
    assert "acme/erased@v1" not in refs and "acme/kept@v1" in refs
    assert (await busy)["usage"]["completion_tokens"] == 40  # the request in flight finished
    for _ in range(100):  # then its copy went too
        if [a.handle.ref for a in cache.loaded()] == ["acme/kept@v1"]:
            break
        await asyncio.sleep(0.05)
    assert [a.handle.ref for a in cache.loaded()] == ["acme/kept@v1"]
    assert len(fleet.copies()) == 1
