"""Wire models of the gateway's administration API (``/admin``: tenants, API keys, usage,
audit, quotas) — API.md: administration."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from shared.auth import TENANT_RE
from shared.errors import InvalidRequest

Role = Literal["app", "integrator", "sre", "admin"]
PiiMode = Literal["off", "mask", "block"]


class TenantCreate(BaseModel):
    id: str = Field(pattern=TENANT_RE.pattern)
    name: str = Field(default="", max_length=200)


class TenantUpdate(BaseModel):
    pii_mode: str | None = Field(default=None, pattern=r"^(off|mask|block)$")
    rpm: int | None = Field(default=None, ge=1)


class TenantOut(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    pii_mode: str
    rpm: int | None
    created: int


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=TENANT_RE.pattern)
    role: str = Field(pattern=r"^(app|integrator|sre|admin)$")
    name: str = Field(default="", max_length=200)
    expires_in_s: int | None = Field(default=None, ge=60)


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    role: str
    name: str
    prefix: str
    expires_at: int | None
    revoked: bool
    created: int


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself, shown this once; only its hash is stored")


class KeyRevoked(KeyOut):
    deleted: Literal[True] = True


class UsageOut(BaseModel):
    object: Literal["usage"] = "usage"
    tenant: str
    key_id: str
    model: str
    day: str = Field(description="UTC day, YYYY-MM-DD")
    requests: int
    prompt_tokens: int
    completion_tokens: int


class AuditEntry(BaseModel):
    id: int
    object: Literal["audit.entry"] = "audit.entry"
    at: int
    tenant: str | None
    actor: str
    action: str
    target: str
    outcome: str
    request_id: str | None
    details: dict[str, Any]
    hash: str


class AuditVerification(BaseModel):
    object: Literal["audit.verification"] = "audit.verification"
    valid: bool
    checked: int
    first_bad_id: int | None
    reason: str | None = None  # why it is not valid
    head_seq: int | None = None  # the row the signed head names
    head_hash: str | None = None  # and its hash: record both outside to detect a rollback


# --- quotas ------------------------------------------------------------------------------

Limit = Annotated[int | None, Field(default=None, ge=1)]


class QuotaPut(BaseModel):
    """Exactly one of ``tenant``/``key_id``; a limit left out or null = the default."""

    tenant: str | None = Field(default=None, pattern=TENANT_RE.pattern)
    key_id: str | None = Field(default=None, max_length=40)
    rpm: Limit = None
    tpm: Limit = None
    max_streams: Limit = None
    max_adapters: Limit = None
    max_jobs: Limit = None

    @model_validator(mode="after")
    def _one_subject(self) -> QuotaPut:
        if (self.tenant is None) == (self.key_id is None):
            raise InvalidRequest("give exactly one of tenant or key_id", param="tenant")
        return self


class QuotaLimits(BaseModel):
    """Limits in force (defaults filled in)."""

    rpm: int
    tpm: int
    max_streams: int
    max_adapters: int
    max_jobs: int


class _QuotaOverride(BaseModel):
    """The limits an override sets; null = not set here."""

    object: Literal["quota"] = "quota"
    subject: str
    rpm: int | None
    tpm: int | None
    max_streams: int | None
    max_adapters: int | None
    max_jobs: int | None


class KeyQuotaOut(_QuotaOverride):
    """A key's override; null limits fall back to the tenant's."""

    scope: Literal["key"] = "key"


class TenantQuotaOut(_QuotaOverride):
    """A tenant's override, with the limits that result (``effective``)."""

    scope: Literal["tenant"] = "tenant"
    effective: QuotaLimits


QuotaOut = Annotated[TenantQuotaOut | KeyQuotaOut, Field(discriminator="scope")]


class QuotaList(BaseModel):
    object: Literal["list"] = "list"
    data: list[QuotaOut]
    has_more: bool = False
    defaults: QuotaLimits
