"""Right to erasure (GDPR art. 17): delete a tenant's or a data subject's training data and
every copy derived from it.

What goes: a matching raw file (found by :mod:`.erasure_scan`) is deleted whole (we do not
rewrite customer files line by line: the tenant re-uploads a cleaned export), with every
dataset derived from it, and every derived copy of the jobs that used them
(:mod:`.job_outputs`: Ray checkpoints, a killed runner's work dir, merged models). Jobs are
history and keep their rows, but every reference to an erased file reads ``"erased"``; the
ids of those jobs go back to the caller (the gateway) to find the adapter versions whose
lineage names them. Blobs are deleted from disk, not just unlinked from rows.

Crash safety: an erasure is a row (``ErasureRow``) written before anything is deleted.
Phase 1 unlinks the rows, one file per transaction, adding what it unlinked (files,
datasets, jobs) to the row's plan in the same transaction; phase 2 deletes the blobs and
copies the plan names (idempotent) and marks the row ``done``. A crash anywhere leaves it
``pending``, and :func:`resume_ids` lists it for the service to finish (at start and
before the next erasure): nothing a committed phase 1 unlinked stays on disk, and nothing
is reported done before it is gone.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, or_, select, update

from services.training.domain.erasure_scan import subject_files, subject_matcher, tenant_files
from services.training.domain.files import datasets_of, file_key, lock_files
from services.training.domain.ids import new_id
from services.training.domain.job_outputs import JobOutputs
from services.training.storage.files import BlobStore
from services.training.storage.tables import (
    CheckpointRow,
    DatasetRow,
    ErasureRow,
    FileRow,
    JobRow,
)
from shared.db import Database, now

__all__ = ["ACTIVE", "ERASED", "Erased", "erase_files", "subject_matcher"]

ERASED = "erased"  # what a job's training_file/validation_file reads after erasure
ACTIVE = ("validating_files", "queued", "running")
# test-only fault point (tests/fault/test_erasure_crash.py): kill -9 this process after
# the first file's rows are unlinked, before any blob is deleted
FAULT_ENV = "TUNEFLEET_TEST_FAULT"


@dataclass
class Erased:
    """What erasures removed. ``jobs`` maps job id → (tenant, status) of the jobs that used
    the data (kept, references marked erased); ``active_jobs`` are those still running."""

    files: list[tuple[str, str]] = field(default_factory=list)  # (tenant, file id)
    datasets: list[tuple[str, str]] = field(default_factory=list)  # (tenant, dataset id)
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)
    checkpoints: list[tuple[str, str]] = field(default_factory=list)  # (tenant, job id)
    runner_dirs: list[tuple[str, str]] = field(default_factory=list)  # (tenant, job id)
    models: list[tuple[str, str]] = field(default_factory=list)  # (tenant, base model id)
    erasures: list[str] = field(default_factory=list)  # erasure ids, all done

    def active_jobs(self) -> list[tuple[str, str]]:
        """(tenant, job id) of jobs that were still running on the erased data."""
        return [(t, j) for j, (t, status) in self.jobs.items() if status in ACTIVE]

    def merge(self, other: Erased) -> None:
        self.files += other.files
        self.datasets += other.datasets
        self.jobs |= other.jobs
        self.checkpoints += other.checkpoints
        self.runner_dirs += other.runner_dirs
        self.models += other.models
        self.erasures += other.erasures

    def counts(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            "datasets": len(self.datasets),
            "jobs": len(self.jobs),
            "checkpoints": len(self.checkpoints),
            "runner_dirs": len(self.runner_dirs),
            "models": len(self.models),
        }


# --- the log ---------------------------------------------------------------------------


def open_erasure(
    db: Database, targets: Iterable[str], *, outputs: bool, versions: bool = False
) -> str:
    """Record an erasure of these file ids (pending) before anything is deleted.
    ``versions``: the adapter versions trained on the data are to be deleted too (by the
    gateway, which settles the erasure once they are: ``unsettled``, ``settle``)."""
    plan: dict[str, Any] = {
        "targets": sorted(set(targets)),
        "files": {},
        "datasets": {},
        "jobs": {},
        "outputs": outputs,
    }
    if versions:
        plan["versions"] = OPEN
    with db.session(write=True) as s:
        row = ErasureRow(id=new_id("erasure"), status="pending", plan=plan)
        s.add(row)
        return row.id


def pending_ids(db: Database) -> list[str]:
    """Erasures a crash (or a failed deletion) left unfinished, oldest first."""
    with db.session() as s:
        q = select(ErasureRow.id).where(ErasureRow.status == "pending")
        return list(s.scalars(q.order_by(ErasureRow.id)))


def plan_of(db: Database, erasure_id: str) -> dict[str, Any]:
    with db.session() as s:
        row = s.get(ErasureRow, erasure_id)
        assert row is not None, erasure_id
        return dict(row.plan)


# --- the versions trained on the data (the gateway deletes them) -----------------------

OPEN, SETTLED = "open", "settled"  # plan["versions"]: not yet / all deleted by the gateway


@dataclass
class Unsettled:
    """Erasures done here whose adapter versions the gateway has not confirmed deleted (it
    crashed, or the registry failed): their ids, for the next answer to carry again."""

    erasures: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def unsettled(db: Database, *, besides: Iterable[str] = ()) -> Unsettled:
    """Done erasures whose versions are still open, oldest first (but ``besides``)."""
    skip = set(besides)
    out = Unsettled()
    with db.session() as s:
        q = select(ErasureRow).where(ErasureRow.status == "done").order_by(ErasureRow.id)
        for row in s.scalars(q):
            if row.id in skip or (row.plan or {}).get("versions") != OPEN:
                continue
            out.erasures.append(row.id)
            out.files += sorted(row.plan["files"])
            out.datasets += sorted(row.plan["datasets"])
            out.jobs += sorted(row.plan["jobs"])
    return out


def settle(db: Database, erasure_ids: Iterable[str]) -> list[str]:
    """Mark done erasures' versions deleted (the gateway deleted them); the ids settled."""
    done = []
    with db.session(write=True) as s:
        for erasure_id in sorted(set(erasure_ids)):
            row = s.get(ErasureRow, erasure_id)
            if row is None or row.status != "done" or (row.plan or {}).get("versions") != OPEN:
                continue
            row.plan = {**row.plan, "versions": SETTLED}  # a new object: the column sees it
            done.append(erasure_id)
    return done


