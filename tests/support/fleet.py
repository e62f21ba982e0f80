"""Registry + inference apps wired together in-process over real HTTP semantics (ASGI).

The registry's webhooks reach the inference app (hot swap), the inference app fetches
archives from the registry: the same calls as between processes, without the sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference
from services.inference.settings import InferenceSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings

TOKEN = "fleet-test-token"
ADMIN_KEY = "tf-admin-test-key"
EVENTS_URL = "http://inference/internal/registry-events"
GATEWAY_EVENTS_URL = "http://gateway/internal/registry-events"


@dataclass
class Fleet:
    registry_app: FastAPI
    inference_app: FastAPI
    registry: httpx.AsyncClient
    inference: httpx.AsyncClient
    home: Path
    gateway_app: FastAPI
    gateway: httpx.AsyncClient  # no credentials: tests pass API keys

    async def push(self, name: str, archive: Path, tenant: str = "acme") -> dict[str, Any]:
        with archive.open("rb") as fh:
            r = await self.registry.post(
                f"/v1/adapters/{name}/versions",
                headers={"X-Tenant-Id": tenant},
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model":"tiny-llama"}'},
            )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def promote(
        self, name: str, version: int, alias: str = "production", tenant: str = "acme"
    ) -> None:
        r = await self.registry.put(
            f"/v1/adapters/{name}/aliases/{alias}",
            json={"version": version},
            headers={"X-Tenant-Id": tenant},
        )
        assert r.status_code == 200, r.text


class HostRouter(httpx.AsyncBaseTransport):
    """Routes http://registry, http://inference, http://gateway to the in-process apps (which
    are created after the transports that reach them: the apps call each other)."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self.apps = apps

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self.apps[request.url.host]
        return await httpx.ASGITransport(app=app).handle_async_request(request)


@asynccontextmanager
async def fleet(
    home: Path,
    model_dir: Path,
    engine: Any,
    *,
    gateway_overrides: dict[str, Any] | None = None,
    extra_apps: Callable[[httpx.AsyncBaseTransport], dict[str, FastAPI]] | None = None,
    **inference_overrides: Any,
) -> AsyncIterator[Fleet]:
    """The fleet in-process. ``extra_apps(transport)`` returns more apps by host name (e.g.
    ``{"training": app}``; the gateway's training_url is http://training), built with the
    transport that reaches every app of the fleet."""
    reg_settings = RegistrySettings(
        home=home,
        internal_token=TOKEN,
        seed_models_dir=model_dir.parent,
        webhook_poll_s=0.05,
        notify_urls=[EVENTS_URL, GATEWAY_EVENTS_URL],
    )
    inf_settings = InferenceSettings(
        **{
            "home": home,
            "internal_token": TOKEN,
            "model_dir": model_dir,
            "registry_url": "http://registry",
            "max_model_len": 512,
            "max_loras": 4,
            "max_cpu_loras": 8,
            "max_lora_rank": 16,
            **inference_overrides,
        }
    )
    holder: dict[str, FastAPI] = {}

    reg_app = create_registry(reg_settings, webhook_transport=HostRouter(holder))
    inf_app = create_inference(
        inf_settings, engine, registry_transport=HostRouter(holder), own_engine=False
    )
    gw_app = create_gateway(
        GatewaySettings(
            home=home,
            internal_token=TOKEN,
            admin_key=ADMIN_KEY,
            **{
                "registry_url": "http://registry",
                "inference_urls": ["http://inference"],
                "training_url": "http://training",
                **(gateway_overrides or {}),
            },
        ),
        upstream_transport=HostRouter(holder),
    )
    extras = extra_apps(HostRouter(holder)) if extra_apps else {}
    holder.update(registry=reg_app, inference=inf_app, gateway=gw_app, **extras)
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    async with AsyncExitStack() as stack:
        for extra in extras.values():
            await stack.enter_async_context(
                LifespanManager(extra, startup_timeout=120, shutdown_timeout=60)
            )
        await stack.enter_async_context(
            LifespanManager(reg_app, startup_timeout=60, shutdown_timeout=60)
        )
        await stack.enter_async_context(
            LifespanManager(inf_app, startup_timeout=300, shutdown_timeout=60)
        )
        await stack.enter_async_context(
            LifespanManager(gw_app, startup_timeout=60, shutdown_timeout=60)
        )
        reg = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=reg_app),
                base_url="http://registry",
                headers=headers,
            )
        )
        inf = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=inf_app),
                base_url="http://inference",
                headers=headers,
                timeout=120,
            )
        )
        for _ in range(3000):  # ready = engine started and generated one token
            if (await inf.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("inference never became ready")
        gw = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gw_app), base_url="http://gateway", timeout=120
            )
        )
        for _ in range(100):  # the gateway is ready once it sees a ready replica
            if (await gw.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("gateway never saw a ready inference replica")
        yield Fleet(reg_app, inf_app, reg, inf, home, gw_app, gw)
