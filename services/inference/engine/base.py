"""The engine contract of the inference service: plain data types and a Protocol.

Nothing here imports vLLM (or torch), so routes, schedulers and fakes can be written and
tested against :class:`InferenceEngine` alone. The vLLM implementation lives in
:mod:`services.inference.engine.vllm_engine`.

Errors subclass the fleet-wide hierarchy of :mod:`shared.errors`, so an app's single error
handler renders them without knowing about engines.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from shared.errors import (
    InvalidRequest,
    ServiceUnavailable,
    TunefleetError,
    Unprocessable,
    without_paths,
)

Device = Literal["auto", "cpu", "cuda"]


# --------------------------------------------------------------------------- errors


class EngineError(TunefleetError):
    """Base of engine failures that are not a client's fault. The message reaches the client:
    server paths in it (vLLM's own exception texts name adapter directories) are hidden."""

    code = "engine_error"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(without_paths(message), **kw)


class AdapterLoadError(Unprocessable):
    """The engine refused an adapter (missing files, rank above the limit, corrupt weights).

    The engine itself stays usable; ``reason`` is a short machine-readable cause. The client
    sees the message without server paths (where the replica unpacked the adapter, what vLLM
    said about it); ``detail`` keeps the full text for the replica's log.
    """

    code = "adapter_load_failed"

    def __init__(self, message: str, *, ref: str, reason: str = "rejected") -> None:
        super().__init__(without_paths(message), param="adapter")
        self.detail = message
        self.ref = ref
        self.reason = reason


class InvalidGenerationRequest(InvalidRequest):
    """The request cannot be served as given (bad parameters, prompt too long...)."""

    code = "invalid_generation_request"


class EngineOverloadedError(ServiceUnavailable):
    """The engine's own admission control refused the request; retry later or elsewhere."""

    code = "engine_overloaded"


class EngineDeadError(ServiceUnavailable):
    """The engine core died or was shut down; it must be restarted to serve again."""

    code = "engine_dead"


# --------------------------------------------------------------------------- config / data


@dataclass(frozen=True)
class EngineConfig:
    """How to start an engine on one base model.

    ``kv_cache_gib`` is the KV-cache budget (on CPU it also seeds ``VLLM_CPU_KVCACHE_SPACE``);
    ``device="auto"`` picks CUDA when available, else CPU.
    """

    model_path: Path
    model_id: str
    max_model_len: int = 1024
    max_loras: int = 8
    max_cpu_loras: int = 32
    max_lora_rank: int = 64
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 64
    dtype: str = "auto"
    seed: int = 0
    device: Device = "auto"
    # CPU only: tunefleet's packed LoRA linear instead of vLLM's per-token gathers
    # (services/inference/engine/cpu_lora.py); ignored on GPU.
    fast_cpu_lora: bool = True


@dataclass(frozen=True)
class AdapterHandle:
    """One LoRA adapter as the engine knows it.

    ``ref`` is the fleet-wide name (e.g. ``tenant/name@version``); ``int_id`` must be unique
    per adapter content for the engine's lifetime (> 0); ``path`` is a local PEFT directory.
    """

    ref: str
    int_id: int
    path: Path


@dataclass(kw_only=True)
class GenerationRequest:
    """A completion request. Exactly one of ``prompt`` / ``prompt_token_ids`` is given.

    ``choices`` and ``json_schema`` constrain the output (structured decoding); at most one.
    ``temperature == 0`` means greedy decoding. ``ignore_eos`` keeps generating past the
    end-of-sequence token (benchmarks: every request does ``max_tokens`` of work);
    ``min_tokens`` suppresses EOS and stop strings until that many tokens are out.
    """

    request_id: str
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    n: int = 1
    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    adapter: AdapterHandle | None = None
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise InvalidGenerationRequest(
                "give exactly one of prompt and prompt_token_ids", param="prompt"
            )
        if self.max_tokens < 1:
            raise InvalidGenerationRequest("max_tokens must be >= 1", param="max_tokens")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidGenerationRequest(
                "min_tokens must be between 0 and max_tokens", param="min_tokens"
            )
        if self.n < 1:
            raise InvalidGenerationRequest("n must be >= 1", param="n")
        if self.temperature < 0:
            raise InvalidGenerationRequest("temperature must be >= 0", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidGenerationRequest("top_p must be in (0, 1]", param="top_p")
        if self.choices is not None and self.json_schema is not None:
            raise InvalidGenerationRequest("choices and json_schema are exclusive", param="choices")
        if self.choices is not None and not self.choices:
            raise InvalidGenerationRequest("choices must not be empty", param="choices")


@dataclass(frozen=True)
class GenerationChunk:
    """One streamed delta of one choice.

    ``completion_tokens`` counts this choice's generated tokens so far (cumulative);
    ``first_token`` is true on the first chunk of each choice (time-to-first-token);
    ``finish_reason`` is set on the choice's last chunk (``stop``, ``length``, ``abort``).
    """

    index: int
    text_delta: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    first_token: bool


@dataclass
class ChoiceResult:
    """A whole choice, aggregated from its chunks."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class GenerationResult:
    """A whole (non-streamed) generation: every choice plus token usage."""

    choices: list[ChoiceResult] = field(default_factory=list)
    prompt_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def text(self) -> str:
        """The text of choice 0 (convenience for n == 1)."""
        return self.choices[0].text if self.choices else ""


async def collect(chunks: AsyncIterable[GenerationChunk]) -> GenerationResult:
    """Aggregate a chunk stream into a :class:`GenerationResult` (choices sorted by index)."""
    by_index: dict[int, ChoiceResult] = {}
    prompt_tokens = 0
    async for chunk in chunks:
        choice = by_index.setdefault(chunk.index, ChoiceResult(index=chunk.index))
        choice.text += chunk.text_delta
        choice.completion_tokens = max(choice.completion_tokens, chunk.completion_tokens)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
        prompt_tokens = max(prompt_tokens, chunk.prompt_tokens)
    return GenerationResult(
        choices=[by_index[i] for i in sorted(by_index)], prompt_tokens=prompt_tokens
    )


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class InferenceEngine(Protocol):
    """What the inference service needs from an engine.

    Lifecycle: ``await start()`` once, then any number of concurrent ``generate`` calls and
    adapter loads/unloads, then ``await shutdown()`` (idempotent; leaves no child process).
    """

    config: EngineConfig

    async def start(self) -> None:
        """Start the engine (loads the base model; may take tens of seconds on CPU)."""
        ...

    def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks for ``req``; closing the iterator early aborts the request.

        Raises :class:`AdapterLoadError`, :class:`InvalidGenerationRequest`,
        :class:`EngineOverloadedError` or :class:`EngineDeadError`.
        """
        ...

    def new_adapter_id(self) -> int:
        """An adapter int id unique for this engine's lifetime (``AdapterHandle.int_id``)."""
        ...

    async def add_adapter(self, handle: AdapterHandle) -> None:
        """Load an adapter so requests may use it; raises :class:`AdapterLoadError`."""
        ...

    async def remove_adapter(self, handle: AdapterHandle) -> None:
        """Unload an adapter (no error when it is not loaded)."""
        ...

    async def abort(self, request_id: str) -> None:
        """Abort a running request (no error when it has finished)."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and every process it started."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The base model's Hugging Face tokenizer (chat template, token counting)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Best-effort load figures: ``running``, ``waiting``, ``kv_cache_usage``, ..."""
        ...

    def is_dead(self) -> bool:
        """True when the engine can no longer serve (its core died or it was shut down)."""
        ...
