"""The inference app as a Ray Serve deployment (deploy/ray-serve) on a local token-auth Ray
head, behind the real gateway and registry (in-process uvicorn servers on loopback): requests
go gateway → Serve proxy → replica, adapter affinity is Serve's model multiplexing (the
gateway's ``serve_multiplexed_model_id`` header reaches the replica's ``@serve.multiplexed``
loader), and the replica's engine is configured from ``InferenceSettings`` through
``engine_config`` (internal token from the node's environment, fast CPU LoRA on).

One replica with one vLLM engine on tiny-llama, 1 CPU for its actor: the test's cost is one
engine start (~1-2 min on 2 shared cores)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.support.adapters import make_adapter, pack
from tests.support.fleet import ADMIN_KEY, TOKEN
from tests.support.postgres import free_port
from tests.support.ray_cluster import start_test_ray, stop_test_ray

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SERVE_DIR = ROOT / "deploy" / "ray-serve"
APP = "tunefleet-inference"


async def _serve(app: FastAPI, port: int, stack: AsyncExitStack) -> str:
    await stack.enter_async_context(LifespanManager(app, startup_timeout=120, shutdown_timeout=60))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def stop() -> None:
        server.should_exit = True
        await task

    stack.push_async_callback(stop)
    while not server.started:
        assert not task.done(), "uvicorn failed to start"
        await asyncio.sleep(0.02)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Ray node of the fleet has in its environment (KubeRay: from the secret); the
    head started afterwards passes it to its workers, so the Serve replica reads it the way a
    cluster node would. The replica imports the project and deploy/ray-serve by PYTHONPATH."""
    monkeypatch.setenv("TUNEFLEET_INTERNAL_TOKEN", TOKEN)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{SERVE_DIR}")
    monkeypatch.syspath_prepend(str(SERVE_DIR))


