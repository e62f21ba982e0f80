"""Rows → wire models (kept apart so routes stay thin and domain stays HTTP-free)."""

from __future__ import annotations

from services.registry.storage.tables import (
    AdapterRow,
    AliasMoveRow,
    AliasRow,
    BaseModelRow,
    DeliveryRow,
    VersionRow,
    WebhookRow,
)
from shared.modelref import version_ref
from shared.schemas.registry import (
    AdapterOut,
    AdapterVersionOut,
    AliasMoveOut,
    AliasOut,
    BaseModelOut,
    Lineage,
    WebhookDeliveryOut,
    WebhookOut,
)


def base_model_out(row: BaseModelRow) -> BaseModelOut:
    return BaseModelOut(
        id=row.id,
        path=row.path,
        hub_id=row.hub_id,
        revision=row.revision,
        weights_sha256=row.weights_sha256,
        architecture=row.architecture,
        max_context=row.max_context,
        has_chat_template=row.has_chat_template,
        owned_by=row.owner,
        created=row.created_at,
        artifact_sha256=row.artifact_sha256,
        size_bytes=row.size_bytes,
    )


def adapter_out(row: AdapterRow) -> AdapterOut:
    return AdapterOut(
        id=row.id,
        name=row.name,
        owned_by=row.tenant,
        description=row.description,
        created=row.created_at,
        latest_version=row.versions[-1].number if row.versions else None,
        aliases={a.name: a.version for a in sorted(row.aliases, key=lambda a: a.name)},
    )


def version_out(tenant: str, name: str, row: VersionRow) -> AdapterVersionOut:
    return AdapterVersionOut(
        adapter=name,
        version=row.number,
        ref=version_ref(tenant, name, row.number),
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        base_model=row.base_model,
        rank=row.rank,
        alpha=row.alpha,
        target_modules=list(row.target_modules),
        description=row.description,
        lineage=Lineage.model_validate(row.lineage),
        labels=dict(row.labels),
        created_by=row.created_by,
        created=row.created_at,
    )


def alias_out(tenant: str, name: str, row: AliasRow, previous: int | None = None) -> AliasOut:
    return AliasOut(
        adapter=name,
        alias=row.name,
        version=row.version,
        previous_version=previous,
        ref=version_ref(tenant, name, row.version),
        updated=row.updated_at,
    )


def move_out(row: AliasMoveRow) -> AliasMoveOut:
    return AliasMoveOut(
        id=row.id,
        adapter=row.adapter,
        alias=row.alias,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        request_id=row.request_id,
        created=row.created_at,
    )


def webhook_out(row: WebhookRow, *, with_secret: bool = False) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=list(row.events),
        created=row.created_at,
        secret=row.secret if with_secret else None,
    )


def delivery_out(row: DeliveryRow) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        url=row.url,
        event=row.event,
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created=row.created_at,
        delivered=row.delivered_at,
    )
