"""Webhook subscriptions and the dispatcher that drains the delivery outbox.

Deliveries are signed (``shared.signing``), retried with exponential backoff up to
``max_attempts``, and every attempt's outcome is recorded on the delivery row. Tenant URLs
pass the SSRF guard (``shared.netguard``) at registration and again before every attempt,
so a name that later resolves to a private address (DNS rebinding) is never called; the
fleet's own receivers (``notify_urls``, set by the operator) are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence

import anyio
import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.registry.storage.tables import DeliveryRow, WebhookRow
from shared import signing
from shared.db import Database
from shared.errors import InvalidRequest, NotFound
from shared.netguard import check_outbound_url

log = logging.getLogger(__name__)


def create_webhook(s: Session, tenant: str, url: str, events: list[str]) -> WebhookRow:
    """Store a subscription; the caller has checked ``url`` with the SSRF guard."""
    row = WebhookRow(
        id="wh-" + secrets.token_hex(10),
        tenant=tenant,
        url=url,
        events=sorted(set(events)),
        secret="whsec_" + secrets.token_urlsafe(24),
    )
    s.add(row)
    s.flush()
    return row


def list_webhooks(s: Session, tenant: str) -> list[WebhookRow]:
    return list(
        s.scalars(
            select(WebhookRow)
            .where(WebhookRow.tenant == tenant)
            .order_by(WebhookRow.created_at, WebhookRow.id)
        )
    )


def get_webhook(s: Session, tenant: str, webhook_id: str) -> WebhookRow:
    row = s.get(WebhookRow, webhook_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"webhook {webhook_id!r} not found", param="webhook_id")
    return row


def list_deliveries(s: Session, tenant: str, webhook_id: str, limit: int) -> list[DeliveryRow]:
    get_webhook(s, tenant, webhook_id)
    return list(
        s.scalars(
            select(DeliveryRow)
            .where(DeliveryRow.webhook_id == webhook_id)
            .order_by(DeliveryRow.id.desc())
            .limit(limit)
        )
    )


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
        transport: httpx.AsyncBaseTransport | None = None,
        url_allow: Sequence[str] = (),
    ) -> None:
        self.db = db
        # Re-checked per attempt; empty = only public destinations (fail closed).
        self.url_allow: Sequence[str] = url_allow
        self.system_secret = system_secret
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    def notify(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            try:
                await self.drain_once()
            except Exception:  # keep delivering whatever one bad row or DB hiccup did
                log.exception("webhook dispatch round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)

    async def drain_once(self) -> int:
        due = await anyio.to_thread.run_sync(self._due)
        if due:
            await asyncio.gather(*(self._deliver(d) for d in due))
        return len(due)

    def _due(self) -> list[tuple[int, str, str, bytes, str, bool]]:
        with self.db.session() as s:
            rows = s.scalars(
                select(DeliveryRow)
                .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= time.time())
                .order_by(DeliveryRow.id)
                .limit(50)
            ).all()
            secrets_by_hook = {
                h.id: h.secret
                for h in s.scalars(
                    select(WebhookRow).where(
                        WebhookRow.id.in_({r.webhook_id for r in rows if r.webhook_id})
                    )
                )
            }
            out = []
            for r in rows:
                secret = (
                    secrets_by_hook.get(r.webhook_id, "") if r.webhook_id else self.system_secret
                )
                body = json.dumps(r.payload, separators=(",", ":")).encode()
                out.append((r.id, r.url, r.event, body, secret, r.webhook_id is not None))
            return out

    async def _deliver(self, item: tuple[int, str, str, bytes, str, bool]) -> None:
        delivery_id, url, event, body, secret, tenant_url = item
        if tenant_url:
            try:  # DNS may have changed since registration (rebinding): check again
                await anyio.to_thread.run_sync(check_outbound_url, url, self.url_allow)
            except InvalidRequest as exc:
                await anyio.to_thread.run_sync(
                    self._record, delivery_id, None, f"refused: {exc.message}"[:500]
                )
                return
        headers = {
            "Content-Type": "application/json",
            "X-Tunefleet-Event": event,
            signing.HEADER: signing.sign(secret, body),
        }
        if secret == self.system_secret:
            headers["Authorization"] = f"Bearer {self.system_secret}"
        code: int | None = None
        error: str | None = None
        try:
            resp = await self._http.post(url, content=body, headers=headers)
            code = resp.status_code
            if code >= 300:
                error = f"receiver answered HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        await anyio.to_thread.run_sync(self._record, delivery_id, code, error)

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