@pytest.fixture
async def serve_proxy(serve_env: None) -> AsyncIterator[tuple[str, object]]:
    """A Ray head with token auth and Serve's HTTP proxy on a free loopback port."""
    import ray
    from ray import serve

    if ray.is_initialized():  # a head left by an earlier module lacks this env: start anew
        stop_test_ray()
    t0 = time.perf_counter()
    start_test_ray(include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    print(f"\n[serve] head + proxy up in {time.perf_counter() - t0:.1f}s")
    try:
        yield f"http://127.0.0.1:{port}", serve
    finally:
        serve.shutdown()
        leftovers = stop_test_ray()
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def loads_by_model(metrics: str) -> dict[str, float]:
    pattern = r'^tunefleet_inference_multiplexed_loads_total\{model="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, metrics, flags=re.M)}


async def test_gateway_to_ray_serve_with_multiplexed_adapters(
    tmp_path: Path, model_dir: Path, serve_proxy: tuple[str, object]
) -> None:
    import tunefleet_serve

    serve_url, serve = serve_proxy
    assert tunefleet_serve.__file__ == str(SERVE_DIR / "tunefleet_serve.py")
    archive = pack(make_adapter(model_dir, tmp_path / "a0", seed=31), tmp_path / "a0.tar.gz")
    home = tmp_path / "home"
    async with AsyncExitStack() as stack:
        ports = {name: free_port() for name in ("registry", "gateway")}
        url = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
        registry = create_registry(
            RegistrySettings(
                home=home,
                internal_token=TOKEN,
                seed_models_dir=model_dir.parent,
                webhook_poll_s=0.05,
                notify_urls=[
                    f"{serve_url}/internal/registry-events",
                    f"{url['gateway']}/internal/registry-events",
                ],
            )
        )
        await _serve(registry, ports["registry"], stack)

        # The replica's settings: environment (token) + the application's arguments.
        app = tunefleet_serve.build_app(
            {
                "num_replicas": 1,
                "num_cpus": 1,
                "home": str(home / "serve"),
                "model_dir": str(model_dir),
                "registry_url": url["registry"],
                "max_model_len": 512,
                "max_loras": 2,
                "max_cpu_loras": 4,
                "max_lora_rank": 16,
                "max_num_seqs": 8,
            }
        )
        t0 = time.perf_counter()
        # serve.run blocks until the replica (engine included) is up: keep the loop serving
        # the registry meanwhile.
        await asyncio.to_thread(
            serve.run,
            app,
            name=APP,
            route_prefix="/",
            blocking=False,  # type: ignore[attr-defined]
        )
        started_s = time.perf_counter() - t0
        print(f"[serve] replica with its vLLM engine up in {started_s:.1f}s")

        gateway = create_gateway(
            GatewaySettings(
                home=home,
                internal_token=TOKEN,
                admin_key=ADMIN_KEY,
                registry_url=url["registry"],
                inference_urls=[serve_url],  # the Serve proxy is the gateway's one upstream
            )
        )
        await _serve(gateway, ports["gateway"], stack)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=url["gateway"], timeout=120)
        )
        for _ in range(600):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)

        # The replica: settings-derived engine config, the fast CPU LoRA path live.
        handle = serve.get_app_handle(APP)  # type: ignore[attr-defined]
        info = await handle.engine_info.remote()
        assert info["fast_cpu_lora"] is True, info
        assert info["config"]["max_loras"] == 2 and info["config"]["max_lora_rank"] == 16
        assert info["replica_id"].startswith("serve-"), info
        # Only callers with the fleet's internal token (from the node env) get in.
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as direct:
            body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 1}
            assert (await direct.post("/v1/completions", json=body)).status_code in (401, 403)
            bad = {"Authorization": "Bearer nope", "X-Tenant-Id": "acme"}
            r = await direct.post("/v1/completions", json=body, headers=bad)
            assert r.status_code in (401, 403), r.text

        admin = auth(ADMIN_KEY)
        assert (await http.post("/admin/tenants", json={"id": "acme"}, headers=admin)).is_success
        keys = {}
        for role in ("app", "integrator"):
            r = await http.post("/admin/keys", json={"tenant": "acme", "role": role}, headers=admin)
            keys[role] = auth(r.json()["key"])
        with archive.open("rb") as fh:
            r = await http.post(
                "/v1/adapters/ad0/versions",
                headers=keys["integrator"],
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model": "tiny-llama"}'},
            )
        assert r.status_code == 201, r.text
        r = await http.put(
            "/v1/adapters/ad0/aliases/production", json={"version": 1}, headers=keys["integrator"]
        )
        assert r.status_code == 200, r.text

        async def chat(model: str, **extra: object) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            return await http.post(
                "/v1/chat/completions", json={**body, "max_tokens": 2, **extra}, headers=keys["app"]
            )

        latencies = []
        for model in ("tiny-llama", "ad0", "ad0@1", "ad0", "tiny-llama"):
            t1 = time.perf_counter()
            resp = await chat(model)
            latencies.append(time.perf_counter() - t1)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"] is not None
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "ad0",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "stream": True,
            },
            headers=keys["app"],
        ) as stream:
            assert stream.status_code == 200
            events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 2, events
        print(f"[serve] gateway→Serve chat latencies (s): {[round(x, 2) for x in latencies]}")

        # Multiplexing: each immutable version was loaded ONCE by Serve's multiplexer on the
        # replica (the gateway's routing key arrived as the multiplexed model id); every later
        # request for it (ad0, ad0@1 and the stream are one version) was a warm hit.
        async with httpx.AsyncClient(timeout=30) as direct:
            metrics = (await direct.get(f"{serve_url}/metrics")).text
        loads = loads_by_model(metrics)
        adapter_ids = [m for m in loads if "ad0" in m]
        assert loads.get("tiny-llama") == 1.0, loads
        assert len(adapter_ids) == 1 and loads[adapter_ids[0]] == 1.0, loads
        serve.delete(APP)  # type: ignore[attr-defined]  # drains and stops the engine
