"""``GET /v1/models`` through the gateway lists every base the fleet serves (issue 16, item 1):
two replicas, each the real inference app over a stand-in engine, serve different fleet
bases (tiny-llama; ``tiny-chat``, an uploaded archive), and a replica lists only the fleet
base it serves: the listing is the union, deduplicated (acme's own merged model and adapter,
which both replicas list, appear once), and stays tenant-scoped (globex sees the two fleet
bases, nothing of acme's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference
from services.inference.settings import InferenceSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.support.adapters import make_adapter, pack
from tests.support.digest_engine import DigestEngine
from tests.support.fleet import ADMIN_KEY, TOKEN, HostRouter
from tests.support.models import model_archive, upload_model

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}
MERGED = "acme-merged"
CHAT = "tiny-chat"


@pytest.fixture
async def gateway(tmp_path: Path, model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    from transformers import AutoTokenizer

    holder: dict[str, FastAPI] = {}
    holder["registry"] = create_registry(
        RegistrySettings(
            home=tmp_path / "reg", internal_token=TOKEN, seed_models_dir=model_dir.parent
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    for host, base in (("inf-a", "tiny-llama"), ("inf-b", CHAT)):
        settings = InferenceSettings(
            home=tmp_path / host,
            internal_token=TOKEN,
            model_dir=model_dir,  # the stand-in engine reads no weights
            base_model=base,
            registry_url="http://registry",
            follow_events=False,
            max_lora_rank=16,
        )
        holder[host] = create_inference(
            settings,
            DigestEngine(tokenizer),  # type: ignore[arg-type]
            registry_transport=HostRouter(holder),
        )
    holder["gateway"] = create_gateway(
        GatewaySettings(
            home=tmp_path / "gw",
            internal_token=TOKEN,
            admin_key=ADMIN_KEY,
            registry_url="http://registry",
            inference_urls=["http://inf-a", "http://inf-b"],
            training_url="http://training",
        ),
        upstream_transport=HostRouter(holder),
    )
    async with AsyncExitStack() as stack:
        for app in holder.values():
            await stack.enter_async_context(
                LifespanManager(app, startup_timeout=60, shutdown_timeout=60)
            )
        reg = await stack.enter_async_context(
            httpx.AsyncClient(transport=HostRouter(holder), base_url="http://registry")
        )
        packed = model_archive(model_dir)
        for model, owner in ((MERGED, "acme"), (CHAT, "system")):
            r = await upload_model(reg, model, packed, headers=INTERNAL | {"X-Tenant-Id": owner})
            assert r.status_code == 201, r.text
        adapter = pack(make_adapter(model_dir, tmp_path / "ad", r=8), tmp_path / "a.tar.gz")
        with adapter.open("rb") as fh:
            r = await reg.post(
                "/v1/adapters/router/versions",
                headers=INTERNAL | {"X-Tenant-Id": "acme"},
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model":"tiny-llama"}'},
            )
        assert r.status_code == 201, r.text
        gw = await stack.enter_async_context(
            httpx.AsyncClient(transport=HostRouter(holder), base_url="http://gateway")
        )
        for _ in range(300):  # both replicas probed ready (and their bases announced)
            if (await gw.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield gw


async def key_of(gw: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    r = await gw.post("/admin/tenants", json={"id": tenant}, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = await gw.post("/admin/keys", json={"tenant": tenant, "role": "integrator"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


async def test_models_lists_the_union_of_every_replicas_bases(
    gateway: httpx.AsyncClient,
) -> None:
    acme, globex = await key_of(gateway, "acme"), await key_of(gateway, "globex")
    for _ in range(100):  # until the health loop has seen both replicas' bases
        r = await gateway.get("/v1/models", headers=acme)
        assert r.status_code == 200, r.text
        ids = [m["id"] for m in r.json()["data"]]
        if CHAT in ids and "tiny-llama" in ids:
            break
        await asyncio.sleep(0.1)
    assert sorted(ids[:2]) == [CHAT, "tiny-llama"]  # the served bases first
    assert len(ids) == len(set(ids))  # listed by both replicas, each listed once
    assert MERGED in ids and "router@v1" in ids
    by_id = {m["id"]: m for m in r.json()["data"]}
    assert by_id[MERGED]["owned_by"] == "acme" and by_id[CHAT]["owned_by"] == "system"

    r = await gateway.get("/v1/models", headers=globex)
    assert r.status_code == 200, r.text
    assert sorted(m["id"] for m in r.json()["data"]) == [CHAT, "tiny-llama"]  # none of acme's

    # a lookup is answered by whichever replica knows the model
    for model, tenant_key, status in (
        (CHAT, acme, 200),
        ("tiny-llama", globex, 200),
        (CHAT, globex, 200),
        (MERGED, acme, 200),
        (MERGED, globex, 404),
    ):
        r = await gateway.get(f"/v1/models/{model}", headers=tenant_key)
        assert r.status_code == status, (model, r.text)
