"""Registry events as a replica applies them, whether pushed (``/internal/registry-events``)
or followed (``shared.events_follower``).

A replica keeps no alias cache (it serves the immutable refs the gateway resolved), so an
alias move needs no invalidation here: the event only prewarms the new version in the
background, so the first request after a swap does not pay the load. A deleted adapter drops
its cached resolutions, its metric series and its unpacked copies: every loaded version is
unloaded from the engine and its directory removed (an erased or retired adapter must not stay
on a replica's disk); one still serving a request goes when that request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from services.inference.domain.serving import Server
from shared.errors import NotFound, TunefleetError

log = logging.getLogger(__name__)


async def apply_event(
    srv: Server, event: dict[str, Any], background: set[asyncio.Task[None]]
) -> None:
    data = event.get("data") or {}
    tenant = str(event.get("tenant") or "")
    kind = event.get("type")
    if kind == "alias.moved" and tenant and data.get("adapter") and data.get("to_version"):
        task = asyncio.create_task(_prewarm(srv, tenant, f"{data['adapter']}@{data['to_version']}"))
        background.add(task)
        task.add_done_callback(background.discard)
    if kind == "adapter.deleted" and tenant and data.get("adapter"):
        adapter = str(data["adapter"])
        dropped = srv.resolver.invalidate(tenant, adapter)
        unloaded = await srv.cache.forget(tenant, adapter)  # the idle ones, now
        busy = [a for a in srv.cache.loaded() if a.handle.ref.startswith(f"{tenant}/{adapter}@")]
        for entry in busy:  # still serving: unloaded when their requests end
            task = asyncio.create_task(_unload_when_idle(srv, entry))
            background.add(task)
            task.add_done_callback(background.discard)
        unloaded += len(busy)
        series = srv.metrics.forget_adapter(tenant, adapter)
        log.info(
            "adapter deleted",
            extra={"adapter": adapter, "dropped": dropped, "unloaded": unloaded, "series": series},
        )


async def _unload_when_idle(srv: Server, entry: Any, poll_s: float = 0.1) -> None:
    while entry.in_use:
        await asyncio.sleep(poll_s)
    with contextlib.suppress(NotFound):  # evicted meanwhile: already gone
        await srv.cache.unload(entry.handle.ref)


async def reset_caches(srv: Server) -> None:
    """Events may have been missed (a gap in the feed): forget every cached resolution, so
    each ref is looked up again (loaded weights are keyed on their sha256 and stay valid)."""
    srv.resolver.clear()
    log.warning("event feed gap: resolver cache dropped")


async def _prewarm(srv: Server, tenant: str, model: str) -> None:
    try:
        await srv.cache.ensure(await srv.resolver.resolve(tenant, model))
    except TunefleetError as exc:  # the request path will report it properly
        log.warning("prewarm failed", extra={"model": model, "code": exc.code})
