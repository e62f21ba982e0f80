"""Registry events as the gateway applies them, pushed (``/internal/registry-events``) or
followed (``shared.events_follower``): alias moves and deletions stop the cached resolutions
of that adapter at once, so routing follows a hot swap without waiting for the TTL. A move
keeps them as stale-if-error fallbacks (the versions still exist: a registry outage right
after a move must not turn a model in use into 503s); a deletion drops them for good.

One event can arrive twice (pushed and followed: the same ``id``); it is applied once, or the
late copy would drop a resolution made after the change (an extra registry call, and a test
that reads the cache sees it vanish)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from gateway.domain.resolver import ModelResolver

log = logging.getLogger(__name__)

INVALIDATING = ("alias.moved", "alias.deleted", "adapter.deleted")


class SeenEvents:
    """The ids of the last ``capacity`` events applied (bounded, oldest forgotten first)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        """True the first time ``event_id`` is offered (and remembers it); an empty id always."""
        if not event_id:
            return True
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


def apply_event(resolver: ModelResolver, event: dict[str, Any], seen: SeenEvents) -> int:
    """Apply one event (once per id); the number of cached resolutions dropped."""
    data = event.get("data") or {}
    tenant = str(event.get("tenant") or "")
    if event.get("type") not in INVALIDATING or not tenant:
        return 0
    if not seen.first_time(str(event.get("id") or "")):
        return 0
    # a move keeps the old answers as stale-if-error fallbacks; a deletion drops them
    moved = event.get("type") == "alias.moved"
    dropped = resolver.invalidate(tenant, data.get("adapter"), moved=moved)
    log.info("alias event", extra={"adapter": data.get("adapter"), "dropped": dropped})
    return dropped
