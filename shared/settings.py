"""Settings base shared by every service.

Each service defines one subclass with its own env prefix (``TUNEFLEET_REGISTRY_…``); the
fleet-wide values (``TUNEFLEET_HOME``, ``TUNEFLEET_INTERNAL_TOKEN``, ``DATABASE_URL``) are read
without the prefix. ``load_settings`` validates at start and fails fast naming the variable.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServiceSettings")

TOKEN_FILE = "internal_token"


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set ``model_config`` with their env prefix.

    Fleet-wide fields use ``validation_alias`` with the exact variable name only: a lowercase
    alias such as ``"home"`` would also match the ``HOME`` variable (names are
    case-insensitive). Code passes them by field name (``populate_by_name``).
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path("./var"), validation_alias=AliasChoices("TUNEFLEET_HOME"))
    internal_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEFLEET_INTERNAL_TOKEN"),
        description="Bearer token between services; generated under TUNEFLEET_HOME if unset.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_json: bool = True
    slow_callback_ms: float | None = Field(
        default=None,
        gt=0,
        description="asyncio debug mode: log every event-loop callback that runs longer "
        "(finds blocking calls on the loop; costs throughput, for tests and diagnosis)",
    )
    # Tracing (shared.tracing): the standard OpenTelemetry variables, read without a prefix.
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP collector base URL; traces go to <url>/v1/traces. Unset: off.",
    )
    otlp_traces_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        description="Full OTLP/HTTP traces URL; overrides OTEL_EXPORTER_OTLP_ENDPOINT.",
    )
    otel_sdk_disabled: bool = Field(
        default=False, validation_alias=AliasChoices("OTEL_SDK_DISABLED")
    )

    def resolved_token(self) -> str:
        """The internal token: from the environment, else a 0600 file shared by the fleet."""
        if self.internal_token is not None and self.internal_token.get_secret_value():
            return self.internal_token.get_secret_value()
        return ensure_token_file(self.home / TOKEN_FILE)

    def traces_endpoint(self) -> str | None:
        """Where spans are exported (OTLP/HTTP), or None: tracing is off."""
        if self.otel_sdk_disabled:
            return None
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_endpoint:
            return self.otlp_endpoint.rstrip("/") + "/v1/traces"
        return None


def ensure_token_file(path: Path) -> str:
    """Read the token file, creating it (mode 0600, exclusive) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` (used in error messages)."""
    info = settings_cls.model_fields.get(field)
    alias = getattr(info, "validation_alias", None) if info else None
    if isinstance(alias, AliasChoices):
        names = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
        if names:
            return names[0]
    prefix = settings_cls.model_config.get("env_prefix", "") or ""
    return f"{prefix}{field}".upper()


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment; on error print which variable is wrong and exit 2."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"  {env_name(settings_cls, field)}: {err['msg']}")
        print(
            f"invalid configuration for {settings_cls.__name__}:\n" + "\n".join(lines),
            file=sys.stderr,
        )
        raise SystemExit(2) from None
