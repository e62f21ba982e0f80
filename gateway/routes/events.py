"""Registry events pushed as webhooks (``notify_urls``, signed with the internal token); the
gateway also follows the registry's change feed. Both end in ``gateway.domain.events``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from gateway.deps import State
from gateway.domain.events import apply_event
from shared import signing
from shared.errors import InvalidRequest, Unauthorized

router = APIRouter(tags=["events"], include_in_schema=False)


@router.post("/internal/registry-events")
async def registry_event(request: Request, st: State) -> dict[str, Any]:
    body = await request.body()
    if not signing.verify(st.internal_token, body, request.headers.get(signing.HEADER)):
        raise Unauthorized("bad or stale event signature", code="invalid_signature")
    try:
        event = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"event is not JSON: {exc}") from exc
    return {"received": True, "dropped": apply_event(st.resolver, event, st.seen_events)}
