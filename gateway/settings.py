"""Gateway settings (env prefix ``TUNEFLEET_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared import db
from shared.settings import ServiceSettings
from shared.uploads import DEFAULT_MAX_UPLOAD_BYTES

ONE_YEAR_S = 365 * 24 * 3600


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEFLEET_GATEWAY_", extra="ignore", populate_by_name=True
    )

    port: int = Field(default=8000, ge=1, le=65535)
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_GATEWAY_DATABASE_URL", "DATABASE_URL"),
    )
    registry_url: str = "http://127.0.0.1:8001"
    inference_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8003"])
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_ADMIN_KEY"),
        description="bootstrap admin key; generated into $TUNEFLEET_HOME/admin_key if unset",
    )
    key_hash_secret: SecretStr | None = Field(
        default=None,
        description="HMAC key of API-key hashes (never the internal token); unset: "
        "$TUNEFLEET_HOME/key_hash_secret. Gateways sharing a database must share it",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the audit chain (never in the database); unset: derived from "
        "the key-hash secret. Gateways sharing a database must share it",
    )
    audit_retired_keys: list[SecretStr] = Field(
        default_factory=list,
        description="earlier audit keys (JSON list): rows they signed still verify",
    )
    training_url: str = "http://127.0.0.1:8002"
    # Defaults for tenants and keys without their own row in /admin/quotas.
    default_rpm: int = Field(default=600, ge=1)
    default_tpm: int = Field(default=200_000, ge=1)
    default_max_streams: int = Field(default=32, ge=1)
    default_max_adapters: int = Field(default=50, ge=1)
    default_max_jobs: int = Field(default=2, ge=1)
    default_max_tokens_reserved: int = Field(
        default=256,
        ge=1,
        description="tokens per minute a generation without max_tokens reserves for its answer "
        "(the replicas' default cap); settled to the real usage when it ends",
    )
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024, description="JSON request bodies")
    max_upload_bytes: int = Field(
        default=512 * 2**20, ge=1024, description="multipart uploads (adapter archives)"
    )
    max_training_file_bytes: int = Field(
        default=DEFAULT_MAX_UPLOAD_BYTES,
        ge=1024,
        description="POST /v1/files only (training data, streamed through to the training "
        "service, which has its own cap of the same default); 413 naming the limit above it",
    )
    pii_max_chars: int = Field(
        default=64 * 1024,
        ge=1024,
        description="text one request may carry while its tenant's PII guard is on (413 above)",
    )
    pii_workers: int = Field(default=2, ge=1, description="PII scans running at once")
    upstream_timeout_s: float = Field(default=120.0, gt=0, description="each downstream call")
    follow_events: bool = Field(
        default=True,
        description="follow the registry's change feed (alias moves, deletions reach every "
        "process); off only where a test drives the pushed events alone",
    )
    events_wait_s: float = Field(default=10.0, gt=0, le=60, description="feed long-poll wait")
    resolve_ttl_s: float = Field(
        default=5.0, ge=0, description="model resolution cache; alias webhooks drop it at once"
    )
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    idempotency_purge_s: float = Field(
        default=600, ge=0.1, description="how often expired idempotency records are deleted"
    )

    tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain): the gateway serves HTTPS itself (exposed without "
        "an ingress that terminates TLS); needs TUNEFLEET_GATEWAY_TLS_KEY_FILE",
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert")
    hsts_max_age_s: int | None = Field(
        default=None,
        ge=0,
        description="Strict-Transport-Security max-age sent on every answer; unset: one year "
        "when the gateway serves TLS itself, none otherwise; 0: never",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "TUNEFLEET_GATEWAY_TLS_CERT_FILE and TUNEFLEET_GATEWAY_TLS_KEY_FILE go together"
            )
        return self

    def tls_files(self) -> tuple[Path, Path] | None:
        """(certificate, key) when the gateway terminates TLS itself, else None."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return self.tls_cert_file, self.tls_key_file

    def hsts_header(self) -> str | None:
        """The Strict-Transport-Security value, or None (browsers ignore it over plain HTTP,
        so behind a TLS-terminating ingress the gateway may send it and the ingress relays it)."""
        max_age = self.hsts_max_age_s
        if max_age is None:
            max_age = ONE_YEAR_S if self.tls_files() else 0
        return f"max-age={max_age}; includeSubDomains" if max_age else None

    state_store: Literal["auto", "memory", "database"] = Field(
        default="auto",
        description="where quota buckets, open streams and feedback predictions live: memory "
        "(one gateway) or the gateway database (shared by every gateway on it); auto: the "
        "database on Postgres, memory on SQLite",
    )
    stream_lease_s: float = Field(
        default=30.0,
        ge=3,
        description="state_store=database: an open stream's lease, renewed every third of it; "
        "a crashed gateway's streams stop counting after this",
    )
    feedback_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="state_store=database: how long a prediction can receive feedback",
    )

    def db_url(self) -> str:
        return db.db_url(self.database_url, self.home / "gateway" / "gateway.db")

    def admin_key_file(self) -> Path:
        return self.home / "admin_key"

    def shared_state(self) -> bool:
        """Whether quota and feedback state lives in the database (``state_store``)."""
        if self.state_store == "auto":
            return db.normalize_url(self.db_url()).startswith("postgresql")
        return self.state_store == "database"
