"""The change feed (internal token): ``GET /v1/internal/events?after=<seq>&wait=<s>``.

A long poll: with nothing after ``after`` the call waits up to ``wait`` seconds for an event
(looking every ``feed_poll_s``; a registry of several processes shares only the database),
and answers at once when the server starts shutting down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request

from services.registry.deps import State
from services.registry.domain.feed import read_feed
from shared.schemas.registry import EventPage

router = APIRouter(tags=["events"])


@router.get("/v1/internal/events", response_model=EventPage)
async def follow_events(
    request: Request,
    st: State,
    after: Annotated[int | None, Query(ge=0)] = None,
    wait: Annotated[float, Query(ge=0, le=60)] = 0.0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventPage:
    deadline = time.monotonic() + wait

    def read() -> EventPage:
        with st.db.session() as s:
            return read_feed(s, after, limit)

    while True:
        page = await anyio.to_thread.run_sync(read)
        left = deadline - time.monotonic()
        if page.data or page.reset or after is None or left <= 0 or request.app.state.draining:
            return page
        await asyncio.sleep(min(st.settings.feed_poll_s, left))
