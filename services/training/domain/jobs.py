"""Fine-tuning jobs in SQL: create, read, list, state transitions, events, checkpoints.

Transitions only move forward (validating_files → queued → running → terminal); once a
job is terminal nothing changes it again, which makes cancel idempotent and lets late
reports from a runner (after a cancel, or retried after a restart) be ignored safely.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.training.domain import hyper
from services.training.domain.ids import new_id
from services.training.storage.tables import CheckpointRow, EventRow, JobRow
from shared.countlimit import lock_tenant
from shared.db import Database, now
from shared.errors import NotFound, RateLimited, Unauthorized
from shared.schemas.training import (
    TERMINAL_STATUSES,
    CheckpointOut,
    EventOut,
    JobCreate,
    JobError,
    JobOut,
)

ORDER = ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE = ("validating_files", "queued", "running")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_job(
    db: Database,
    tenant: str,
    body: JobCreate,
    seed: int,
    idempotency_key: str | None = None,
    max_jobs: int | None = None,
    max_adapters: int | None = None,
) -> tuple[JobRow, str | None]:
    """Insert a job (``validating_files``); returns it and the runner's one-job token.

    A repeated ``idempotency_key`` returns the first job and no token (nothing to launch).
    ``max_jobs``: the tenant's limit of active jobs (429 at it), counted atomically with the
    insert (``shared.countlimit``). ``max_adapters``: the tenant's adapter limit, kept with
    the job and sent with the push of its result (a new adapter beyond it is refused).
    """
    if idempotency_key:
        with db.session() as s:
            if (first := find_by_key(s, tenant, idempotency_key)) is not None:
                return first, None
    token = secrets.token_urlsafe(32)
    row = JobRow(
        id=new_id("ftjob"),
        tenant=tenant,
        status="validating_files",
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=seed,
        request=body.model_dump(mode="json", exclude_none=True),
        metadata_=body.metadata,
        runner_token_sha256=token_hash(token),
        idempotency_key=idempotency_key,
        max_adapters=max_adapters,
    )
    try:
        with db.session(write=True) as s:
            if max_jobs is not None:
                _check_job_room(s, tenant, max_jobs)
            s.add(row)
            s.flush()  # no ORM relationship orders the inserts: the job row goes first
            s.add(
                EventRow(job_id=row.id, level="info", message=f"Created fine-tuning job: {row.id}")
            )
    except IntegrityError:  # a concurrent retry with the same key won
        with db.session() as s:
            first = find_by_key(s, tenant, idempotency_key or "")
        if first is None:
            raise
        return first, None
    return row, token


def _check_job_room(s: Session, tenant: str, limit: int) -> None:
    """429 while ``tenant`` has ``limit`` active jobs; holds the tenant's job-count lock until
    the transaction (which inserts the new job) ends."""
    lock_tenant(s, "jobs", tenant)
    active = (
        s.scalar(
            select(func.count(JobRow.id)).where(JobRow.tenant == tenant, JobRow.status.in_(ACTIVE))
        )
        or 0
    )
    if active >= limit:
        raise RateLimited(
            f"at most {limit} concurrent fine-tuning jobs per tenant; {active} are active",
            retry_after=60,
            code="job_quota_exceeded",
        )


def find_by_key(s: Session, tenant: str, key: str) -> JobRow | None:
    q = select(JobRow).where(JobRow.tenant == tenant, JobRow.idempotency_key == key)
    return s.scalars(q).first()


def get_job(s: Session, tenant: str, job_id: str) -> JobRow:
    row = s.get(JobRow, job_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"no fine-tuning job {job_id!r}", param="job_id", code="job_not_found")
    return row


def runner_job(s: Session, job_id: str, token: str) -> JobRow:
    """The job a runner reports for, if its bearer token is that job's token."""
    row = s.get(JobRow, job_id)
    if row is None or not hmac.compare_digest(row.runner_token_sha256, token_hash(token)):
        raise Unauthorized("invalid runner token", code="invalid_runner_token")
    return row


def list_jobs(s: Session, tenant: str, after: str | None, limit: int) -> tuple[list[JobRow], bool]:
    q = select(JobRow).where(JobRow.tenant == tenant)
    if after:
        q = q.where(JobRow.id < after)
    rows = list(s.scalars(q.order_by(JobRow.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def active_jobs(s: Session) -> list[JobRow]:
    return list(s.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE)).order_by(JobRow.id)))


