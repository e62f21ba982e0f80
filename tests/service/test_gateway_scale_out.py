"""Two gateways on one Postgres share their state (issue 16, item 2).

Two real gateway processes (``python -m gateway``) on one real Postgres database, a real
registry process, and a stand-in inference replica (a small uvicorn server in a thread: every
model is its base model, answers come at once, streams last ``STREAM_S``). A client that
alternates between the gateways sees one gateway:

* a tenant's rpm limit holds across both (within one request);
* an idempotent create retried through the other gateway is replayed, not run again;
* feedback posted to B for an answer served by A counts;
* a tenant's concurrent-streams limit holds across both.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.support.postgres import PostgresCluster, free_port
from tests.support.procs import ServiceProcess, service

TOKEN = "scale-out-token"
BOOTSTRAP = "tf-bootstrap-scale-out"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
STREAM_S = 1.5  # how long a stand-in stream lasts


def stand_in_replica() -> FastAPI:
    app = FastAPI()
    ids = itertools.count(1)

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        usage = {"prompt_tokens": 2, "completion_tokens": 1}
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                chunk = {"choices": [{"index": 0, "text": "t", "finish_reason": None}]}
                for _ in range(3):
                    yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                    await asyncio.sleep(STREAM_S / 3)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {"index": 0, "text": "billing", "finish_reason": "stop"}
        return JSONResponse({"id": f"cmpl-{next(ids)}", "choices": [choice], "usage": usage})

    return app


@pytest.fixture
def replica() -> Iterator[str]:
    port = free_port()
    cfg = uvicorn.Config(stand_in_replica(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stand-in did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def gateways(
    tmp_path: Path, postgres: PostgresCluster, model_dir: Path, replica: str
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Gateways A and B on one Postgres database (the state store defaults to it there)."""
    db = postgres.create_database()
    common = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN}
    reg_env = common | {"TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)}
    gw_env = common | {
        "TUNEFLEET_GATEWAY_DATABASE_URL": db,
        "TUNEFLEET_ADMIN_KEY": BOOTSTRAP,
        "TUNEFLEET_GATEWAY_KEY_HASH_SECRET": "scale-out-key-hash-secret",  # shared, as required
        "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
        "TUNEFLEET_GATEWAY_INFERENCE_URLS": f'["{replica}"]',
    }
    with ExitStack() as stack:
        (tmp_path / "reg").mkdir()
        reg = stack.enter_context(
            service(
                "registry",
                "services.registry",
                tmp_path / "reg",
                reg_env,
                "TUNEFLEET_REGISTRY_PORT",
            )
        )
        reg.wait_ready(120)
        gws = []
        for name in ("a", "b"):  # one after the other: the first one migrates the database
            home = tmp_path / f"gw-{name}"
            home.mkdir()
            env = gw_env | {"TUNEFLEET_GATEWAY_REGISTRY_URL": reg.url}
            gw = stack.enter_context(
                service(f"gateway-{name}", "gateway", home, env, "TUNEFLEET_GATEWAY_PORT")
            )
            gw.wait_ready(120)
            gws.append(gw)
        yield gws[0], gws[1]


async def _json(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


async def _quota(http: httpx.AsyncClient, gw: ServiceProcess, **limits: int) -> None:
    body = {"tenant": "acme", **limits}
    await _json(await http.put(f"{gw.url}/admin/quotas", json=body, headers=ADMIN))
    await asyncio.sleep(2.3)  # the other gateway re-reads limits every 2 s


async def _feedback(
    http: httpx.AsyncClient, gw: ServiceProcess, key: dict[str, str], rid: str, correct: str
) -> Any:
    """Feedback through ``gw``; a prediction is written within ``flush_s`` (50 ms) of its
    answer, so a 404 is retried for a moment."""
    for _ in range(20):
        fb = {"request_id": rid, "correct": correct}
        r = await http.post(f"{gw.url}/v1/feedback", json=fb, headers=key)
        if r.status_code != 404:
            return await _json(r)
        await asyncio.sleep(0.05)
    raise AssertionError(f"feedback for {rid} never found: {r.text}")


async def test_two_gateways_hold_one_tenant_to_its_limits(
    gateways: tuple[ServiceProcess, ServiceProcess],
) -> None:
    a, b = gateways
    async with httpx.AsyncClient(timeout=30) as http:
        # idempotent replay through the other gateway: the same answer, no second tenant
        once = {**ADMIN, "Idempotency-Key": "create-acme"}
        first = await _json(
            await http.post(f"{a.url}/admin/tenants", json={"id": "acme"}, headers=once), 201
        )
        again = await _json(
            await http.post(f"{b.url}/admin/tenants", json={"id": "acme"}, headers=once), 201
        )
        assert again == first
        key = await _json(
            await http.post(
                f"{a.url}/admin/keys", json={"tenant": "acme", "role": "app"}, headers=ADMIN
            ),
            201,
        )
        app = {"Authorization": f"Bearer {key['key']}"}
        body = {"model": "tiny-llama", "prompt": "Route this ticket", "max_tokens": 4}

        # feedback posted to B for an answer served by A counts (and the other way round)
        answer = await _json(await http.post(f"{a.url}/v1/completions", json=body, headers=app))
        out = await _feedback(http, b, app, answer["id"], "Billing")
        assert (out["match"], out["count"]) == (True, 1)
        answer = await _json(await http.post(f"{b.url}/v1/completions", json=body, headers=app))
        out = await _feedback(http, a, app, answer["id"], "outage")
        assert (out["match"], out["count"], out["accuracy"]) == (False, 2, 0.5)

        # one stream at a time for acme, wherever it is opened
        await _quota(http, a, max_streams=1)
        streamed = {**body, "stream": True}
        async with http.stream("POST", f"{a.url}/v1/completions", json=streamed, headers=app) as s:
            assert s.status_code == 200
            r = await http.post(f"{b.url}/v1/completions", json=streamed, headers=app)
            assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_streams", r.text
            await s.aread()
        r = await http.post(f"{b.url}/v1/completions", json=streamed, headers=app)
        assert r.status_code == 200, r.text  # the slot came back

        # a limit of N requests a minute admits N (within one) across both gateways, not 2 N
        await _quota(http, a, rpm=6)
        codes = []
        for i in range(12):
            gw = (a, b)[i % 2]
            r = await http.post(f"{gw.url}/v1/completions", json=body, headers=app)
            codes.append(r.status_code)
        assert set(codes) == {200, 429}, codes
        assert 6 <= codes.count(200) <= 7, codes
