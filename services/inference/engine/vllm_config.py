"""vLLM engine configuration and the small helpers around it: the device, the
``AsyncEngineArgs`` for an :class:`EngineConfig`, the stats recorder hooked into ``AsyncLLM``,
and how vLLM's ``add_lora`` refusals are read (adapter checks: :mod:`shared.adapters`)."""

from __future__ import annotations

from typing import Any

from vllm.config.structured_outputs import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.v1.metrics.loggers import StatLoggerBase

from services.inference.engine.base import EngineConfig, EngineError

GIB = 1 << 30
# vLLM accepts only these values for max_lora_rank; a configured limit is rounded up to one
# of them and the exact limit is enforced by VllmEngine itself.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SHUTDOWN_GRACE_S = 15.0


def resolve_device(requested: str) -> str:
    """``"cuda"`` or ``"cpu"`` for a configured device (``auto``: CUDA when available)."""
    import torch

    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if cuda else "cpu"
    if requested == "cuda" and not cuda:
        raise EngineError("device 'cuda' requested but torch sees no CUDA device")
    return requested


def engine_args(config: EngineConfig, device: str) -> AsyncEngineArgs:
    """The ``AsyncEngineArgs`` for ``config`` on ``device``."""
    rank = next((r for r in _VLLM_LORA_RANKS if r >= config.max_lora_rank), None)
    if rank is None:
        raise EngineError(f"max_lora_rank {config.max_lora_rank} exceeds vLLM's maximum")
    return AsyncEngineArgs(
        model=str(config.model_path),
        tokenizer=str(config.model_path),
        served_model_name=config.model_id,
        dtype=config.dtype,  # type: ignore[arg-type]  # validated by vLLM
        seed=config.seed,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        kv_cache_memory_bytes=int(config.kv_cache_gib * GIB),
        enable_lora=True,
        max_loras=config.max_loras,
        max_cpu_loras=max(config.max_cpu_loras, config.max_loras),
        max_lora_rank=rank,  # type: ignore[arg-type]
        # Eager mode on CPU: no torch.compile / inductor warm-up (LoRA disables it anyway).
        enforce_eager=device == "cpu",
        # No periodic stats log lines; the recorder below still receives scheduler stats.
        disable_log_stats=True,
        enable_log_requests=False,
        # Compact JSON for json_schema requests: small models otherwise loop on whitespace
        # (vLLM 0.32 ignores the per-request flag; it is engine-wide, xgrammar/guidance only).
        structured_outputs_config=StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True
        ),
    )


class StatsRecorder(StatLoggerBase):
    """Keeps the latest ``SchedulerStats`` in a dict shared with the engine."""

    def __init__(
        self, vllm_config: Any, engine_index: int = 0, *, sink: dict[str, Any] | None = None
    ) -> None:
        self.sink = sink if sink is not None else {}

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if scheduler_stats is not None:
            self.sink["scheduler"] = scheduler_stats

    def log_engine_initialized(self) -> None:
        pass


def refusal_reason(message: str) -> str:
    """A short reason code for vLLM's add_lora error text (for metrics/logs only)."""
    text = message.lower()
    if "no adapter found" in text or "not found" in text:
        return "not_found"
    if "max_lora_rank" in text:
        return "rank_too_large"
    if "deserializ" in text or "header" in text or "safetensor" in text:
        return "corrupt"
    return "rejected"
