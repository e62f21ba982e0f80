"""Registry events (webhook, signed with the internal token): alias moves drop the gateway's
cached resolutions at once, so routing follows a hot swap without waiting for the TTL."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request

from gateway.deps import State
from shared import signing
from shared.errors import InvalidRequest, Unauthorized

router = APIRouter(tags=["events"], include_in_schema=False)
log = logging.getLogger(__name__)


@router.post("/internal/registry-events")
async def registry_event(request: Request, st: State) -> dict[str, Any]:
    body = await request.body()
    if not signing.verify(st.internal_token, body, request.headers.get(signing.HEADER)):
        raise Unauthorized("bad or stale event signature", code="invalid_signature")
    try:
        event = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"event is not JSON: {exc}") from exc
    data = event.get("data") or {}
    tenant = str(event.get("tenant") or "")
    dropped = 0
    if event.get("type") in ("alias.moved", "alias.deleted", "adapter.deleted") and tenant:
        dropped = st.resolver.invalidate(tenant, data.get("adapter"))
        log.info("alias event", extra={"adapter": data.get("adapter"), "dropped": dropped})
    return {"received": True, "dropped": dropped}
