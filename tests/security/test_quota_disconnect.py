"""Disconnecting does not make generation free (issue 18, item 4).

The gateway and a stand-in replica (which is also the registry's resolve endpoint) are real
uvicorn servers on loopback, reached over real sockets, so a client that goes away is a closed
connection, as in production; the gateway's generation hop is its aiohttp client. The
replica generates one token every ``TOKEN_S`` and records whether each generation ran to its
end or was cancelled by its caller going away.

* tpm admission: a request is admitted only if the budget covers prompt + ``max_tokens``, and
  the reservation is settled to the real usage when the answer completes;
* a streamed answer cut short is billed what it relayed, and its generation is cancelled;
* a non-streamed call abandoned by its client cancels the generation and bills the prompt
  (when the replica reports no count of what it generated);
* each of these is one usage row (requests = 1), not zero and not two.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import SecretStr

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from tests.support.postgres import free_port

TOKEN = "quota-test-token"
BOOTSTRAP = "tf-bootstrap-quota-test"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
TOKEN_S = 0.05  # the stand-in replica's time per generated token
GENERATES_AT_MOST = 10  # it stops after this many tokens (finish_reason "stop")
PROMPT_TOKENS = 5  # what it reports as the prompt's tokens


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stand_in_replica(log: Counter[str]) -> FastAPI:
    """``/v1/resolve`` (every model is a base model) and ``/v1/completions``."""
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/resolve")
    async def resolve(model: str) -> dict[str, Any]:
        return {"model": model, "kind": "base", "base_model": model, "ref": model}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await request.json()
        n = min(int(body.get("max_tokens") or 16), GENERATES_AT_MOST)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n}
        log["started"] += 1
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                try:
                    for _ in range(n):
                        yield _sse({"choices": [{"index": 0, "text": "t", "finish_reason": None}]})
                        await asyncio.sleep(TOKEN_S)
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield _sse({"choices": [], "usage": usage})
                    yield b"data: [DONE]\n\n"
                    log["finished"] += 1
                except BaseException:
                    log["cancelled"] += 1
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")
        for _ in range(n):  # generate token by token; stop when the caller has gone
            if await request.is_disconnected():
                log["cancelled"] += 1
                return Response(status_code=499)
            await asyncio.sleep(TOKEN_S)
        log["finished"] += 1
        choice = {"index": 0, "text": "t" * n, "finish_reason": "stop"}
        return JSONResponse({"id": "cmpl-1", "choices": [choice], "usage": usage})

    return app


@dataclass
class World:
    gateway: str  # the gateway's URL
    app: FastAPI
    key: dict[str, str]  # acme's app key
    log: Counter[str]  # the replica's generations: started / finished / cancelled

    async def usage(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        r = await http.get(f"{self.gateway}/admin/usage?tenant=acme", headers=ADMIN)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data

    async def wait_for(self, what: str, n: int = 1) -> None:
        for _ in range(250):
            if self.log[what] >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the replica never saw {what}: {dict(self.log)}")


@asynccontextmanager
async def _served(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    cfg = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn failed to start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def gateway_on(
    home: Path, registry: str, replica: str
) -> AsyncIterator[tuple[str, FastAPI, httpx.AsyncClient, dict[str, str]]]:
    """A gateway on uvicorn in front of ``replica`` (its registry and training at
    ``registry``), tenant ``acme`` onboarded: (url, app, client, the app key's headers)."""
    settings = GatewaySettings(
        home=home,
        internal_token=SecretStr(TOKEN),
        admin_key=SecretStr(BOOTSTRAP),
        registry_url=registry,
        training_url=registry,
        inference_urls=[replica],
    )
    app = create_gateway(settings)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        _served(app) as gateway,
        httpx.AsyncClient(timeout=30) as http,
    ):
        r = await http.post(f"{gateway}/admin/tenants", json={"id": "acme"}, headers=ADMIN)
        assert r.is_success, r.text
        body = {"tenant": "acme", "role": "app"}
        r = await http.post(f"{gateway}/admin/keys", json=body, headers=ADMIN)
        yield gateway, app, http, {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    log: Counter[str] = Counter()
    async with (
        _served(stand_in_replica(log)) as replica,
        gateway_on(tmp_path, replica, replica) as (gateway, app, _, key),
    ):
        yield World(gateway, app, key, log)


async def _set_tpm(w: World, http: httpx.AsyncClient, tpm: int) -> None:
    r = await http.put(
        f"{w.gateway}/admin/quotas", json={"tenant": "acme", "tpm": tpm}, headers=ADMIN
    )
    assert r.status_code == 200 and r.json()["effective"]["tpm"] == tpm, r.text


async def test_tpm_admits_by_max_tokens_and_settles_to_usage(world: World) -> None:
    w = world
    async with httpx.AsyncClient(timeout=30) as http:
        await _set_tpm(w, http, 100)
        url = f"{w.gateway}/v1/completions"
        # reserves 2 + 60, uses 5 + 10: the other 47 go back (85 of 100 left)
        body = {"model": "tiny", "prompt": "Hi there", "max_tokens": 60}
        r = await http.post(url, json=body, headers=w.key)
        assert r.status_code == 200, r.text
        r = await http.post(url, json=body, headers=w.key)  # 62 <= 85: admitted
        assert r.status_code == 200, r.text
        # 70 left; this one may cost 2 + 80: refused before the replica sees it
        started = w.log["started"]
        r = await http.post(url, json={**body, "max_tokens": 80}, headers=w.key)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "tokens_rate_limit_exceeded"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1
        assert w.log["started"] == started
        # streamed requests reserve the same way
        r = await http.post(url, json={**body, "max_tokens": 80, "stream": True}, headers=w.key)
        assert r.status_code == 429, r.text
        # a small one still fits
        r = await http.post(url, json={**body, "max_tokens": 20}, headers=w.key)
        assert r.status_code == 200, r.text
        rows = await w.usage(http)
        assert [(u["requests"], u["prompt_tokens"], u["completion_tokens"]) for u in rows] == [
            (3, 3 * PROMPT_TOKENS, 30)
        ]


async def test_streamed_disconnect_is_billed_what_was_relayed(world: World) -> None:
    w = world
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "tiny", "prompt": "Hi there", "max_tokens": 10, "stream": True}
        seen = 0
        async with http.stream(
            "POST", f"{w.gateway}/v1/completions", json=body, headers=w.key
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen == 3:
                    break  # the client goes away mid-stream (the connection is closed)
        await w.wait_for("cancelled")
        assert w.log["finished"] == 0, "the replica's generation ran to its end"
        await asyncio.sleep(0.2)
        rows = await w.usage(http)
        assert len(rows) == 1 and rows[0]["requests"] == 1, rows
        # the prompt's estimate ("Hi there": 2) + the events relayed before the close
        assert rows[0]["prompt_tokens"] == 2
        assert 3 <= rows[0]["completion_tokens"] < GENERATES_AT_MOST, rows


async def test_non_streamed_disconnect_cancels_and_bills_the_prompt(world: World) -> None:
    w = world
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "tiny", "prompt": "x" * 400, "max_tokens": 10}
        call = asyncio.create_task(
            http.post(f"{w.gateway}/v1/completions", json=body, headers=w.key)
        )
        await w.wait_for("started")
        await asyncio.sleep(2 * TOKEN_S)
        call.cancel()  # the client gives up: its connection is closed
        with pytest.raises(asyncio.CancelledError):
            await call
        await w.wait_for("cancelled")
        assert w.log["finished"] == 0, "the replica's generation ran to its end"
        # this stand-in keeps no count of what it generated (the real replica's is in
        # test_quota_replica_cancel): after its tries the gateway bills the prompt estimate
        rows = await w.usage(http)
        for _ in range(100):
            if rows:
                break
            await asyncio.sleep(0.05)
            rows = await w.usage(http)
        assert [(u["requests"], u["prompt_tokens"], u["completion_tokens"]) for u in rows] == [
            (1, 100, 0)
        ]
