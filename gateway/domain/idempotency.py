"""``Idempotency-Key`` on creating POSTs: a retry gets the original answer, not a duplicate.

Scope is (tenant, key). The first request stores a fingerprint of what it asked (method, path,
body) and, once answered, its status and body. A retry with the same fingerprint replays that
answer; the same key with a different request is a 409 naming the header; a retry while the
first is still running is a 409 too (the client retries later). 5xx answers are not kept, so a
retry after an outage really retries. Rows expire after ``idempotency_ttl_s`` and are deleted
by :class:`ExpiredPurger`.

A stored answer never holds a secret: a created API key or webhook signing secret is shown
once, to the first answer; a replay carries ``null`` in its place (the caller who lost it
revokes and creates again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from sqlalchemy import delete
from sqlalchemy.orm import Session

from gateway.storage.tables import IdempotencyRow
from shared.db import Database
from shared.errors import Conflict, InvalidRequest

log = logging.getLogger(__name__)
HEADER = "Idempotency-Key"
# top-level fields of a stored answer that hold a secret shown once (API key, webhook secret)
SECRET_FIELDS = frozenset({"key", "secret", "token", "password", "client_secret"})
_BOUNDARY = re.compile(r"boundary=\"?([^\";]+)\"?")


@dataclass(frozen=True)
class Stored:
    status: int
    content_type: str
    body: bytes


def fingerprint(method: str, path: str, content_type: str, body: bytes) -> str:
    """What the request asked for. A multipart boundary is random per attempt in most clients,
    so it is blanked out: the same file uploaded twice has the same fingerprint."""
    m = _BOUNDARY.search(content_type)
    if m:
        body = body.replace(m.group(1).encode("latin-1"), b"-")
        content_type = "multipart/form-data"
    h = hashlib.sha256(f"{method} {path} {content_type}\n".encode())
    h.update(body)
    return h.hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise InvalidRequest(f"{HEADER} must be 1-255 printable characters", param=HEADER)
    return key


def begin(s: Session, tenant: str, key: str, fp: str, ttl_s: int) -> Stored | None:
    """Claim ``key`` for this request (None: go ahead) or return the stored answer to replay."""
    now = int(time.time())
    row = s.get(IdempotencyRow, (tenant, key))
    if row is not None and row.expires_at <= now:
        s.delete(row)
        s.flush()
        row = None
    if row is None:
        s.add(IdempotencyRow(tenant=tenant, key=key, fingerprint=fp, expires_at=now + ttl_s))
        s.flush()
        return None
    if row.fingerprint != fp:
        raise Conflict(
            f"{HEADER} was already used for a different request; use a new key",
            param=HEADER,
            code="idempotency_key_reused",
        )
    if row.status == 0:
        raise Conflict(
            f"a request with this {HEADER} is still in progress; retry shortly",
            param=HEADER,
            code="idempotency_key_in_progress",
        )
    return Stored(row.status, row.content_type, row.body)


def finish(s: Session, tenant: str, key: str, status: int, content_type: str, body: bytes) -> None:
    """Keep the answer (below 500) for replays; forget the key otherwise."""
    row = s.get(IdempotencyRow, (tenant, key))
    if row is None:
        return
    if status >= 500:
        s.delete(row)
        return
    row.status, row.content_type = status, content_type
    row.body = without_secrets(content_type, body)


def without_secrets(content_type: str, body: bytes) -> bytes:
    """``body`` as it may be stored: the secrets of a JSON answer (``SECRET_FIELDS``) nulled."""
    if "json" not in content_type:
        return body
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(data, dict) or not any(data.get(f) is not None for f in SECRET_FIELDS):
        return body
    return json.dumps({k: None if k in SECRET_FIELDS else v for k, v in data.items()}).encode()


def abandon(s: Session, tenant: str, key: str) -> None:
    row = s.get(IdempotencyRow, (tenant, key))
    if row is not None and row.status == 0:
        s.delete(row)


def purge_expired(s: Session) -> int:
    result = s.execute(delete(IdempotencyRow).where(IdempotencyRow.expires_at <= int(time.time())))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class ExpiredPurger:
    """Deletes expired idempotency records: once at start, then every ``interval_s``; and
    with them whatever else expires (``also``: blocking purges returning rows deleted, such as
    the shared feedback predictions)."""

    def __init__(
        self, db: Database, interval_s: float, *, also: Sequence[Callable[[], int]] = ()
    ) -> None:
        self.db = db
        self.interval_s = interval_s
        self.also = list(also)
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        def purge() -> int:
            with self.db.session(write=True) as s:
                n = purge_expired(s)
            return n + sum(other() for other in self.also)

        return await anyio.to_thread.run_sync(purge)

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    n = await self.run_once()
                    if n:
                        log.info("expired records purged", extra={"rows": n})
                except Exception:
                    log.exception("idempotency purge failed")
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop(), name="idempotency-purge")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
