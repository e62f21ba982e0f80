"""The inference replica stops a non-streamed generation when its caller goes away (issue 18,
item 4): uvicorn never cancels a handler whose client disconnected, so the replica used to
generate all ``max_tokens`` for a gateway that had long closed the call.

The replica is the real inference app, served by uvicorn on loopback with the real tiny-llama
tokenizer; its engine is a scripted stand-in for vLLM (one token every ``TOKEN_S``, recording
how each generation ended), so no vLLM engine is started. The registry it resolves the model
with is the stand-in of ``test_quota_disconnect``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from services.inference.app import create_app as create_inference
from services.inference.engine.base import GenerationChunk, GenerationRequest
from services.inference.settings import InferenceSettings
from tests.security.test_quota_disconnect import TOKEN, TOKEN_S, _served, stand_in_replica
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


@pytest.fixture
async def replica(tmp_path: Path, model_dir: Path) -> AsyncIterator[tuple[str, Counter[str]]]:
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
        async with LifespanManager(app, startup_timeout=60), _served(app) as url:
            yield url, log


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
        call = asyncio.create_task(http.post(f"{url}/v1/completions", json=body, headers=headers))
        for _ in range(250):
            if log["started"] == 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(3 * TOKEN_S)
        call.cancel()  # the caller goes away: its connection is closed
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(50):
            if log["cancelled"]:
                break
            await asyncio.sleep(0.02)
        assert log["cancelled"] == 1 and log["finished"] == 1, dict(log)