# --- phase 1: rows -----------------------------------------------------------------------


def unlink_rows(db: Database, erasure_id: str) -> None:
    """Delete the rows of the erasure's target files and their datasets, mark the jobs that
    used them; what each transaction unlinked is added to the plan in that transaction."""
    targets = plan_of(db, erasure_id)["targets"]
    for n, file_id in enumerate(targets):
        _unlink_file(db, erasure_id, file_id)
        if n == 0 and os.environ.get(FAULT_ENV) == "erase_after_first_file":
            os.kill(os.getpid(), signal.SIGKILL)


def _unlink_file(db: Database, erasure_id: str, file_id: str) -> None:
    with db.session(write=True) as s:
        # locked first: a preparation committing a dataset of this file waits, or has
        # committed and is found below (files.prepare_dataset re-checks its sources)
        if not lock_files(s, [file_id]):
            return  # gone already (an earlier pass, a user's DELETE)
        row = s.get(FileRow, file_id)
        assert row is not None
        tenant = row.tenant
        derived = datasets_of(s, file_id)
        users = s.execute(
            select(JobRow.id, JobRow.status).where(
                or_(
                    JobRow.training_file == file_id,
                    JobRow.validation_file == file_id,
                    JobRow.dataset_id.in_(derived),
                )
            )
        ).all()
        s.execute(
            update(JobRow).where(JobRow.training_file == file_id).values(training_file=ERASED)
        )
        s.execute(
            update(JobRow).where(JobRow.validation_file == file_id).values(validation_file=ERASED)
        )
        s.execute(delete(DatasetRow).where(DatasetRow.id.in_(derived)))
        s.execute(delete(FileRow).where(FileRow.id == file_id))
        log = s.get(ErasureRow, erasure_id)
        assert log is not None
        plan = dict(log.plan)  # a new object: the JSON column sees the change
        plan["files"] = {**plan["files"], file_id: tenant}
        plan["datasets"] = {**plan["datasets"], **{d: tenant for d in derived}}
        plan["jobs"] = {**plan["jobs"], **{j: [tenant, st] for j, st in users}}
        log.plan = plan


# --- phase 2: bytes and copies -----------------------------------------------------------


def remove_copies(
    db: Database, store: BlobStore, outputs: JobOutputs | None, erasure_id: str
) -> Erased:
    """Delete every blob and derived copy the plan names, then mark the erasure done."""
    plan = plan_of(db, erasure_id)
    out = Erased(
        files=sorted((t, f) for f, t in plan["files"].items()),
        datasets=sorted((t, d) for d, t in plan["datasets"].items()),
        jobs={j: (t, st) for j, (t, st) in sorted(plan["jobs"].items())},
        erasures=[erasure_id],
    )
    for _, ds in out.datasets:
        store.delete(f"datasets/{ds}")  # the folder of every split
    for _, f in out.files:
        store.delete(file_key(f))
    if plan["outputs"] and outputs is not None:
        _remove_job_copies(db, outputs, out)
    with db.session(write=True) as s:
        row = s.get(ErasureRow, erasure_id)
        assert row is not None
        row.status, row.finished_at = "done", now()
        row.report = out.counts()
    return out


def _remove_job_copies(db: Database, outputs: JobOutputs, out: Erased) -> None:
    with db.session() as s:
        q = select(JobRow.id, JobRow.fine_tuned_model, JobRow.result)
        results = {j: (m, r) for j, m, r in s.execute(q.where(JobRow.id.in_(list(out.jobs))))}
    for job_id, (tenant, _) in out.jobs.items():
        gone = outputs.remove(job_id)
        if gone.run:
            out.checkpoints.append((tenant, job_id))
        if gone.runner_dirs:
            out.runner_dirs.append((tenant, job_id))
        model, result = results.get(job_id, (None, None))
        if model and (result or {}).get("registered_as") == "base_model":
            out.models.append((tenant, model))  # its weights were the model dir
            outputs.remove_fetched(model)  # and any copy fetched back to train on it
    with db.session(write=True) as s:  # their paths pointed into the deleted runs
        s.execute(delete(CheckpointRow).where(CheckpointRow.job_id.in_(list(out.jobs))))


# --- entry points ----------------------------------------------------------------------


def erase_files(
    db: Database, store: BlobStore, file_ids: Iterable[str], outputs: JobOutputs | None = None
) -> Erased:
    """Both phases at once, for callers that need not stop jobs in between (the retention
    purge, which never takes files a running job reads)."""
    erasure_id = open_erasure(db, file_ids, outputs=outputs is not None)
    unlink_rows(db, erasure_id)
    return remove_copies(db, store, outputs, erasure_id)


def tenant_targets(db: Database, tenant: str) -> set[str]:
    """Every file of ``tenant``."""
    return tenant_files(db, tenant)


def subject_targets(
    db: Database, store: BlobStore, *, email: str | None, subject_id: str | None
) -> set[str]:
    """Every file (any tenant) that mentions the subject, or whose datasets do."""
    return subject_files(db, store, subject_matcher(email, subject_id))
