"""Data retention: uploaded files and prepared datasets older than a tenant's retention
period are purged by a periodic task of the training service.

Where the setting lives: in the training database (``training_retention``), set by the
gateway through ``PUT /internal/retention/{tenant}`` (the gateway's ``/admin/retention``
validates the tenant, audits the change and forwards it). The purge runs next to the data
it deletes, so it needs no other service to be up, and the gateway stays the only public
writer. A tenant without a row keeps everything.

The clock is injected (``now``), so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from sqlalchemy import BigInteger, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from services.training.domain.erasure import ACTIVE, erase_files
from services.training.storage.files import BlobStore
from services.training.storage.tables import Base, DatasetRow, FileRow, JobRow
from shared.db import Database

log = logging.getLogger(__name__)
DAY_S = 86_400
Clock = Callable[[], float]


class RetentionRow(Base):
    """How long a tenant's training data is kept (migration 0003)."""

    __tablename__ = "training_retention"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(BigInteger)


def set_retention(db: Database, tenant: str, days: int | None, *, now: Clock = time.time) -> None:
    """Set (or with ``None`` clear) the retention of ``tenant``'s files and datasets."""
    with db.session(write=True) as s:
        if days is None:
            s.execute(delete(RetentionRow).where(RetentionRow.tenant == tenant))
            return
        row = s.get(RetentionRow, tenant)
        if row is None:
            s.add(RetentionRow(tenant=tenant, days=days, updated_at=int(now())))
        else:
            row.days, row.updated_at = days, int(now())


def get_retention(db: Database, tenant: str) -> int | None:
    with db.session() as s:
        row = s.get(RetentionRow, tenant)
        return row.days if row else None


@dataclass
class Purged:
    files: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def purge_expired(db: Database, store: BlobStore, now: Clock) -> Purged:
    """Delete every file and dataset older than its tenant's retention (at ``now()``).

    Files go through the erasure path (their datasets go with them, jobs keep their rows
    with the reference marked erased). A dataset can outlive a file only when it was made
    from a newer file plus an old validation file; it is caught by the file pass, and the
    dataset pass below deletes any expired dataset left regardless.
    """
    out = Purged()
    with db.session() as s:
        policies = [(r.tenant, r.days) for r in s.scalars(select(RetentionRow))]
    for tenant, days in policies:
        cutoff = int(now()) - days * DAY_S
        with db.session() as s:
            old_files: set[str] = set(
                s.scalars(
                    select(FileRow.id).where(FileRow.tenant == tenant, FileRow.created_at < cutoff)
                )
            )
            busy = in_use(s, tenant)
        old_files -= busy
        erased = erase_files(db, store, old_files)
        out.files += [f for _, f in erased.files]
        out.datasets += [d for _, d in erased.datasets]
        with db.session(write=True) as s:
            old_ds = [
                d
                for d in s.scalars(
                    select(DatasetRow.id).where(
                        DatasetRow.tenant == tenant, DatasetRow.created_at < cutoff
                    )
                )
                if d not in busy
            ]
            s.execute(delete(DatasetRow).where(DatasetRow.id.in_(old_ds)))
        for ds in old_ds:
            store.delete(f"datasets/{ds}")  # the folder of every split
        out.datasets += old_ds
    return out


def in_use(s: Session, tenant: str) -> set[str]:
    """Files and datasets a running job still reads: kept until it ends (the next pass
    takes them), so the schedule never breaks a job; an erasure request, by contrast,
    cancels such jobs."""
    q = select(JobRow.training_file, JobRow.validation_file, JobRow.dataset_id).where(
        JobRow.tenant == tenant, JobRow.status.in_(ACTIVE)
    )
    return {x for row in s.execute(q) for x in row if x}


class RetentionPurger:
    """The periodic purge, an asyncio task of the service's lifespan (``start``/``aclose``).

    ``run_once`` is the unit the loop repeats and what tests call with a fake clock.
    """

    def __init__(
        self, db: Database, store: BlobStore, *, interval_s: float, now: Clock = time.time
    ) -> None:
        self.db, self.store, self.interval_s, self.now = db, store, interval_s, now
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> Purged:
        purged = await anyio.to_thread.run_sync(purge_expired, self.db, self.store, self.now)
        if purged.files or purged.datasets:
            # counts only: ids are harmless but the log is no inventory of customer data
            log.info(
                "retention purge",
                extra={"files": len(purged.files), "datasets": len(purged.datasets)},
            )
        return purged

    async def sweep_partial_writes(self) -> int:
        """Storage housekeeping on the same schedule: temp files of blob writes a crash cut
        short (never read; see ``BlobStore.sweep_partial``)."""
        swept = await anyio.to_thread.run_sync(self.store.sweep_partial)
        if swept:
            log.info("removed partial blob writes left by a crash", extra={"count": swept})
        return swept

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.run_once()
                    await self.sweep_partial_writes()
                except Exception:  # a failed pass is retried next interval, never fatal
                    log.exception("retention purge failed")
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(loop(), name="retention-purge")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
