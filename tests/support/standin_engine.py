"""The parts of the engine protocol (``services.inference.engine.base.InferenceEngine``) every
stand-in for vLLM shares: nothing to start or stop, never dead, adapter ids counted. Subclasses
say what loading an adapter and generating mean for their test."""

from __future__ import annotations

from typing import Any

from services.inference.engine.base import AdapterHandle


class StandInEngine:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._ids = 0

    async def start(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def is_dead(self) -> bool:
        return False

    def stats(self) -> dict[str, Any]:
        return {}

    def new_adapter_id(self) -> int:
        self._ids += 1
        return self._ids

    async def add_adapter(self, handle: AdapterHandle) -> None:
        return None

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        return None
