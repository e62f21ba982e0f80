"""Inference engines behind one protocol (:class:`InferenceEngine`).

``base`` has no vLLM import, so the service, its tests and fakes can use the types without
vLLM installed; ``vllm_engine`` holds the vLLM implementation and is imported lazily.
"""

from services.inference.engine.base import (
    AdapterHandle,
    AdapterLoadError,
    ChoiceResult,
    EngineConfig,
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    InferenceEngine,
    InvalidGenerationRequest,
    collect,
)

__all__ = [
    "AdapterHandle",
    "AdapterLoadError",
    "ChoiceResult",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineOverloadedError",
    "GenerationChunk",
    "GenerationRequest",
    "GenerationResult",
    "InferenceEngine",
    "InvalidGenerationRequest",
    "collect",
]
