"""The dispatcher that drains the webhook delivery outbox, one lane per tenant.

Deliveries are signed (``shared.signing``), retried with exponential backoff up to
``max_attempts``, and every attempt's outcome is recorded on the delivery row.

Isolation: each tenant's deliveries run in their own lane with at most ``lane_concurrency``
in flight, and the fleet's own receivers (``notify_urls``: hot-swap events for replicas and
gateways) in a lane of their own. A lane is refilled as soon as one of its deliveries ends,
independently of the others, so one tenant's slow or dead receiver delays only that tenant.
Each attempt has one deadline for everything (connect, send, the answer's headers), and the
answer's body is never read, so a receiver cannot hold a delivery open by trickling bytes
or exhaust memory with a huge reply.

SSRF: tenant URLs pass the guard (``shared.netguard``) at registration and again before each
attempt, and the attempt connects to the very address that was checked (``pin_outbound_url``:
``Host`` and the TLS server name keep the original name), so a DNS answer that changes
between the check and the connection (rebinding) is never followed. The fleet's own
receivers are set by the operator and are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.storage.tables import DeliveryRow, WebhookRow
from shared import signing
from shared.db import Database
from shared.errors import InvalidRequest
from shared.netguard import Resolver, pin_outbound_url, resolve_host

log = logging.getLogger(__name__)

SYSTEM_LANE = "fleet"  # tenant lanes are "tenant:<name>"
SYSTEM_LANE_CONCURRENCY = 32  # one event goes to every replica and gateway at once


@dataclass(frozen=True)
class Due:
    id: int
    lane: str
    url: str
    event: str
    body: bytes
    secret: str
    tenant_url: bool


class WebhookDispatcher:
    """Background task: deliver due outbox rows. ``notify()`` is safe from any thread."""

    def __init__(
        self,
        db: Database,
        *,
        system_secret: str,
        timeout_s: float,
        max_attempts: int,
        poll_s: float,
        lane_concurrency: int = 4,
        max_in_flight: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
        url_allow: Sequence[str] = (),
        resolver: Resolver = resolve_host,
    ) -> None:
        self.db = db
        # Re-checked per attempt; empty = only public destinations (fail closed).
        self.url_allow: Sequence[str] = url_allow
        self.resolver = resolver
        self.system_secret = system_secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self.lane_concurrency = lane_concurrency
        self.max_in_flight = max_in_flight
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        self._lanes: Counter[str] = Counter()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Cancel the scheduler and the attempts in flight (they stay pending and are tried
        again after a restart); shutdown waits for them at most a couple of seconds."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await self._http.aclose()

    def notify(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def in_flight(self) -> dict[str, int]:
        """Deliveries in flight per lane (``tenant:<name>``, or ``fleet`` for notify_urls)."""
        return {lane: n for lane, n in self._lanes.items() if n}

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.schedule_once()
            except Exception:  # keep delivering whatever one bad row or DB hiccup did
                log.exception("webhook dispatch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)

    async def schedule_once(self) -> int:
        """Start the due deliveries each lane has room for; returns how many were started."""
        free = self.max_in_flight - len(self._running)
        if free <= 0:
            return 0
        due = await anyio.to_thread.run_sync(self._due, set(self._running), dict(self._lanes))
        for item in due[:free]:
            self._lanes[item.lane] += 1
            task = asyncio.create_task(self._deliver(item), name=f"webhook-delivery-{item.id}")
            self._running[item.id] = task
            task.add_done_callback(functools.partial(self._finished, item))
        return min(len(due), free)

    def _finished(self, item: Due, _task: asyncio.Task[None]) -> None:
        self._running.pop(item.id, None)
        self._lanes[item.lane] -= 1
        self._wake.set()  # the lane has room again

    def _capacity(self, lane: str) -> int:
        return SYSTEM_LANE_CONCURRENCY if lane == SYSTEM_LANE else self.lane_concurrency

    def _due(self, running: set[int], busy: dict[str, int]) -> list[Due]:
        due_now = (DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= time.time())
        not_running = (DeliveryRow.id.not_in(running),) if running else ()
        with self.db.session() as s:
            tenants = s.scalars(
                select(DeliveryRow.tenant)
                .where(*due_now, *not_running, DeliveryRow.webhook_id.is_not(None))
                .distinct()
            ).all()
            lanes = [(SYSTEM_LANE, DeliveryRow.webhook_id.is_(None))] + [
                (f"tenant:{t}", DeliveryRow.webhook_id.is_not(None) & (DeliveryRow.tenant == t))
                for t in tenants
            ]
            rows: list[DeliveryRow] = []
            for lane, where in lanes:
                room = self._capacity(lane) - busy.get(lane, 0)
                if room > 0:
                    rows += s.scalars(
                        select(DeliveryRow)
                        .where(*due_now, *not_running, where)
                        .order_by(DeliveryRow.id)
                        .limit(room)
                    ).all()
            return self._describe(s, rows)

    def _describe(self, s: Session, rows: list[DeliveryRow]) -> list[Due]:
        hook_ids = {r.webhook_id for r in rows if r.webhook_id}
        secrets_by_hook = {
            h.id: h.secret for h in s.scalars(select(WebhookRow).where(WebhookRow.id.in_(hook_ids)))
        }
        return [
            Due(
                id=r.id,
                lane=f"tenant:{r.tenant}" if r.webhook_id else SYSTEM_LANE,
                url=r.url,
                event=r.event,
                body=json.dumps(r.payload, separators=(",", ":")).encode(),
                secret=(
                    secrets_by_hook.get(r.webhook_id, "") if r.webhook_id else self.system_secret
                ),
                tenant_url=r.webhook_id is not None,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    async def _deliver(self, item: Due) -> None:
        url, headers, extensions = item.url, {}, {}
        if item.tenant_url:
            try:  # DNS may have changed since registration (rebinding): check, then pin
                pinned = await anyio.to_thread.run_sync(
                    lambda: pin_outbound_url(item.url, self.url_allow, resolver=self.resolver)
                )
            except InvalidRequest as exc:
                await anyio.to_thread.run_sync(
                    self._record, item.id, None, f"refused: {exc.message}"[:500]
                )
                return
            url, headers, extensions = pinned.connect_url, pinned.headers, pinned.extensions
        headers = {
            **headers,
            "Content-Type": "application/json",
            "X-Tunefleet-Event": item.event,
            signing.HEADER: signing.sign(item.secret, item.body),
        }
        if not item.tenant_url:
            headers["Authorization"] = f"Bearer {self.system_secret}"
        code: int | None = None
        error: str | None = None
        try:
            with anyio.fail_after(self.timeout_s):
                request = self._http.build_request(
                    "POST", url, content=item.body, headers=headers, extensions=extensions
                )
                resp = await self._http.send(request, stream=True)
                await resp.aclose()  # the body is never read: its size cannot matter
            code = resp.status_code
            if code >= 300:
                error = f"receiver answered HTTP {code}"
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        await anyio.to_thread.run_sync(self._record, item.id, code, error)

    def _record(self, delivery_id: int, code: int | None, error: str | None) -> None:
        with self.db.session(write=True) as s:
            row = s.get(DeliveryRow, delivery_id)
            if row is None:
                return
            row.attempts += 1
            row.last_status_code = code
            row.last_error = error
            if error is None:
                row.status = "delivered"
                row.delivered_at = int(time.time())
            elif row.attempts >= self.max_attempts:
                row.status = "failed"
                log.warning(
                    "webhook delivery gave up",
                    extra={"delivery": delivery_id, "attempts": row.attempts},
                )
            else:
                row.next_attempt_at = time.time() + min(60.0, 0.5 * 2 ** (row.attempts - 1))