def add_event(
    s: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    s.add(EventRow(job_id=job_id, level=level, message=message[:2000], data=data))


def advance(
    db: Database,
    job_id: str,
    status: str,
    *,
    message: str | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move ``job_id`` forward to ``status`` (with ``fields``); False if it cannot move."""
    with db.session(write=True) as s:
        row = s.get(JobRow, job_id)
        if row is None or row.status in TERMINAL_STATUSES:
            return False
        if ORDER.index(status) < ORDER.index(row.status):
            return False
        row.status = status
        for key, value in fields.items():
            setattr(row, key, value)
        if status in TERMINAL_STATUSES:
            row.finished_at = now()
        if message:
            add_event(s, job_id, message, level=level, data=data)
    return True


def fail(db: Database, job_id: str, code: str, message: str, param: str | None = None) -> bool:
    err = {"code": code, "message": message, "param": param}
    return advance(db, job_id, "failed", message=f"Job failed: {message}", level="error", error=err)


def job_out(row: JobRow) -> JobOut:
    req = row.request
    resources = req.get("resources") or {"num_workers": 2, "use_gpu": False}
    hp = (
        hyper.public(row.hyperparameters, int(resources.get("num_workers", 1)))
        if row.hyperparameters
        else (
            req.get("hyperparameters")
            or {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
        )
    )
    return JobOut(
        id=row.id,
        created_at=row.created_at,
        finished_at=row.finished_at,
        model=row.model,
        fine_tuned_model=row.fine_tuned_model,
        organization_id=row.tenant,
        status=row.status,  # type: ignore[arg-type]
        training_file=row.training_file,
        validation_file=row.validation_file,
        test_file=req.get("test_file"),
        hyperparameters=hp,
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
        trained_tokens=row.trained_tokens,
        error=JobError(**row.error) if row.error else None,
        result=row.result,
        seed=row.seed,
        suffix=row.suffix,
        metadata=row.metadata_,
        task=req.get("task", "generation"),
        training_method=req.get("training_method", "lora"),
        lora=req.get("lora"),
        resources=resources,
        sweep=req.get("sweep"),
        prune=req.get("prune"),
        auto_promote=req.get("auto_promote"),
        dataset_id=row.dataset_id,
    )


def list_events(
    s: Session, job_id: str, after: str | None, limit: int
) -> tuple[list[EventRow], bool]:
    """Newest first, like OpenAI's events list; ``after`` is an ``ftevent-<n>`` id."""
    q = select(EventRow).where(EventRow.job_id == job_id)
    if after:
        q = q.where(EventRow.id < _seq(after, "ftevent"))
    rows = list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def event_out(row: EventRow) -> EventOut:
    data = row.data or None
    return EventOut(
        id=f"ftevent-{row.id}",
        created_at=row.created_at,
        level=row.level,  # type: ignore[arg-type]
        message=row.message,
        type="metrics" if data and "step" in data else "message",
        data=data,
    )


def add_checkpoint(
    db: Database, job_id: str, step: int, metrics: dict[str, Any], path: str | None
) -> None:
    with db.session(write=True) as s:
        s.add(CheckpointRow(job_id=job_id, step=step, metrics=metrics, path=path))


def list_checkpoints(
    s: Session, job_id: str, after: str | None, limit: int
) -> tuple[list[CheckpointRow], bool]:
    q = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    if after:
        q = q.where(CheckpointRow.id < _seq(after, "ftckpt"))
    rows = list(s.scalars(q.order_by(CheckpointRow.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoint_out(row: CheckpointRow) -> CheckpointOut:
    return CheckpointOut(
        id=f"ftckpt-{row.id}",
        created_at=row.created_at,
        fine_tuning_job_id=row.job_id,
        fine_tuned_model_checkpoint=f"{row.job_id}:step-{row.step}",
        step_number=row.step,
        metrics=row.metrics,
    )


def _seq(cursor: str, prefix: str) -> int:
    head, _, num = cursor.partition("-")
    if head != prefix or not num.isdigit():
        from shared.errors import InvalidRequest

        raise InvalidRequest(f"after must be a {prefix}-<n> id", param="after")
    return int(num)
