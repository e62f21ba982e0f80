"""Registry events pushed as webhooks (``notify_urls``, signed with the internal token); the
same events also arrive through the change feed the replica follows. Both end in
``services.inference.domain.events.apply_event``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.inference.deps import Srv
from services.inference.domain.events import apply_event
from shared import signing
from shared.errors import Unauthorized

router = APIRouter(tags=["events"])


@router.post("/internal/registry-events")
async def registry_event(request: Request, srv: Srv) -> dict[str, Any]:
    body = await request.body()
    if not signing.verify(
        request.app.state.internal_token, body, request.headers.get(signing.HEADER)
    ):
        raise Unauthorized("bad or stale event signature", code="invalid_signature")
    await apply_event(srv, await request.json(), request.app.state.background)
    return {"received": True}
