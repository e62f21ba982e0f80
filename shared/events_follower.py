"""Following the registry's change feed (``GET /v1/internal/events``) from a replica or a
gateway.

Every process follows for itself, so an alias move or a deletion reaches each replica and
gateway however they are addressed (behind a Kubernetes Service, a webhook reaches one of
them). The follower long-polls from the last ``seq`` it applied and hands each event to
``apply``, in order. It calls ``reset`` (drop whatever was cached from the registry) when it
may have missed events: when it starts following (anything cached before that is of unknown
age), and when the registry answers ``reset`` (the events it had not read were pruned, or
the feed began again). While the registry is unreachable it retries with backoff and resumes
from where it was: the events are kept, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.clients.registry import RegistryClient
from shared.errors import TunefleetError
from shared.schemas.registry import RegistryEvent

log = logging.getLogger(__name__)

Apply = Callable[[RegistryEvent], Awaitable[None]]
Reset = Callable[[], Awaitable[None]]


class EventFollower:
    def __init__(
        self,
        registry: RegistryClient,
        apply: Apply,
        reset: Reset,
        *,
        wait_s: float = 10.0,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.apply = apply
        self.reset = reset
        self.wait_s = wait_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.after: int | None = None  # the last seq applied (None: not following yet)
        self.applied = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-event-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self.retry_s
        while True:
            try:
                await self.poll_once()
                delay = self.retry_s
            except asyncio.CancelledError:
                raise
            except TunefleetError as exc:  # registry down or failing: retry, keep our place
                log.warning("event feed unavailable", extra={"code": exc.code, "after": self.after})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
            except Exception:
                log.exception("event feed follower failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)

    async def poll_once(self) -> int:
        """One feed call (long-polling once following); the number of events applied."""
        page = await self.registry.events(
            self.after, wait_s=0.0 if self.after is None else self.wait_s
        )
        if self.after is None or page.reset:
            log.info("event feed (re)started", extra={"after": self.after, "head": page.last_seq})
            await self.reset()
        for event in page.data:
            try:
                await self.apply(event)
            except Exception:  # one bad event must not stop the feed
                log.exception("applying a registry event failed", extra={"seq": event.seq})
            self.after = event.seq
            self.applied += 1
        self.after = page.last_seq
        return len(page.data)
