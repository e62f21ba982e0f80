"""Webhook subscriptions and their delivery records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.registry.deps import State
from services.registry.domain import webhooks
from services.registry.domain.views import delivery_out, webhook_out
from shared.auth import TenantId
from shared.netguard import check_outbound_url
from shared.schemas.common import DEFAULT_LIMIT, MAX_LIMIT, ListResponse
from shared.schemas.registry import WebhookCreate, WebhookDeliveryOut, WebhookOut

router = APIRouter(tags=["webhooks"])


@router.post("/v1/webhooks", response_model=WebhookOut, status_code=201)
def create_webhook(body: WebhookCreate, st: State, tenant: TenantId) -> WebhookOut:
    # Sync handler (thread pool): the guard's DNS lookup may block.
    check_outbound_url(body.url, st.settings.webhook_allow, param="url")
    with st.db.session(write=True) as s:
        return webhook_out(
            webhooks.create_webhook(s, tenant, body.url, list(body.events)), with_secret=True
        )


@router.get("/v1/webhooks", response_model=ListResponse[WebhookOut])
def list_webhooks(st: State, tenant: TenantId) -> ListResponse[WebhookOut]:
    with st.db.session() as s:
        return ListResponse(data=[webhook_out(r) for r in webhooks.list_webhooks(s, tenant)])


@router.delete("/v1/webhooks/{webhook_id}")
def delete_webhook(webhook_id: str, st: State, tenant: TenantId) -> dict[str, object]:
    with st.db.session(write=True) as s:
        s.delete(webhooks.get_webhook(s, tenant, webhook_id))
    return {"id": webhook_id, "object": "webhook", "deleted": True}


@router.get("/v1/webhooks/{webhook_id}/deliveries", response_model=ListResponse[WebhookDeliveryOut])
def deliveries(
    webhook_id: str,
    st: State,
    tenant: TenantId,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> ListResponse[WebhookDeliveryOut]:
    with st.db.session() as s:
        rows = webhooks.list_deliveries(s, tenant, webhook_id, limit)
        return ListResponse(data=[delivery_out(r) for r in rows])
