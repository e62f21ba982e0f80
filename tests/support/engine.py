"""A real vLLM engine on tiny-llama with settings small enough for a 2-core CPU box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.inference.engine.base import EngineConfig
from services.inference.engine.vllm_engine import VllmEngine

SMALL_ENGINE: dict[str, Any] = {
    "max_model_len": 512,
    "max_num_seqs": 16,
    "kv_cache_gib": 1.0,
    "max_loras": 4,
    "max_cpu_loras": 8,
    "max_lora_rank": 16,
}


async def start_engine(model_dir: Path, **overrides: Any) -> VllmEngine:
    """Start a :class:`VllmEngine` on ``model_dir``; the caller must ``await shutdown()``."""
    settings = {"model_id": model_dir.name, **SMALL_ENGINE, **overrides}
    engine = VllmEngine(EngineConfig(model_path=model_dir, **settings))
    try:
        await engine.start()
    except BaseException:
        await engine.shutdown()
        raise
    return engine
