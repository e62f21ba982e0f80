"""The change feed: every event, in commit order, for the fleet's own followers.

Webhooks push an event to a fixed list of URLs, so behind a Kubernetes Service an alias move
reaches one replica of several. The feed turns that around: each replica and gateway follows
``GET /v1/internal/events?after=<seq>`` (``shared.events_follower``) and applies what it has
not seen, resuming from its last ``seq``. An event row is written in the transaction of the
change it records (``enqueue_event``), so a committed change is never missing from the feed.

``seq`` must grow in commit order, or a follower could read seq 6 before seq 5 commits and
skip 5: SQLite's write transactions are serial already; on Postgres the writers of events
serialize on one advisory lock (registry writes are rare: pushes, moves, deletions).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from services.registry.storage.tables import EventRow
from shared.schemas.registry import EventPage, RegistryEvent

KEEP_EVENTS = 10_000  # followers further behind than this start over (``reset``)
PRUNE_EVERY = 100
_FEED_LOCK = 0x7F_EED  # Postgres advisory lock key of the feed's writers


def record_event(s: Session, payload: dict[str, Any], *, keep: int = KEEP_EVENTS) -> int:
    """Append ``payload`` (an event as webhooks carry it) to the feed; its ``seq``."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FEED_LOCK})
    row = EventRow(tenant=payload["tenant"], type=payload["type"], payload=payload)
    s.add(row)
    s.flush()
    if row.seq % PRUNE_EVERY == 0:
        s.execute(delete(EventRow).where(EventRow.seq <= row.seq - keep))
    return row.seq


def read_feed(s: Session, after: int | None, limit: int) -> EventPage:
    """Events after ``after`` (see ``EventPage`` for ``reset`` and a missing ``after``)."""
    head, oldest = s.execute(select(func.max(EventRow.seq), func.min(EventRow.seq))).one()
    head = head or 0
    if after is None:
        return EventPage(data=[], last_seq=head)
    if after > head or (oldest is not None and oldest > after + 1):
        # the feed restarted (a new database), or events after ``after`` were pruned
        return EventPage(data=[], last_seq=head, reset=True)
    rows = list(
        s.scalars(select(EventRow).where(EventRow.seq > after).order_by(EventRow.seq).limit(limit))
    )
    events = [RegistryEvent(seq=r.seq, **_fields(r.payload)) for r in rows]
    return EventPage(
        data=events, last_seq=events[-1].seq if events else after, more=len(rows) == limit
    )


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: payload[k] for k in ("id", "type", "created", "tenant", "data") if k in payload}
