"""Inference settings (env prefix ``TUNEFLEET_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.inference.engine.base import Device, EngineConfig
from shared.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEFLEET_INFERENCE_", extra="ignore", populate_by_name=True
    )

    port: int = Field(default=8003, ge=1, le=65535)
    replica_id: str = Field(default="inference-0", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    base_model: str = "tiny-llama"
    model_dir: Path | None = Field(
        default=None, description="default $TUNEFLEET_HOME/models/<base>"
    )
    base_source: Literal["dir", "registry"] = Field(
        default="dir",
        description="dir: serve model_dir; registry: download base_model's archive (an "
        "uploaded merged model) from the registry, verify and unpack it under this replica",
    )
    base_owner: str = Field(
        default="system",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="the tenant whose catalog holds base_model (registry source)",
    )
    registry_url: str = "http://127.0.0.1:8001"
    max_model_len: int = Field(default=1024, ge=32)
    max_loras: int = Field(default=8, ge=1, description="adapters batched together at once")
    max_cpu_loras: int = Field(default=32, ge=1, description="adapters kept loaded (LRU)")
    max_lora_rank: int = Field(default=64, ge=1)
    kv_cache_gib: float = Field(default=1.0, gt=0)
    max_num_seqs: int = Field(default=64, ge=1)
    max_waiting: int = Field(default=512, ge=1, description="requests queued before 503")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda)$")
    fast_cpu_lora: bool = Field(
        default=True,
        description="CPU: tunefleet's packed multi-LoRA linear instead of vLLM's (no-op on GPU)",
    )
    follow_events: bool = Field(
        default=True,
        description="follow the registry's change feed (alias moves, deletions reach every "
        "process); off only where a test drives the pushed events alone",
    )
    events_wait_s: float = Field(default=10.0, gt=0, le=60, description="feed long-poll wait")
    drain_timeout_s: float = Field(default=30.0, ge=0)
    default_max_tokens: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _loras(self) -> InferenceSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        return self

    def base_dir(self) -> Path:
        return self.model_dir or self.home / "models" / self.base_model

    def bases_dir(self) -> Path:
        return self.home / "inference" / self.replica_id / "bases"

    def adapter_dir(self) -> Path:
        return self.home / "inference" / self.replica_id / "adapters"


def engine_config(settings: InferenceSettings) -> EngineConfig:
    """The engine every inference replica starts from its settings: ``python -m
    services.inference`` and the Ray Serve deployment (deploy/ray-serve) both call this, so a
    new engine setting cannot reach one and miss the other."""
    device: Device = settings.device  # type: ignore[assignment]  # validated by the pattern
    return EngineConfig(
        model_path=settings.base_dir(),
        model_id=settings.base_model,
        max_model_len=settings.max_model_len,
        max_loras=settings.max_loras,
        max_cpu_loras=settings.max_cpu_loras,
        max_lora_rank=settings.max_lora_rank,
        kv_cache_gib=settings.kv_cache_gib,
        max_num_seqs=settings.max_num_seqs,
        device=device,
        fast_cpu_lora=settings.fast_cpu_lora,
    )
