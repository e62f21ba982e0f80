"""Webhook subscriptions and their delivery records.

The URL is checked by the SSRF guard before it is stored; ``dispatch.WebhookDispatcher``
delivers the outbox (and checks the URL again before each attempt).
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.storage.tables import DeliveryRow, WebhookRow
from shared.errors import NotFound


def create_webhook(s: Session, tenant: str, url: str, events: list[str]) -> WebhookRow:
    """Store a subscription; the caller has checked ``url`` with the SSRF guard."""
    row = WebhookRow(
        id="wh-" + secrets.token_hex(10),
        tenant=tenant,
        url=url,
        events=sorted(set(events)),
        secret="whsec_" + secrets.token_urlsafe(24),
    )
    s.add(row)
    s.flush()
    return row


def list_webhooks(s: Session, tenant: str) -> list[WebhookRow]:
    return list(
        s.scalars(
            select(WebhookRow)
            .where(WebhookRow.tenant == tenant)
            .order_by(WebhookRow.created_at, WebhookRow.id)
        )
    )


def get_webhook(s: Session, tenant: str, webhook_id: str) -> WebhookRow:
    row = s.get(WebhookRow, webhook_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"webhook {webhook_id!r} not found", param="webhook_id")
    return row


def list_deliveries(s: Session, tenant: str, webhook_id: str, limit: int) -> list[DeliveryRow]:
    get_webhook(s, tenant, webhook_id)
    return list(
        s.scalars(
            select(DeliveryRow)
            .where(DeliveryRow.webhook_id == webhook_id)
            .order_by(DeliveryRow.id.desc())
            .limit(limit)
        )
    )
