"""``/internal/runner/jobs/{id}/…``: what the Ray job runner calls (per-job bearer token).

The runner reads its spec and prepared data, streams events and checkpoints, and ends with a
result (adapter archive or full-model path) or a failure. Reports for a job that already
ended (cancelled meanwhile) are acknowledged and ignored, except the result (409).
"""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from services.training.deps import RunnerToken, State
from services.training.domain import files, jobs, results
from services.training.storage.tables import DatasetRow, JobRow
from shared.errors import InvalidRequest, NotFound
from shared.offloop import in_session
from shared.schemas.training import (
    JobCreate,
    RunnerCheckpoint,
    RunnerEvent,
    RunnerFailure,
    RunnerResult,
    RunnerSpec,
)
from shared.uploads import spool_upload

router = APIRouter(prefix="/internal/runner/jobs/{job_id}", tags=["runner"])


def _job(st: State, job_id: str, token: str) -> JobRow:
    with st.db.session() as s:
        return jobs.runner_job(s, job_id, token)


async def _job_off_loop(st: State, job_id: str, token: str) -> JobRow:
    return await anyio.to_thread.run_sync(_job, st, job_id, token)


@router.get("/spec", response_model=RunnerSpec)
async def spec(job_id: str, st: State, token: RunnerToken) -> RunnerSpec:
    row = await _job_off_loop(st, job_id, token)
    body = JobCreate.model_validate(row.request)
    base_path = await st.lifecycle.base_path(row.tenant, row.model)
    dataset_id = row.dataset_id
    ds = await in_session(st.db, lambda s: s.get(DatasetRow, dataset_id) if dataset_id else None)
    if ds is None or row.hyperparameters is None:
        raise NotFound(f"job {job_id} has no prepared dataset", code="dataset_not_found")
    labels = sorted((ds.report.get("labels") or {}).get("counts", {})) or None
    compare, version = None, await st.lifecycle.incumbent(row)
    if body.auto_promote is not None and version is not None:
        compare = body.auto_promote.alias
    hp = row.hyperparameters
    out_dir = st.settings.data_root() / "models" / job_id
    return RunnerSpec(
        job_id=job_id,
        task=body.task,
        method=body.training_method,
        base_model=row.model,
        base_model_path=base_path,
        hyperparameters={k: v for k, v in hp.items() if k != "learning_rate_multiplier"},
        lora=(body.lora.model_dump(exclude_none=True) if body.lora else {}),
        num_workers=body.resources.num_workers,
        use_gpu=body.resources.use_gpu,
        seed=row.seed,
        checkpoint_every=body.effective_hyperparameters().checkpoint_every or 0,
        labels=labels,
        model_output_dir=str(out_dir.resolve()),
        storage_path=st.settings.ray_storage(),
        compare_alias=compare,
        compare_version=version,
        sweep=body.sweep,
        prune=body.prune,
    )


@router.get("/data")
def splits(job_id: str, st: State, token: RunnerToken) -> dict[str, list[str]]:
    """The names of the splits the job's dataset has; each is read from ``/data/{split}``."""
    row = _job(st, job_id, token)
    if not row.dataset_id:
        raise NotFound(f"job {job_id} has no prepared dataset", code="dataset_not_found")
    return {"splits": files.dataset_splits(st.store, row.dataset_id)}


@router.get("/data/{split}")
def data(job_id: str, split: str, st: State, token: RunnerToken) -> Response:
    row = _job(st, job_id, token)
    if not row.dataset_id:
        raise NotFound(f"job {job_id} has no prepared dataset", code="dataset_not_found")
    chunks = files.dataset_split(st.store, row.tenant, row.dataset_id, split)
    return StreamingResponse(chunks, media_type="application/jsonl")


@router.get("/incumbent")
async def incumbent(job_id: str, st: State, token: RunnerToken) -> Response:
    """The archive of the version behind the job's auto_promote alias (to evaluate it)."""
    row = await _job_off_loop(st, job_id, token)
    path = await st.lifecycle.incumbent(row, download=True)
    if path is None:
        raise NotFound("no version behind the alias", code="no_incumbent")
    return FileResponse(path, background=BackgroundTask(path.unlink, missing_ok=True))


@router.post("/events")
def event(job_id: str, body: RunnerEvent, st: State, token: RunnerToken) -> dict[str, bool]:
    row = _job(st, job_id, token)
    if body.status == "running":
        moved = jobs.advance(st.db, row.id, "running", message=body.message, data=body.data)
        return {"accepted": moved}
    if row.status in ("succeeded", "failed", "cancelled"):
        return {"accepted": False}
    with st.db.session(write=True) as s:
        jobs.add_event(s, row.id, body.message, level=body.level, data=body.data)
    return {"accepted": True}


@router.post("/checkpoints")
def checkpoint(
    job_id: str, body: RunnerCheckpoint, st: State, token: RunnerToken
) -> dict[str, bool]:
    row = _job(st, job_id, token)
    if row.status in ("succeeded", "failed", "cancelled"):
        return {"accepted": False}
    jobs.add_checkpoint(st.db, row.id, body.step, body.metrics, body.path)
    return {"accepted": True}


@router.post("/failure")
def failure(job_id: str, body: RunnerFailure, st: State, token: RunnerToken) -> dict[str, bool]:
    row = _job(st, job_id, token)
    return {"accepted": jobs.fail(st.db, row.id, body.code, body.message)}


@router.post("/result")
async def result(
    job_id: str,
    st: State,
    token: RunnerToken,
    report: Annotated[str, Form(max_length=1 << 20)],
    archive: Annotated[UploadFile | None, File()] = None,
) -> dict[str, bool]:
    row = await _job_off_loop(st, job_id, token)
    try:
        parsed = RunnerResult.model_validate_json(report)
    except ValidationError as exc:
        raise InvalidRequest(f"report: {exc.errors()[0]['msg']}", param="report") from exc
    spooled = None
    if archive is not None:
        spooled = await anyio.to_thread.run_sync(
            lambda: spool_upload(
                archive.file,
                limit=st.settings.max_result_bytes,
                suffix=".tar.gz",
                what="result archive",
                param="archive",
                code="archive_too_large",
            )
        )
    try:
        path = spooled.path if spooled is not None else None
        await results.finish(
            st.db,
            st.lifecycle.registry,
            row.id,
            parsed,
            path,
            models_root=st.settings.data_root() / "models",
        )
    finally:
        if spooled is not None:
            spooled.unlink()
    return {"accepted": True}
