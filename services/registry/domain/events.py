"""Events announced to webhooks and the change feed, written in the caller's transaction.

Writing the delivery rows in the same unit of work as the change means an alias move is never
committed without its notification, and a crash between the two cannot lose one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.domain.feed import record_event
from services.registry.storage.tables import DeliveryRow, WebhookRow

SYSTEM = None  # webhook_id of deliveries to the fleet's own receivers (notify_urls)


def enqueue_event(
    s: Session, tenant: str, event: str, data: dict[str, Any], system_urls: list[str]
) -> int:
    """Record the event in the change feed; queue one delivery per subscribed webhook of the
    tenant plus one per system URL."""
    payload = {
        "id": "evt_" + uuid.uuid4().hex[:24],
        "type": event,
        "created": int(time.time()),
        "tenant": tenant,
        "data": data,
    }
    record_event(s, payload)
    hooks = s.scalars(select(WebhookRow).where(WebhookRow.tenant == tenant)).all()
    targets: list[tuple[str | None, str]] = [(h.id, h.url) for h in hooks if event in h.events]
    targets += [(SYSTEM, url) for url in system_urls]
    for webhook_id, url in targets:
        s.add(
            DeliveryRow(tenant=tenant, webhook_id=webhook_id, url=url, event=event, payload=payload)
        )
    return len(targets)
