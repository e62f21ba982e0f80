"""``Erasures``: the training service's erasure runs, one at a time, on ``app.state``.

An erasure's two phases (:mod:`.erasure`) run in worker threads; between them the jobs
still running on the erased data are cancelled, so no runner writes a new checkpoint of it
after its copies were deleted. Before each new erasure, and once after start, erasures a
crash left pending are finished; their ids and items are part of the next answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio

from services.training.domain import erasure
from services.training.domain.erasure import ACTIVE, Erased
from services.training.domain.job_outputs import JobOutputs
from services.training.storage.files import BlobStore
from shared.db import Database
from shared.errors import TunefleetError

log = logging.getLogger(__name__)
Cancel = Callable[[str, str], Awaitable[None]]  # (tenant, job id)
Targets = Callable[[], set[str]]  # file ids to erase, computed in a worker thread


class Erasures:
    def __init__(
        self, db: Database, store: BlobStore, outputs: JobOutputs | None, cancel: Cancel
    ) -> None:
        self.db, self.store, self.outputs, self.cancel = db, store, outputs, cancel
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def run(self, targets: Targets) -> Erased:
        """Finish pending erasures, then erase the files ``targets`` finds."""
        async with self._lock:
            done = await self._resume()
            ids = await anyio.to_thread.run_sync(targets)
            erasure_id = await anyio.to_thread.run_sync(
                lambda: erasure.open_erasure(
                    self.db, ids, outputs=self.outputs is not None, versions=True
                )
            )
            done.merge(await self._complete(erasure_id))
            return done

    async def resume(self) -> Erased:
        """Finish every erasure left pending (a crash, a failed deletion)."""
        async with self._lock:
            return await self._resume()

    async def _resume(self) -> Erased:
        done = Erased()
        for erasure_id in await anyio.to_thread.run_sync(erasure.pending_ids, self.db):
            log.info("finishing an interrupted erasure", extra={"erasure": erasure_id})
            done.merge(await self._complete(erasure_id))
        return done

    async def _complete(self, erasure_id: str) -> Erased:
        await anyio.to_thread.run_sync(erasure.unlink_rows, self.db, erasure_id)
        plan = await anyio.to_thread.run_sync(erasure.plan_of, self.db, erasure_id)
        for job_id, (tenant, status) in sorted(plan["jobs"].items()):
            if status in ACTIVE:
                await self._cancel(tenant, job_id)
        return await anyio.to_thread.run_sync(
            erasure.remove_copies, self.db, self.store, self.outputs, erasure_id
        )

    async def _cancel(self, tenant: str, job_id: str) -> None:
        """Cancel a job running on the erased data. Its row ends ``cancelled`` before Ray is
        asked to stop it; Ray unreachable must not keep the data on disk, so that failure is
        logged and the erasure goes on (the runner's later reports are refused: job ended)."""
        try:
            await self.cancel(tenant, job_id)
        except TunefleetError as exc:
            log.warning(
                "could not stop a job's Ray run during erasure",
                extra={"job_id": job_id, "code": exc.code},
            )

    def start(self) -> None:
        """Finish what a crash left pending, in the background (failures are retried by the
        next erasure)."""

        async def once() -> None:
            try:
                await self.resume()
            except Exception:
                log.exception("could not finish an interrupted erasure")

        self._task = asyncio.create_task(once(), name="erasure-resume")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
