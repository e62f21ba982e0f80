"""Quota state in the gateway database, shared by every gateway on it.

Selected by ``TUNEFLEET_GATEWAY_STATE_STORE=database`` (the default on Postgres).

* rpm / tpm: one row per bucket (``quota_buckets``). A check is one upsert that refills and
  spends in the same statement, guarded by a ``WHERE`` on what is left, so two gateways
  spending from one bucket serialize on its row and neither overdraws it. Buckets of one
  request (tenant's, key's) change in one transaction: all or none. Buckets are touched in
  name order everywhere, so transactions never deadlock.
* settling a tpm reservation (``charge``) never waits: charges are summed per bucket and
  written by a background task every ``flush_s``.
* streams: one lease row per open stream and subject (``quota_stream_leases``), counted under
  a per-subject lock (Postgres advisory lock; SQLite's write lock), renewed every
  ``lease_s / 3`` while open; a crashed gateway's leases expire after ``lease_s``.
* rows no one needs are purged every ``purge_s``: expired leases, and buckets untouched for
  two minutes (full again, which is what a missing row means).

Time is the gateways' wall clock (unix seconds): their clocks must agree (NTP); a skew of
``d`` seconds lets a bucket refill up to ``d`` seconds early, never twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from gateway.domain.quota_state import (
    Pairs,
    requests_exceeded,
    tokens_exceeded,
    too_many_streams,
)
from gateway.storage.rawsql import Sql
from shared.db import Database

log = logging.getLogger(__name__)
Execute = Callable[..., Any]  # ``Sql.run``'s execute(sql, params) -> the driver's cursor
FULL_AFTER_S = 120.0  # a bucket at its deepest debt (-1 minute) is full again after this


class SqlQuotaState:
    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 30.0,
        flush_s: float = 0.05,
        purge_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sql = Sql(db)
        self.lease_s = lease_s
        self.flush_s = flush_s
        self.purge_s = purge_s
        self.clock = clock
        self.holder = uuid.uuid4().hex  # this process, in the lease rows it holds
        self._pg = self.sql.postgres
        self._held = 0  # leases open here (renewed only while some are)
        self._pending: dict[tuple[str, int], float] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        least, greatest = ("LEAST", "GREATEST") if self._pg else ("MIN", "MAX")
        left = (
            f"{least}(:cap, quota_buckets.tokens"
            f" + {greatest}(0.0, :now - quota_buckets.updated) * :cap / 60.0)"
        )
        upsert = "INSERT INTO quota_buckets (bucket, tokens, updated) VALUES (:bucket, {new}, :now)"
        upsert += " ON CONFLICT (bucket) DO UPDATE SET tokens = {tokens},"
        upsert += f" updated = {greatest}(quota_buckets.updated, :now)"
        # spend :need if that many are left (and the bucket is not in debt); a row back = done
        self._spend = upsert.format(new=":cap - :need", tokens=f"{left} - :need")
        self._spend += f" WHERE {left} >= :need AND {left} > 0 RETURNING tokens"
        # spend :cost whatever is left, down to a minute of debt; up to the cap if negative
        self._charge = upsert.format(
            new=f"{greatest}(-:cap, {least}(:cap, :cap - :cost))",
            tokens=f"{greatest}(-:cap, {least}(:cap, {left} - :cost))",
        )
        self._peek = "SELECT tokens, updated FROM quota_buckets WHERE bucket = :bucket"
        self._lock = "SELECT pg_advisory_xact_lock(hashtext(:subject))"
        self._count = (
            "SELECT count(*) FROM quota_stream_leases WHERE subject = :subject"
            " AND expires_at > :now"
        )
        self._lease = (
            "INSERT INTO quota_stream_leases (id, subject, holder, expires_at)"
            " VALUES (:id, :subject, :holder, :expires_at)"
        )

    # -- buckets ---------------------------------------------------------------------------

    def _left(self, ex: Execute, bucket: str, cap: float, now: float) -> float:
        """What ``bucket`` holds now (a missing row is a full bucket)."""
        row = ex(self._peek, {"bucket": bucket}).fetchone()
        if row is None:
            return cap
        tokens, updated = float(row[0]), float(row[1])
        return min(cap, tokens + max(0.0, now - updated) * cap / 60.0)

    def _spend_all(
        self, ex: Execute, wants: list[tuple[str, int, float]], now: float
    ) -> tuple[str, int, float] | None:
        """Spend from every bucket, or return the first that refuses (the caller raises, which
        rolls back what was spent before it)."""
        for bucket, cap, need in sorted(wants):
            params = {"bucket": bucket, "cap": float(cap), "need": need, "now": now}
            if ex(self._spend, params).fetchone() is None:
                return bucket, cap, need
        return None

    def _admit(self, rpm: Pairs) -> None:
        now = self.clock()

        def tx(ex: Execute) -> None:
            refused = self._spend_all(ex, [(b, cap, 1.0) for b, cap in rpm], now)
            if refused is not None:
                bucket, cap, _ = refused
                raise requests_exceeded(cap, max(0.01, 1.0 - self._left(ex, bucket, cap, now)))

        # one bucket, one statement: no transaction around it (the refusal only reads)
        self.sql.run(tx, atomic=len(rpm) > 1)

    async def admit(self, rpm: Pairs, tpm: Pairs) -> None:
        """Takes one request from every rpm bucket. A tpm bucket in debt is not read here
        (one statement less per request): the reservation that follows refuses it, with the
        same 429 ``tokens_rate_limit_exceeded``."""
        await anyio.to_thread.run_sync(self._admit, rpm)

    def _reserve(self, wants: Pairs, cost: float) -> dict[str, float]:
        now = self.clock()
        taken = {bucket: min(cost, float(cap)) for bucket, cap in wants}

        def tx(ex: Execute) -> dict[str, float]:
            refused = self._spend_all(ex, [(b, cap, taken[b]) for b, cap in wants], now)
            if refused is not None:
                bucket, cap, need = refused
                raise tokens_exceeded(cap, cost, self._left(ex, bucket, cap, now), need)
            return taken

        return self.sql.run(tx, atomic=len(wants) > 1)

    async def reserve(self, wants: Pairs, cost: float) -> dict[str, float]:
        return await anyio.to_thread.run_sync(self._reserve, wants, cost)

    def charge(self, charges: list[tuple[str, int, float]]) -> None:
        for bucket, cap, cost in charges:
            if cost:
                self._pending[(bucket, cap)] = self._pending.get((bucket, cap), 0.0) + cost
        if self._pending:
            self._wake.set()

    def _write_charges(self, batch: dict[tuple[str, int], float]) -> None:
        now = self.clock()
        rows = [
            {"bucket": bucket, "cap": float(cap), "cost": cost, "now": now}
            for (bucket, cap), cost in sorted(batch.items())
        ]
        self.sql.run_many(self._charge, rows)

    async def flush(self) -> None:
        """Write the charges made so far (the background task does this every ``flush_s``)."""
        if self._pending:
            batch, self._pending = self._pending, {}
            try:
                await anyio.to_thread.run_sync(self._write_charges, batch)
            except BaseException:
                for k, cost in batch.items():  # kept for the next write
                    self._pending[k] = self._pending.get(k, 0.0) + cost
                raise

    # -- streams ---------------------------------------------------------------------------

    def _acquire(self, subjects: Pairs) -> list[str]:
        now = self.clock()

        def tx(ex: Execute) -> list[str]:
            for subject, limit in sorted(subjects):
                if self._pg:  # SQLite: the write transaction already serializes this
                    ex(self._lock, {"subject": subject})
                if ex(self._count, {"subject": subject, "now": now}).fetchone()[0] >= limit:
                    raise too_many_streams(limit)
            ids: list[str] = []
            for subject, _ in subjects:
                lease = f"{uuid.uuid4().hex}{len(ids)}"
                row = {"id": lease, "subject": subject, "holder": self.holder}
                ex(self._lease, row | {"expires_at": now + self.lease_s})
                ids.append(lease)
            return ids

        return self.sql.run(tx)

    def _release(self, ids: list[str]) -> None:
        def tx(ex: Execute) -> None:
            for lease in ids:
                ex("DELETE FROM quota_stream_leases WHERE id = :id", {"id": lease})

        self.sql.run(tx)

    @asynccontextmanager
    async def streams(self, subjects: Pairs) -> AsyncIterator[None]:
        ids = await anyio.to_thread.run_sync(self._acquire, subjects)
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            # a client gone cancels the stream: give the slot back all the same
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._release, ids)

    # -- upkeep ----------------------------------------------------------------------------

    def _renew(self) -> None:
        sql = "UPDATE quota_stream_leases SET expires_at = :at WHERE holder = :holder"
        params = {"at": self.clock() + self.lease_s, "holder": self.holder}
        self.sql.run(lambda ex: ex(sql, params))

    def purge(self) -> dict[str, int]:
        """Delete expired leases and buckets full again (blocking); how many of each."""
        now = self.clock()

        def tx(ex: Execute) -> dict[str, int]:
            leases = ex("DELETE FROM quota_stream_leases WHERE expires_at <= :now", {"now": now})
            n = max(0, leases.rowcount)
            buckets = ex(
                "DELETE FROM quota_buckets WHERE updated < :at", {"at": now - FULL_AFTER_S}
            )
            return {"leases": n, "buckets": max(0, buckets.rowcount)}

        return self.sql.run(tx)

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.flush_s)  # let a few settle together
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("quota charges not written; retried with the next ones")

    async def _upkeep(self) -> None:
        renew_s = self.lease_s / 3
        last_purge = 0.0
        while True:
            try:
                if self._held:
                    await anyio.to_thread.run_sync(self._renew)
                if time.monotonic() - last_purge >= self.purge_s:
                    last_purge = time.monotonic()
                    await anyio.to_thread.run_sync(self.purge)
            except Exception:
                log.exception("quota state upkeep failed")
            await asyncio.sleep(renew_s)

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._flusher(), name="quota-charges"),
            asyncio.create_task(self._upkeep(), name="quota-upkeep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        sql = "DELETE FROM quota_stream_leases WHERE holder = :h"
        try:  # what this gateway still owes, and its streams (else they expire after lease_s)
            await self.flush()
            await anyio.to_thread.run_sync(self.sql.run, lambda ex: ex(sql, {"h": self.holder}))
        except Exception:
            log.exception("quota state not written at shutdown")
        self.sql.dispose()
