"""Feedback on served predictions: the correct value for a request id, turned into per-adapter
accuracy gauges so SREs see a model drift in production.

The gateway remembers each non-streamed prediction (request id and response id → tenant,
adapter version, answer) in a :class:`Predictions` store: this process's memory (the last
``capacity``; one gateway) or the gateway database (kept ``feedback_ttl_s``; shared by every
gateway, so feedback may reach another gateway than the answer came from). Feedback for an
older or unknown request, or another tenant's, is a 404. Streamed answers are not remembered
(their text is never assembled by the gateway).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.storage.rawsql import Sql
from shared.db import Database
from shared.errors import NotFound

log = logging.getLogger(__name__)
PREDICTED_CHARS = 2000  # what the database keeps of an answer to show (it matches a digest)


@dataclass(frozen=True)
class Prediction:
    tenant: str
    adapter: str  # name@vN or the base model id (bounded)
    predicted: str


@dataclass(frozen=True)
class Score:
    prediction: Prediction
    match: bool
    correct: int  # this tenant's and adapter's correct predictions so far, all gateways
    total: int


def _norm(value: str) -> str:
    return value.strip().casefold()


def _digest(value: str) -> str:
    return hashlib.sha256(_norm(value).encode()).hexdigest()


def _unknown(request_id: str) -> NotFound:
    return NotFound(f"no recent prediction with id {request_id!r}", param="request_id")


class Predictions(Protocol):
    async def remember(self, ids: list[str], prediction: Prediction) -> None: ...

    async def score(self, tenant: str, request_id: str, correct: str) -> Score:
        """Tally one fed-back prediction of ``tenant`` (404 if unknown)."""


class MemoryPredictions:
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, Prediction] = OrderedDict()
        # (tenant, adapter) -> [correct, total]: two tenants' "router@v1" are different adapters
        self._tally: dict[tuple[str, str], list[int]] = {}

    async def remember(self, ids: list[str], prediction: Prediction) -> None:
        for i in ids:
            if i:
                self._seen[i] = prediction
                self._seen.move_to_end(i)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    async def score(self, tenant: str, request_id: str, correct: str) -> Score:
        p = self._seen.get(request_id)
        if p is None or p.tenant != tenant:
            raise _unknown(request_id)
        ok = _norm(p.predicted) == _norm(correct)
        tally = self._tally.setdefault((p.tenant, p.adapter), [0, 0])
        tally[0] += int(ok)
        tally[1] += 1
        return Score(p, ok, tally[0], tally[1])


class SqlPredictions:
    """Tables ``feedback_predictions`` (keyed by tenant and id, expiring) and
    ``feedback_tally``. Predictions are written in batches every ``flush_s`` (a request pays
    no database round trip for them): feedback sent within that time of the answer may find
    nothing yet. Expired rows are deleted by ``purge`` (the idempotency purger calls it)."""

    def __init__(self, db: Database, ttl_s: int, *, flush_s: float = 0.05) -> None:
        self.sql = Sql(db, pool_size=1, max_overflow=3)  # batched writes, feedback calls
        self.ttl_s = ttl_s
        self.flush_s = flush_s
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def remember(self, ids: list[str], prediction: Prediction) -> None:
        p = prediction
        row = {
            "tenant": p.tenant,
            "adapter": p.adapter,
            "predicted": p.predicted[:PREDICTED_CHARS],
            "digest": _digest(p.predicted),
            "expires_at": int(time.time()) + self.ttl_s,
        }
        for i in ids:
            if i:
                self._pending[(p.tenant, i[:128])] = row | {"id": i[:128]}
        self._wake.set()

    async def flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, {}
            rows = [batch[k] for k in sorted(batch)]
            await anyio.to_thread.run_sync(self.sql.run_many, _PUT, rows)

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("predictions not kept for feedback")

    def _score(self, tenant: str, request_id: str, correct: str) -> Score:
        def tx(ex: Callable[..., Any]) -> Score:
            args = {"tenant": tenant, "id": request_id[:128], "now": int(time.time())}
            row = ex(_GET, args).fetchone()
            if row is None:
                raise _unknown(request_id)
            adapter, predicted, digest = str(row[0]), str(row[1]), str(row[2])
            ok = _digest(correct) == digest
            tally = ex(_COUNT, {"tenant": tenant, "adapter": adapter, "ok": int(ok)}).fetchone()
            return Score(Prediction(tenant, adapter, predicted), ok, int(tally[0]), int(tally[1]))

        return self.sql.run(tx)

    async def score(self, tenant: str, request_id: str, correct: str) -> Score:
        return await anyio.to_thread.run_sync(self._score, tenant, request_id, correct)

    def purge(self) -> int:
        """Delete expired predictions (blocking); how many."""
        sql = "DELETE FROM feedback_predictions WHERE expires_at <= :now"
        return int(self.sql.run(lambda ex: ex(sql, {"now": int(time.time())}).rowcount))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flusher(), name="feedback-predictions")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except Exception:
            log.exception("predictions not kept for feedback at shutdown")
        self.sql.dispose()


_PUT = (
    "INSERT INTO feedback_predictions (tenant, id, adapter, predicted, digest, expires_at)"
    " VALUES (:tenant, :id, :adapter, :predicted, :digest, :expires_at)"
    " ON CONFLICT (tenant, id) DO UPDATE SET adapter = excluded.adapter,"
    " predicted = excluded.predicted, digest = excluded.digest, expires_at = excluded.expires_at"
)
_GET = (
    "SELECT adapter, predicted, digest FROM feedback_predictions"
    " WHERE tenant = :tenant AND id = :id AND expires_at > :now"
)
_COUNT = (
    "INSERT INTO feedback_tally (tenant, adapter, correct, total)"
    " VALUES (:tenant, :adapter, :ok, 1) ON CONFLICT (tenant, adapter) DO UPDATE SET"
    " correct = feedback_tally.correct + :ok, total = feedback_tally.total + 1"
    " RETURNING correct, total"
)


class FeedbackBook:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        store: Predictions | None = None,
        capacity: int = 100_000,
    ) -> None:
        self.store: Predictions = store or MemoryPredictions(capacity)
        self.total = Counter(
            "tunefleet_gateway_feedback",
            "Feedback received on served predictions",
            ["tenant", "adapter", "outcome"],
            registry=registry,
        )
        self.accuracy = Gauge(
            "tunefleet_gateway_feedback_accuracy",
            "Share of fed-back predictions that were correct, per adapter version",
            ["tenant", "adapter"],
            registry=registry,
        )

    async def remember(self, ids: list[str], prediction: Prediction) -> None:
        """Keep ``prediction`` for feedback; a store that fails costs the feedback, never the
        answer it was about."""
        try:
            await self.store.remember(ids, prediction)
        except Exception:
            log.exception("prediction not kept for feedback")

    async def record(self, tenant: str, request_id: str, correct: str) -> dict[str, Any]:
        """Score one prediction; another tenant's request id is unknown (404)."""
        sc = await self.store.score(tenant, request_id, correct)
        p, accuracy = sc.prediction, sc.correct / sc.total
        self.total.labels(p.tenant, p.adapter, "correct" if sc.match else "wrong").inc()
        self.accuracy.labels(p.tenant, p.adapter).set(accuracy)
        return {
            "object": "feedback",
            "request_id": request_id,
            "adapter": p.adapter,
            "predicted": p.predicted,
            "correct": correct,
            "match": sc.match,
            "accuracy": accuracy,
            "count": sc.total,
        }
