"""Registry settings (env prefix ``TUNEFLEET_REGISTRY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared import db
from shared.settings import ServiceSettings


class RegistrySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEFLEET_REGISTRY_", extra="ignore", populate_by_name=True
    )

    port: int = Field(default=8001, ge=1, le=65535)
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_REGISTRY_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; default SQLite at $TUNEFLEET_HOME/registry/registry.db",
    )
    artifact_dir: Path | None = Field(default=None, description="default $TUNEFLEET_HOME/artifacts")
    max_lora_rank: int = Field(default=64, ge=1, le=1024)
    max_archive_bytes: int = Field(default=256 * 2**20, ge=1024)
    max_archive_members: int = Field(default=64, ge=2)
    max_uncompressed_bytes: int = Field(default=1 * 2**30, ge=1024)
    max_model_archive_bytes: int = Field(
        default=16 * 2**30, ge=1024, description="an uploaded base model's archive (merged model)"
    )
    max_model_uncompressed_bytes: int = Field(default=32 * 2**30, ge=1024)
    seed_models_dir: Path | None = Field(
        default=None,
        description="catalog seeds: each subdir with config.json becomes a base "
        "model; default $TUNEFLEET_HOME/models",
    )
    notify_urls: list[str] = Field(
        default_factory=list,
        description="internal receivers of every event, signed with the internal token; "
        "optional: replicas and gateways follow the change feed (/v1/internal/events)",
    )
    feed_poll_s: float = Field(
        default=0.1, gt=0, le=5, description="how often a waiting feed request looks again"
    )
    webhook_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="deadline of one delivery attempt, all of it (connect, send, the answer's "
        "headers); the answer's body is never read",
    )
    webhook_lane_concurrency: int = Field(
        default=4,
        ge=1,
        description="deliveries in flight per tenant; each tenant has its own lane, the fleet's "
        "own receivers (notify_urls) another, so a slow receiver delays only its tenant",
    )
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_poll_s: float = Field(default=0.5, gt=0)
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="host names, addresses or CIDRs tenant webhooks may reach although they "
        "are private/loopback/link-local (SSRF guard, shared.netguard); JSON list in the env",
    )

    def db_url(self) -> str:
        return db.db_url(self.database_url, self.home / "registry" / "registry.db")

    def artifacts_root(self) -> Path:
        return self.artifact_dir or self.home / "artifacts"

    def models_root(self) -> Path:
        return self.seed_models_dir or self.home / "models"
