"""The gateway's ASGI stack alone: CPU per generation with and without the fast path.

``gateway_overhead.py`` measures the whole gateway process on a shared box, where other work
on the machine moves CPU per request by more than the difference between two versions of the
stack. This drives one process's gateway apps directly at the ASGI level (no sockets, no
HTTP parsing), both in the same process and interleaved, so background noise hits both
alike: the real app (``create_app``; auth, body limit, quotas, PII guard, usage, access
log, metrics) with its internal services answered in-process by a stub (registry resolve,
replica completion: one fixed 64-token answer), and the same app with
``InferenceFastPath`` taken out (every request through FastAPI's routing and dependency
solving). The difference is what the fast path saves per request; the absolute numbers
include the stub's and the in-process upstream transport's CPU, so they are not the
gateway's CPU per request (``gateway_overhead.py`` is).

    .venv/bin/python benchmarks/gateway_stack_cpu.py --requests 3000 --rounds 3 2>/dev/null
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app
from gateway.routes.fastpath import InferenceFastPath
from gateway.settings import GatewaySettings
from shared.logging import configure_logging

ADMIN_KEY = "tf-bench-admin-key"
COMPLETION = json.dumps(
    {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 1,
        "model": "tiny-llama",
        "choices": [{"index": 0, "text": "word " * 64, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76},
    }
).encode()
RESOLUTION = json.dumps(
    {"model": "tiny-llama", "kind": "base", "base_model": "tiny-llama", "ref": "tiny-llama"}
).encode()


async def stub(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The registry and an inference replica, as far as a generation needs them."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    body = RESOLUTION if path == "/v1/resolve" else COMPLETION
    if path in ("/readyz", "/healthz"):
        body = b'{"status":"ready"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def gateway(home: Path, fast: bool) -> FastAPI:
    settings = GatewaySettings(
        home=home,
        internal_token="bench-internal-token-000",
        admin_key=ADMIN_KEY,
        registry_url="http://registry",
        training_url="http://training",
        inference_urls=["http://inference"],
        follow_events=False,
    )
    app = create_app(settings, upstream_transport=httpx.ASGITransport(app=stub))
    if not fast:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not InferenceFastPath]
    return app


async def api_key(app: FastAPI) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=admin) as c:
        (await c.post("/admin/tenants", json={"id": "bench"})).raise_for_status()
        limits = {"tenant": "bench", "rpm": 10**9, "tpm": 10**9, "max_streams": 10**6}
        (await c.put("/admin/quotas", json=limits)).raise_for_status()
        r = await c.post("/admin/keys", json={"tenant": "bench", "role": "app"})
        r.raise_for_status()
        return str(r.json()["key"])


async def one(app: FastAPI, key: bytes, body: bytes) -> int:
    """One POST /v1/completions straight into the ASGI app; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"gw"),
            (b"authorization", b"Bearer " + key),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("gw", 80),
    }
    sent = False
    never = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def load(app: FastAPI, key: bytes, requests: int, concurrency: int) -> float:
    """CPU seconds of this process per request, ``concurrency`` in flight."""
    body = json.dumps(
        {"model": "tiny-llama", "prompt": "Say hello.", "max_tokens": 64, "temperature": 0}
    ).encode()
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await one(app, key, body)
            assert status == 200, status

    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - t0) / requests


async def main(args: argparse.Namespace) -> dict[str, Any]:
    configure_logging("gateway", "INFO")  # the access log is part of the stack (to stderr)
    home = Path(tempfile.mkdtemp(prefix="tf-gw-stack-"))
    apps = {"fast_path": gateway(home / "fast", True), "fastapi": gateway(home / "api", False)}
    keys: dict[str, bytes] = {}
    per: dict[str, list[float]] = {name: [] for name in apps}
    async with LifespanManager(apps["fast_path"]), LifespanManager(apps["fastapi"]):
        for name, app in apps.items():
            keys[name] = (await api_key(app)).encode()
            await load(app, keys[name], 300, args.concurrency)  # warm caches
        for rnd in range(args.rounds):
            order = list(apps) if rnd % 2 == 0 else list(reversed(apps))
            for name in order:
                per[name].append(
                    await load(apps[name], keys[name], args.requests, args.concurrency)
                )
    ms = {name: sorted(1000 * v for v in values) for name, values in per.items()}
    best = {name: round(values[len(values) // 2], 3) for name, values in ms.items()}
    return {
        "benchmark": "gateway_stack_cpu",
        "config": vars(args),
        "cpu_ms_per_request_median": best,
        "cpu_ms_per_request_all": {n: [round(v, 3) for v in vs] for n, vs in ms.items()},
        "fast_path_saves_ms": round(best["fastapi"] - best["fast_path"], 3),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="per phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    result = asyncio.run(main(ap.parse_args()))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if result["config"]["out"]:
        Path(result["config"]["out"]).write_text(text + "\n")
