"""Training tables (owner: training; nobody else reads them)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared import db
from shared.db import now


class Base(db.Base):
    __abstract__ = True  # with a MetaData of its own (see shared.db.Base), its own Alembic


class FileRow(Base):
    """An uploaded file; the bytes live in the blob store under ``blob``."""

    __tablename__ = "training_files"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_file_idem"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    mapping: Mapped[dict[str, str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # processed | error
    status_details: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # PrepReport of the check
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class DatasetRow(Base):
    """An immutable prepared dataset (``ds-…``): train/validation/test JSONL + its PrepReport."""

    __tablename__ = "training_datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    file_id: Mapped[str] = mapped_column(
        ForeignKey("training_files.id", ondelete="CASCADE"), index=True
    )
    validation_file_id: Mapped[str | None] = mapped_column(String(40), index=True)
    test_file_id: Mapped[str | None] = mapped_column(String(40), index=True)
    task: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class JobRow(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_job_idem"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    model: Mapped[str] = mapped_column(String(64))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    dataset_id: Mapped[str | None] = mapped_column(String(40))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    # the validated request (task, method, hyperparameters, lora, resources, sweep, ...)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # resolved "auto"
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    ray_job_id: Mapped[str | None] = mapped_column(String(64))
    runner_token_sha256: Mapped[str] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(200))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # the tenant's max_adapters when the job was created (X-Tunefleet-Max-Adapters): the
    # adapter the job publishes is counted against it (migration 0006)
    max_adapters: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class EventRow(Base):
    __tablename__ = "training_job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True
    )
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class CheckpointRow(Base):
    __tablename__ = "training_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)


class ErasureRow(Base):
    """One erasure (a subject's, a tenant's, a retention purge), written *before* anything
    is deleted: ``pending`` until every row, blob and derived copy in ``plan`` is gone, then
    ``done``. A crash leaves it pending; the service finishes it on start and before the
    next erasure (migration 0005)."""

    __tablename__ = "training_erasures"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | done
    # {"files": {id: tenant}, "datasets": {id: tenant}, "jobs": {id: [tenant, status]},
    #  "outputs": bool}: ids only, never the subject
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # counts, once done
    created_at: Mapped[int] = mapped_column(BigInteger, default=now)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
