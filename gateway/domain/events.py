"""Registry events as the gateway applies them, pushed (``/internal/registry-events``) or
followed (``shared.events_follower``): alias moves and deletions drop the cached resolutions
of that adapter at once, so routing follows a hot swap without waiting for the TTL."""

from __future__ import annotations

import logging
from typing import Any

from gateway.domain.resolver import ModelResolver

log = logging.getLogger(__name__)

INVALIDATING = ("alias.moved", "alias.deleted", "adapter.deleted")


def apply_event(resolver: ModelResolver, event: dict[str, Any]) -> int:
    """Apply one event; the number of cached resolutions dropped."""
    data = event.get("data") or {}
    tenant = str(event.get("tenant") or "")
    if event.get("type") not in INVALIDATING or not tenant:
        return 0
    dropped = resolver.invalidate(tenant, data.get("adapter"))
    log.info("alias event", extra={"adapter": data.get("adapter"), "dropped": dropped})
    return dropped
