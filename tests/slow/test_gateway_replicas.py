"""Two inference replicas behind the gateway, every service a real uvicorn server on loopback
(the two replicas share the session's vLLM engine to spare the CPU): adapter affinity,
failover when a replica stops, and the streams quota over real streaming HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference
from services.inference.settings import InferenceSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.support.adapters import make_adapter, pack
from tests.support.fleet import ADMIN_KEY, TOKEN
from tests.support.postgres import free_port

pytestmark = [pytest.mark.slow]
CHAT = ("POST", "/v1/chat/completions", "200")


@dataclass
class Served:
    app: FastAPI
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task

    def chat_count(self) -> float:
        registry = self.app.state.metrics_registry
        method, route, status = CHAT
        value = registry.get_sample_value(
            "tunefleet_inference_http_requests_total",
            {"method": method, "route": route, "status": status},
        )
        return value or 0.0

    def generations(self, status: str) -> float:
        """Generation requests that ended with ``status`` (ok, error = cut short, 4xx...)."""
        registry = self.app.state.metrics_registry
        return sum(
            s.value
            for metric in registry.collect()
            if metric.name == "tunefleet_inference_requests"
            for s in metric.samples
            if s.name.endswith("_total") and s.labels.get("status") == status
        )


async def _serve(app: FastAPI, port: int) -> Served:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn failed to start"
        await asyncio.sleep(0.02)
    return Served(app, f"http://127.0.0.1:{port}", server, task)


@asynccontextmanager
async def loopback_fleet(
    home: Path, model_dir: Path, engine: object
) -> AsyncIterator[tuple[Served, list[Served], httpx.AsyncClient]]:
    ports = {name: free_port() for name in ("registry", "i0", "i1", "gateway")}
    url = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    reg = create_registry(
        RegistrySettings(
            home=home,
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            webhook_poll_s=0.05,
            notify_urls=[f"{url[n]}/internal/registry-events" for n in ("i0", "i1", "gateway")],
        )
    )
    replicas = [
        create_inference(
            InferenceSettings(
                home=home / name,
                internal_token=TOKEN,
                model_dir=model_dir,
                registry_url=url["registry"],
                max_model_len=512,
                max_loras=4,
                max_cpu_loras=8,
                max_lora_rank=16,
            ),
            engine,  # type: ignore[arg-type]
            own_engine=False,
        )
        for name in ("i0", "i1")
    ]
    gw = create_gateway(
        GatewaySettings(
            home=home,
            internal_token=TOKEN,
            admin_key=ADMIN_KEY,
            registry_url=url["registry"],
            inference_urls=[url["i0"], url["i1"]],
        )
    )
    async with AsyncExitStack() as stack:
        servers: list[Served] = []
        for app, name in (
            (reg, "registry"),
            *zip(replicas, ("i0", "i1"), strict=True),
            (gw, "gateway"),
        ):
            await stack.enter_async_context(
                LifespanManager(app, startup_timeout=300, shutdown_timeout=60)
            )
            served = await _serve(app, ports[name])
            stack.push_async_callback(served.stop)
            servers.append(served)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url["gateway"], timeout=120)
        )
        for _ in range(600):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield servers[-1], servers[1:3], client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_affinity_failover_and_stream_quota(
    tmp_path: Path, model_dir: Path, vllm_engine: object
) -> None:
    root = tmp_path / "adapters"
    archives = [
        pack(make_adapter(model_dir, root / f"a{i}", seed=20 + i), root / f"a{i}.tar.gz")
        for i in range(2)
    ]
    async with loopback_fleet(tmp_path / "home", model_dir, vllm_engine) as (gw, reps, http):
        admin = auth(ADMIN_KEY)
        assert (await http.post("/admin/tenants", json={"id": "acme"}, headers=admin)).is_success
        keys = {}
        for role in ("app", "integrator"):
            r = await http.post("/admin/keys", json={"tenant": "acme", "role": role}, headers=admin)
            keys[role] = auth(r.json()["key"])
        for i, archive in enumerate(archives):
            with archive.open("rb") as fh:
                r = await http.post(
                    f"/v1/adapters/ad{i}/versions",
                    headers=keys["integrator"],
                    files={"file": ("a.tar.gz", fh)},
                    data={"metadata": '{"base_model": "tiny-llama"}'},
                )
            assert r.status_code == 201, r.text
            r = await http.put(
                f"/v1/adapters/ad{i}/aliases/production",
                json={"version": 1},
                headers=keys["integrator"],
            )
            assert r.status_code == 200, r.text

        async def chat(model: str) -> httpx.Response:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
            return await http.post("/v1/chat/completions", json=body, headers=keys["app"])

        # affinity: every request for one immutable version lands on the same replica
        homes = {}
        for model in ("ad0", "ad1", "ad0@1", "ad0@production"):
            before = [r.chat_count() for r in reps]
            for _ in range(3):
                resp = await chat(model)
                assert resp.status_code == 200, resp.text
            delta = [r.chat_count() - b for r, b in zip(reps, before, strict=True)]
            assert sorted(delta) == [0, 3], (model, delta)
            homes[model] = delta.index(3)
        assert homes["ad0"] == homes["ad0@1"] == homes["ad0@production"]

        # streams quota over real streaming: the second concurrent stream is a 429
        st = gw.app.state.gateway
        st.settings.default_max_streams = 1
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": 300,
            "stream": True,
        }
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers=keys["app"]
        ) as first:
            assert first.status_code == 200
            second = await http.post("/v1/chat/completions", json=body, headers=keys["app"])
            assert second.status_code == 429, second.text
            assert second.json()["error"]["code"] == "too_many_streams"
            assert second.headers["retry-after"]
            text = "".join([c async for c in first.aiter_text()])
        assert text.rstrip().endswith("data: [DONE]") and '"usage"' not in text
        st.settings.default_max_streams = 32
        again = await http.post("/v1/chat/completions", json=body, headers=keys["app"])
        assert again.status_code == 200

        # a client that hangs up mid-stream cancels the generation on the replica
        cut_before = sum(r.generations("error") for r in reps)
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=keys["app"]) as r:
            async for _ in r.aiter_raw():
                break  # first event seen: hang up
        for _ in range(200):
            if sum(r.generations("error") for r in reps) > cut_before:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replica kept generating after the client left")
        gate = st.quotas.state.gate  # type: ignore[attr-defined]
        assert gate.open.get("tenant:acme", 0) == 0  # the slot came back

        # failover: stop ad0's replica; its requests move to the other one, no error
        home = reps[homes["ad0"]]
        await home.stop()
        other = reps[1 - homes["ad0"]]
        before = other.chat_count()
        for _ in range(2):
            resp = await chat("ad0")
            assert resp.status_code == 200, resp.text
        assert other.chat_count() - before == 2
        stream = await http.post("/v1/chat/completions", json=body, headers=keys["app"])
        assert stream.status_code == 200 and "data: [DONE]" in stream.text
