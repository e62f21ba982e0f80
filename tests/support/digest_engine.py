"""A stand-in for vLLM that answers with the weights it was handed.

Every completion is the first 12 hex digits of the sha256 of the adapter's
``adapter_model.safetensors`` (as the adapter cache unpacked it for this request), or
``base`` without an adapter: a test reads from the text exactly which weights served each
request, with no model run. It implements the engine protocol
(``services.inference.engine.base.InferenceEngine``); the tokenizer is tiny-llama's.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.inference.engine.base import AdapterHandle, GenerationChunk, GenerationRequest
from tests.support.standin_engine import StandInEngine


def weights_digest(adapter_dir: Path) -> str:
    return hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]


class DigestEngine(StandInEngine):
    def __init__(self, tokenizer: Any, *, delay_s: float = 0.0) -> None:
        super().__init__(tokenizer)
        self.delay_s = delay_s
        self.added: list[AdapterHandle] = []
        self._digests: dict[int, str] = {}

    async def add_adapter(self, handle: AdapterHandle) -> None:
        # read at load, as vLLM does: what the cache unpacked is what serves
        self._digests[handle.int_id] = weights_digest(handle.path)
        self.added.append(handle)

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        self._digests.pop(handle.int_id, None)

    async def abort(self, request_id: str) -> None:
        return None

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        text = "base" if req.adapter is None else self._digests[req.adapter.int_id]
        prompt = len(req.prompt_token_ids or [])
        if self.delay_s and req.request_id != "warmup":
            await asyncio.sleep(self.delay_s)
        yield GenerationChunk(0, text, "length", prompt, 1, True)
