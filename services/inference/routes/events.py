"""Registry events (webhook, signed with the internal token): the hot-swap trigger.

An alias move drops the cached resolution at once, so the next request re-resolves to the new
immutable version; requests already running keep the version they resolved. A deleted adapter
drops its cached resolutions (versions too) and its metric series. The new version
is also prewarmed in the background so the first request after a swap does not pay the load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request

from services.inference.deps import Srv
from shared import signing
from shared.errors import TunefleetError, Unauthorized

router = APIRouter(tags=["events"])
log = logging.getLogger(__name__)


@router.post("/internal/registry-events")
async def registry_event(request: Request, srv: Srv) -> dict[str, Any]:
    body = await request.body()
    if not signing.verify(
        request.app.state.internal_token, body, request.headers.get(signing.HEADER)
    ):
        raise Unauthorized("bad or stale event signature", code="invalid_signature")
    event = await request.json()
    data = event.get("data", {})
    tenant = str(event.get("tenant", ""))
    if event.get("type") in ("alias.moved", "alias.deleted") and tenant:
        dropped = srv.resolver.invalidate(tenant, data.get("adapter"))
        log.info("alias event", extra={"adapter": data.get("adapter"), "dropped": dropped})
        if event["type"] == "alias.moved" and data.get("to_version"):
            task = asyncio.create_task(
                _prewarm(srv, tenant, f"{data['adapter']}@{data['to_version']}")
            )
            request.app.state.background.add(task)
            task.add_done_callback(request.app.state.background.discard)
    if event.get("type") == "adapter.deleted" and tenant and data.get("adapter"):
        adapter = str(data["adapter"])
        dropped = srv.resolver.invalidate(tenant, adapter, versions_too=True)
        series = srv.metrics.forget_adapter(tenant, adapter)
        log.info(
            "adapter deleted", extra={"adapter": adapter, "dropped": dropped, "series": series}
        )
    return {"received": True}


async def _prewarm(srv: Srv, tenant: str, model: str) -> None:  # type: ignore[valid-type]
    try:
        await srv.cache.ensure(await srv.resolver.resolve(tenant, model))
    except TunefleetError as exc:  # the request path will report it properly
        log.warning("prewarm failed", extra={"model": model, "code": exc.code})
