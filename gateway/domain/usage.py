"""Usage accounting: tokens per tenant, key, model and UTC day.

The request path only adds to an in-memory tally; a background task flushes it to SQL every
``interval_s``, so accounting costs no database round trip per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import anyio
from sqlalchemy import select

from gateway.storage.tables import UsageRow
from shared.db import Database

log = logging.getLogger(__name__)
Key = tuple[str, str, str, str]  # tenant, key id, model, day


class UsageRecorder:
    def __init__(self, db: Database, *, interval_s: float = 1.0) -> None:
        self.db = db
        self.interval_s = interval_s
        self._pending: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._task: asyncio.Task[None] | None = None

    def add(self, tenant: str, key_id: str, model: str, prompt: int, completion: int) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        tally = self._pending[(tenant, key_id, model, day)]
        tally[0] += 1
        tally[1] += prompt
        tally[2] += completion

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = dict(self._pending), defaultdict(lambda: [0, 0, 0])
        await anyio.to_thread.run_sync(self._write, batch)

    def _write(self, batch: dict[Key, list[int]]) -> None:
        with self.db.session(write=True) as s:
            for (tenant, key_id, model, day), (n, p, c) in batch.items():
                row = s.scalars(
                    select(UsageRow).where(
                        UsageRow.tenant == tenant,
                        UsageRow.key_id == key_id,
                        UsageRow.model == model,
                        UsageRow.day == day,
                    )
                ).first()
                if row is None:
                    row = UsageRow(
                        tenant=tenant,
                        key_id=key_id,
                        model=model,
                        day=day,
                        requests=0,
                        prompt_tokens=0,
                        completion_tokens=0,
                    )
                    s.add(row)
                row.requests += n
                row.prompt_tokens += p
                row.completion_tokens += c

    def start(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.flush()
                except Exception:
                    log.exception("usage flush failed")

        self._task = asyncio.create_task(loop(), name="usage-flush")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
