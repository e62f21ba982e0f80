"""Database work off the event loop.

SQLAlchemy sessions block (SQLite file locks, Postgres round trips, an audit chain walk), so
an ``async`` handler never opens one itself: it hands the unit of work to a worker thread
with :func:`in_session` and stays free to serve other requests meanwhile. (Handlers that do
nothing but database work are plain ``def`` and FastAPI runs them in its thread pool.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from sqlalchemy.orm import Session

from shared.db import Database

T = TypeVar("T")


async def in_session(db: Database, fn: Callable[[Session], T], *, write: bool = False) -> T:
    """``fn(session)`` in a worker thread, inside one (read or write) unit of work."""

    def run() -> T:
        with db.session(write=write) as s:
            return fn(s)

    return await anyio.to_thread.run_sync(run)
