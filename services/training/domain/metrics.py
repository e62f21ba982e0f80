"""Training metrics: jobs by status, read from SQL at scrape time (the table is the truth,
so a restarted service reports the same numbers). Labels: the six job statuses only."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.training.storage.tables import FileRow, JobRow
from shared.db import Database
from shared.schemas.training import JobStatus

STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


class JobsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "tunefleet_training_jobs", "Fine-tuning jobs by status", labels=["status"]
        )
        with self.db.session() as s:
            counts = dict(
                s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
            )
            n_files = s.scalar(select(func.count()).select_from(FileRow)) or 0
        for status in STATUSES:
            jobs.add_metric([status], float(counts.get(status, 0)))
        yield jobs
        yield GaugeMetricFamily("tunefleet_training_files", "Uploaded files", value=float(n_files))


def register(registry: CollectorRegistry, db: Database) -> JobsCollector:
    collector = JobsCollector(db)
    registry.register(collector)
    return collector
