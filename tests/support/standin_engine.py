"""The parts of the engine protocol (``services.inference.engine.base.InferenceEngine``) every
stand-in for vLLM shares: nothing to start or stop, never dead, adapter ids counted. Subclasses
say what loading an adapter and generating mean for their test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from services.inference.engine.base import AdapterHandle
from services.inference.settings import InferenceSettings


def replica_settings(home: Path, model_dir: Path, token: str) -> InferenceSettings:
    """A replica in front of a stand-in engine, reading the registry at ``http://registry``
    (the tests route that host to an in-process registry app)."""
    return InferenceSettings(
        home=home,
        internal_token=SecretStr(token),
        model_dir=model_dir,
        registry_url="http://registry",
        max_model_len=512,
        max_loras=4,
        max_cpu_loras=8,
        max_lora_rank=16,
    )


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
