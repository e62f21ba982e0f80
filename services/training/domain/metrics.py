"""Training metrics: jobs by status, read from SQL at scrape time (the table is the truth,
so a restarted service reports the same numbers). Labels: the six job statuses only.

``tunefleet_training_jobs_finished_total{status}`` counts jobs in a final state, for rates and
alerts (``increase(...{status="failed"}[1h])``); it only drops when a tenant's jobs are erased,
which Prometheus reads as a counter reset."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from services.training.storage.tables import FileRow, JobRow
from shared.db import Database
from shared.schemas.training import TERMINAL_STATUSES, JobStatus

STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


class JobsCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
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
        finished = CounterMetricFamily(
            "tunefleet_training_jobs_finished", "Jobs that reached a final state", labels=["status"]
        )
        for status in sorted(TERMINAL_STATUSES):
            finished.add_metric([status], float(counts.get(status, 0)))
        yield finished
        yield GaugeMetricFamily("tunefleet_training_files", "Uploaded files", value=float(n_files))


def register(registry: CollectorRegistry, db: Database) -> JobsCollector:
    collector = JobsCollector(db)
    registry.register(collector)
    return collector
