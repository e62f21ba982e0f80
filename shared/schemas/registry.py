"""Wire models of the adapter registry (API.md: adapter registry)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.modelref import ALIAS_RE, NAME_RE

WebhookEvent = Literal[
    "alias.moved", "alias.deleted", "version.created", "adapter.deleted", "job.succeeded"
]


class BaseModelMetadata(BaseModel):
    """The form field sent with a model archive (``POST /v1/base-models``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_RE.pattern, description="catalog id, e.g. 'merged-1a2b3c'")
    hub_id: str | None = Field(default=None, max_length=200)
    revision: str | None = Field(default=None, max_length=64)
    max_context: int | None = Field(default=None, ge=16)


class BaseModelPublic(BaseModel):
    """A catalog entry as the gateway shows it: no registry-host directory (``path``)."""

    id: str
    object: Literal["base_model"] = "base_model"
    hub_id: str | None
    revision: str | None
    weights_sha256: str | None
    architecture: str
    max_context: int
    has_chat_template: bool
    owned_by: str
    created: int
    artifact_sha256: str | None = Field(
        default=None, description="sha256 of the model archive replicas download (uploaded)"
    )
    size_bytes: int | None = None


class BaseModelOut(BaseModelPublic):
    """A catalog entry with a seeded model's directory on the registry host (internal
    callers on that host; ``None`` for an uploaded model, which travels as its archive)."""

    path: str | None = None


class AdapterCreate(BaseModel):
    name: str = Field(pattern=NAME_RE.pattern)
    description: str = Field(default="", max_length=2000)


class AdapterOut(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    owned_by: str
    description: str
    created: int
    latest_version: int | None
    aliases: dict[str, int]


class Lineage(BaseModel):
    job_id: str | None = None
    dataset_id: str | None = None
    training_file: str | None = None
    base_model: str | None = None
    method: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


class VersionMetadata(BaseModel):
    """The ``metadata`` form field of a version push (JSON)."""

    base_model: str = Field(description="catalog id the adapter was trained on")
    description: str = Field(default="", max_length=2000)
    lineage: Lineage = Field(default_factory=Lineage)
    labels: dict[str, str] = Field(default_factory=dict)


class AdapterVersionOut(BaseModel):
    object: Literal["adapter.version"] = "adapter.version"
    adapter: str
    version: int
    ref: str
    sha256: str
    size_bytes: int
    base_model: str
    rank: int
    alpha: float
    target_modules: list[str]
    description: str
    lineage: Lineage
    labels: dict[str, str]
    created_by: str
    created: int


class AliasSet(BaseModel):
    version: int = Field(ge=1)


class AliasOut(BaseModel):
    object: Literal["adapter.alias"] = "adapter.alias"
    adapter: str
    alias: str
    version: int
    previous_version: int | None = None
    ref: str
    updated: int


class AliasMoveOut(BaseModel):
    object: Literal["adapter.alias_move"] = "adapter.alias_move"
    id: int
    adapter: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    request_id: str | None
    created: int


class Resolution(BaseModel):
    """A model string turned into what can be served. ``ref`` is immutable."""

    object: Literal["model.resolution"] = "model.resolution"
    model: str
    kind: Literal["base", "adapter"]
    base_model: str
    ref: str
    tenant: str | None = None
    adapter: str | None = None
    version: int | None = None
    alias: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    rank: int | None = None
    target_modules: list[str] | None = None
    archive_path: str | None = None


class WebhookCreate(BaseModel):
    url: str = Field(pattern=r"^https?://", max_length=2000)
    events: list[WebhookEvent] = Field(min_length=1)


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    created: int
    secret: str | None = Field(default=None, description="shown once, at creation")


class WebhookDeliveryOut(BaseModel):
    id: int
    object: Literal["webhook.delivery"] = "webhook.delivery"
    webhook_id: str | None
    url: str
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created: int
    delivered: int | None


class EventEnvelope(BaseModel):
    """The body of every webhook delivery."""

    id: str
    type: str
    created: int
    tenant: str
    data: dict[str, Any]


ALIAS_PATTERN = ALIAS_RE.pattern


class LineageHit(BaseModel):
    """An adapter version trained on some of the asked-for ids (``GET /v1/lineage``)."""

    object: str = "adapter.lineage_match"
    tenant: str
    version: AdapterVersionOut
    matched: list[str]


class LineageList(BaseModel):
    object: str = "list"
    data: list[LineageHit]
    has_more: bool = False


class RegistryEvent(BaseModel):
    """One change in the registry's feed (``GET /v1/internal/events``): what webhooks carry,
    plus its place in the feed (``seq``, increasing, never reused)."""

    seq: int
    id: str
    type: str
    created: int
    tenant: str
    data: dict[str, Any] = Field(default_factory=dict)


class EventPage(BaseModel):
    """Events after the follower's ``after``, oldest first. ``last_seq``: where to continue
    from. ``reset``: events the follower has not seen are gone (pruned, or the feed began
    again): it must drop what it cached and continue from ``last_seq``. ``after`` omitted:
    no events, ``last_seq`` is the head (start following from now)."""

    object: Literal["event_page"] = "event_page"
    data: list[RegistryEvent]
    last_seq: int
    reset: bool = False
    more: bool = False
