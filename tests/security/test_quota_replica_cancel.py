"""The inference replica stops a non-streamed generation when its caller goes away (issue 18,
item 4): uvicorn never cancels a handler whose client disconnected, so the replica used to
generate all ``max_tokens`` for a gateway that had long closed the call. And the gateway bills
such a call what the replica generated before it stopped (the replica keeps the count under
the request id; the gateway fetches it in the background), once.

The replica is the real inference app, served by uvicorn on loopback with the real tiny-llama
tokenizer; its engine is a scripted stand-in for vLLM (one token every ``TOKEN_S``, recording
how each generation ended), so no vLLM engine is started. The registry it resolves the model
with is the stand-in of ``test_quota_disconnect``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from services.inference.app import create_app as create_inference
from services.inference.engine.base import GenerationChunk, GenerationRequest
from services.inference.settings import InferenceSettings
from tests.security.test_quota_disconnect import (
    ADMIN,
    TOKEN,
    TOKEN_S,
    _served,
    gateway_on,
    stand_in_replica,
)
from tests.support.standin_engine import StandInEngine


class ScriptedEngine(StandInEngine):
    """The engine protocol, generating one token ("t") every ``TOKEN_S``."""

    def __init__(self, tokenizer: Any, log: Counter[str]) -> None:
        super().__init__(tokenizer)
        self.log = log

    async def abort(self, request_id: str) -> None:
        return None

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        warmup = req.request_id == "warmup"
        if not warmup:
            self.log["started"] += 1
        prompt = len(req.prompt_token_ids or [])
        try:
            for i in range(req.max_tokens):
                await asyncio.sleep(0 if warmup else TOKEN_S)
                last = i == req.max_tokens - 1
                yield GenerationChunk(0, "t", "length" if last else None, prompt, i + 1, i == 0)
            if not warmup:
                self.log["finished"] += 1
        except BaseException:
            self.log["cancelled"] += 1
            raise


@asynccontextmanager
async def _replica(tmp_path: Path, model_dir: Path) -> AsyncIterator[tuple[str, str, Counter[str]]]:
    """(replica URL, stand-in registry URL, the engine's log)."""
    from transformers import AutoTokenizer

    log: Counter[str] = Counter()
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(str(model_dir)), log)
    async with _served(stand_in_replica(Counter())) as registry:
        settings = InferenceSettings(
            home=tmp_path,
            internal_token=SecretStr(TOKEN),
            model_dir=model_dir,
            registry_url=registry,
            max_model_len=512,
            max_loras=4,
            max_cpu_loras=8,
            max_lora_rank=16,
        )
        app = create_inference(settings, engine)  # type: ignore[arg-type]
        async with (
            LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
            _served(app) as url,
        ):
            yield url, registry, log


@pytest.fixture
async def replica(tmp_path: Path, model_dir: Path) -> AsyncIterator[tuple[str, Counter[str]]]:
    async with _replica(tmp_path, model_dir) as (url, _, log):
        yield url, log


async def _abandon(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    log: Counter[str],
    tokens: int,
    *,
    cancel_polls: int,
) -> None:
    """Post ``body`` (the second generation the replica sees), leave after about ``tokens``
    tokens of it, and give the replica ``cancel_polls`` x 20 ms to log the cancellation."""
    call = asyncio.create_task(http.post(url, json=body, headers=headers))
    for _ in range(250):
        if log["started"] == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(tokens * TOKEN_S)
    call.cancel()  # the caller goes away: its connection is closed
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(cancel_polls):
        if log["cancelled"]:
            break
        await asyncio.sleep(0.02)


async def test_replica_stops_a_non_streamed_generation_its_caller_left(
    replica: tuple[str, Counter[str]],
) -> None:
    url, log = replica
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 5}
        r = await http.post(f"{url}/v1/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5 and log["finished"] == 1
        body["max_tokens"] = 60  # 3 s of generation
        await _abandon(http, f"{url}/v1/completions", body, headers, log, 3, cancel_polls=50)
        assert log["cancelled"] == 1 and log["finished"] == 1, dict(log)


async def _usage(http: httpx.AsyncClient, gateway: str) -> list[tuple[int, int, int]]:
    r = await http.get(f"{gateway}/admin/usage?tenant=acme", headers=ADMIN)
    assert r.status_code == 200, r.text
    rows = r.json()["data"]
    return [(u["requests"], u["prompt_tokens"], u["completion_tokens"]) for u in rows]


async def test_abandoned_non_streamed_call_is_billed_what_the_replica_generated(
    tmp_path: Path, model_dir: Path
) -> None:
    """Gateway and the real inference app, both on uvicorn: a client that leaves a
    non-streamed call mid-generation is billed prompt + the tokens generated before the
    replica stopped (the replica's count, not the prompt estimate), in one usage row."""
    async with (
        _replica(tmp_path / "replica", model_dir) as (replica, registry, log),
        gateway_on(tmp_path / "gateway", registry, replica) as (gateway, _, http, key),
    ):
        url = f"{gateway}/v1/completions"
        body = {"model": "tiny-llama", "prompt": "Hi there", "max_tokens": 5}
        r = await http.post(url, json=body, headers=key)  # answered: its usage
        assert r.status_code == 200, r.text
        prompt = r.json()["usage"]["prompt_tokens"]
        assert await _usage(http, gateway) == [(1, prompt, 5)]

        body["max_tokens"] = 60  # 3 s of generation
        await _abandon(http, url, body, key, log, 6, cancel_polls=100)
        assert log["cancelled"] == 1 and log["finished"] == 1, dict(log)
        rows = await _usage(http, gateway)
        for _ in range(100):  # billed in the background, once the count is fetched
            if rows[0][0] == 2:
                break
            await asyncio.sleep(0.05)
            rows = await _usage(http, gateway)
        [(requests, prompts, completions)] = rows
        assert (requests, prompts) == (2, 2 * prompt), rows
        generated = completions - 5
        assert 3 <= generated < 60, rows  # ~6 tokens before the close, not 0, not 60
        await asyncio.sleep(1.0)  # nothing more arrives: billed once
        assert await _usage(http, gateway) == rows
        print(f"abandoned call billed prompt {prompt} + {generated} generated tokens")
