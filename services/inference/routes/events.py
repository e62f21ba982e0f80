"""Registry events (webhook, signed with the internal token).

A replica keeps no alias cache (it serves the immutable refs the gateway resolved), so an
alias move needs no invalidation here: the event only prewarms the new version in the
background, so the first request after a swap does not pay the load. A deleted adapter drops
its cached versions, its metric series and its unpacked copies: every loaded version is
unloaded from the engine and its directory removed (an erased or retired adapter must not
stay on a replica's disk); one still serving a request goes when that request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Request

from services.inference.deps import Srv
from shared import signing
from shared.errors import NotFound, TunefleetError, Unauthorized

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
    kind = event.get("type")
    if kind == "alias.moved" and tenant and data.get("adapter") and data.get("to_version"):
        task = asyncio.create_task(_prewarm(srv, tenant, f"{data['adapter']}@{data['to_version']}"))
        request.app.state.background.add(task)
        task.add_done_callback(request.app.state.background.discard)
    if kind == "adapter.deleted" and tenant and data.get("adapter"):
        adapter = str(data["adapter"])
        dropped = srv.resolver.invalidate(tenant, adapter)
        series = srv.metrics.forget_adapter(tenant, adapter)
        unloaded = await _unload_copies(srv, f"{tenant}/{adapter}@", request.app.state.background)
        log.info(
            "adapter deleted",
            extra={"adapter": adapter, "dropped": dropped, "series": series, "unloaded": unloaded},
        )
    return {"received": True}


async def _unload_copies(srv: Srv, prefix: str, background: set[Any]) -> int:  # type: ignore[valid-type]
    """Unload every loaded version whose ref starts with ``prefix`` (``tenant/name@``);
    the cache removes its directory. Idle ones at once; in-use ones when their requests end,
    in the background. Returns how many were found."""
    found = [a for a in srv.cache.loaded() if a.handle.ref.startswith(prefix)]
    for entry in found:
        if entry.in_use:
            task = asyncio.create_task(_unload_when_idle(srv, entry))
            background.add(task)
            task.add_done_callback(background.discard)
        else:
            with contextlib.suppress(NotFound):  # evicted meanwhile: already gone
                await srv.cache.unload(entry.handle.ref)
    return len(found)


async def _unload_when_idle(srv: Srv, entry: Any, poll_s: float = 0.1) -> None:  # type: ignore[valid-type]
    while entry.in_use:
        await asyncio.sleep(poll_s)
    with contextlib.suppress(NotFound):
        await srv.cache.unload(entry.handle.ref)


async def _prewarm(srv: Srv, tenant: str, model: str) -> None:  # type: ignore[valid-type]
    try:
        await srv.cache.ensure(await srv.resolver.resolve(tenant, model))
    except TunefleetError as exc:  # the request path will report it properly
        log.warning("prewarm failed", extra={"model": model, "code": exc.code})
