"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import secrets
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query
from sqlalchemy.orm import Session

from services.training.deps import State
from services.training.domain import files, jobs
from shared.auth import TenantId
from shared.countlimit import MAX_ADAPTERS_HEADER, MAX_JOBS_HEADER
from shared.errors import InvalidRequest
from shared.offloop import in_session
from shared.schemas.common import DEFAULT_LIMIT, MAX_LIMIT, ListResponse
from shared.schemas.training import CheckpointOut, EventOut, JobCreate, JobOut

router = APIRouter(tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post("/v1/fine_tuning/jobs", response_model=JobOut, status_code=200)
async def create_job(
    body: JobCreate,
    st: State,
    tenant: TenantId,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    max_jobs: Annotated[
        int | None, Header(alias=MAX_JOBS_HEADER, ge=1, include_in_schema=False)
    ] = None,
    max_adapters: Annotated[
        int | None, Header(alias=MAX_ADAPTERS_HEADER, ge=1, include_in_schema=False)
    ] = None,
) -> JobOut:
    """``X-Tunefleet-Max-Jobs`` (sent by the gateway): the tenant's limit of active jobs,
    counted atomically with the insert; absent: no limit here. ``X-Tunefleet-Max-Adapters``:
    the tenant's adapter limit, applied when the job publishes its adapter."""

    # What can be checked now is checked now (400 naming the field, nothing stored); the
    # data itself is validated by the job (validating_files → failed invalid_training_file).
    def check_files(s: Session) -> None:
        files.get_file(s, tenant, body.training_file, param="training_file")
        if body.validation_file:
            files.get_file(s, tenant, body.validation_file, param="validation_file")
        if body.test_file:
            files.get_file(s, tenant, body.test_file, param="test_file")

    await in_session(st.db, check_files)
    if body.resources.num_workers > st.settings.max_workers:
        raise InvalidRequest(
            f"resources.num_workers must be <= {st.settings.max_workers}",
            param="resources.num_workers",
        )
    if body.lora is not None and body.training_method not in ("lora", "hybrid"):
        raise InvalidRequest(
            f"lora settings apply to training_method lora or hybrid, not {body.training_method!r}",
            param="lora",
        )
    if body.auto_promote is not None and body.training_method != "lora":
        raise InvalidRequest(
            "auto_promote needs an adapter result (training_method lora)", param="auto_promote"
        )
    _check_sweep_prune(body)
    await st.lifecycle.base_model(tenant, body.model)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31 - 1)
    row, token = await anyio.to_thread.run_sync(
        jobs.create_job, st.db, tenant, body, seed, idempotency_key, max_jobs, max_adapters
    )
    if token is None:  # a retry: answer with the job as it is now
        return await in_session(st.db, lambda s: jobs.job_out(jobs.get_job(s, tenant, row.id)))
    st.lifecycle.launch(row.id, token)
    return jobs.job_out(row)


@router.get("/v1/fine_tuning/jobs", response_model=ListResponse[JobOut])
def list_jobs(
    st: State, tenant: TenantId, after: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[JobOut]:
    with st.db.session() as s:
        rows, more = jobs.list_jobs(s, tenant, after, limit)
        return ListResponse(data=[jobs.job_out(r) for r in rows], has_more=more)


@router.get("/v1/fine_tuning/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, st: State, tenant: TenantId) -> JobOut:
    with st.db.session() as s:
        return jobs.job_out(jobs.get_job(s, tenant, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(job_id: str, st: State, tenant: TenantId) -> JobOut:
    await st.lifecycle.cancel(tenant, job_id)
    return await in_session(st.db, lambda s: jobs.job_out(jobs.get_job(s, tenant, job_id)))


@router.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=ListResponse[EventOut])
def list_events(
    job_id: str, st: State, tenant: TenantId, after: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[EventOut]:
    with st.db.session() as s:
        jobs.get_job(s, tenant, job_id)
        rows, more = jobs.list_events(s, job_id, after, limit)
        return ListResponse(data=[jobs.event_out(r) for r in rows], has_more=more)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", response_model=ListResponse[CheckpointOut])
def list_checkpoints(
    job_id: str, st: State, tenant: TenantId, after: str | None = None, limit: Limit = DEFAULT_LIMIT
) -> ListResponse[CheckpointOut]:
    with st.db.session() as s:
        jobs.get_job(s, tenant, job_id)
        rows, more = jobs.list_checkpoints(s, job_id, after, limit)
        return ListResponse(data=[jobs.checkpoint_out(r) for r in rows], has_more=more)


def _check_sweep_prune(body: JobCreate) -> None:
    """The Ray Tune / pruning blocks, validated by their own parsers (errors name the field)."""
    if body.sweep is not None:
        from services.training.ray.sweep import parse_sweep

        parse_sweep(body.sweep, task=body.task, has_validation=True)
    if body.prune is not None:
        from services.training.ray.prune import parse_prune

        parse_prune(body.prune)
        if body.training_method not in ("lora", "hybrid"):
            raise InvalidRequest(
                "prune shrinks LoRA adapters: use training_method lora or hybrid",
                param="prune",
            )
