"""Files and fine-tuning, passed through to the training service with the caller's tenant.

Role integrator+ for everything (API.md). State changes are audited, and so are reads of a
file's content (training data is customer data). Creates honour ``Idempotency-Key``; a new job
is refused (429) while the tenant already runs ``max_jobs`` jobs. Uploads are streamed to the
training service and cut off at ``max_training_file_bytes`` (413).

The training service's answers are relayed as they come; each route names the wire model it
relays (``response_model``) and the body it forwards (``openapi_extra``), for the OpenAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, GatewayState, State
from gateway.domain.keys import Principal
from gateway.routes import proxy
from shared.bodylimit import upload_route
from shared.countlimit import MAX_ADAPTERS_HEADER, MAX_JOBS_HEADER
from shared.errors import RateLimited
from shared.openapi import BINARY, binary_response, json_body, multipart_body
from shared.schemas.common import ListResponse
from shared.schemas.training import (
    CheckpointOut,
    EventOut,
    FileDeleted,
    FileOut,
    JobCreate,
    JobOut,
    ModelSelectionOut,
    ModelSelectionRequest,
)

router = APIRouter(tags=["fine-tuning"])
TRAINING_FILE_LIMIT = "training_file"  # the body limit of POST /v1/files (gateway settings)
ACTIVE = {"validating_files", "queued", "running"}

READS: list[tuple[str, Any]] = [
    ("/v1/files", ListResponse[FileOut]),
    ("/v1/files/{file_id}", FileOut),
    ("/v1/fine_tuning/jobs", ListResponse[JobOut]),
    ("/v1/fine_tuning/jobs/{job_id}", JobOut),
    ("/v1/fine_tuning/jobs/{job_id}/events", ListResponse[EventOut]),
    ("/v1/fine_tuning/jobs/{job_id}/checkpoints", ListResponse[CheckpointOut]),
]
WRITES: list[tuple[str, str, Any]] = [
    ("DELETE", "/v1/files/{file_id}", FileDeleted),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", JobOut),
]
FILE_UPLOAD = multipart_body(
    {
        "file": {**BINARY, "description": "JSONL, CSV or a CRM/ERP export"},
        "purpose": {"type": "string", "enum": ["fine-tune"], "default": "fine-tune"},
        "mapping": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "column mapping as a JSON object (field -> source column)",
        },
    },
    ["file"],
    **upload_route(TRAINING_FILE_LIMIT),  # multipart, streamed through, 1 GiB by default
)
CREATES: list[tuple[str, Any, dict[str, Any]]] = [
    ("/v1/files", FileOut, FILE_UPLOAD),
    ("/v1/fine_tuning/jobs", JobOut, json_body(JobCreate)),
    ("/v1/fine_tuning/model_selection", ModelSelectionOut, json_body(ModelSelectionRequest)),
]


def _url(st: GatewayState) -> str:
    return st.settings.training_url


async def read(request: Request, st: State, who: Caller) -> Response:
    """Metadata reads; one job's data (the job, its events, its checkpoints) is audited."""
    who.require("write")
    resp = await proxy.forward(request, st, who, _url(st), "training")
    if request.url.path.startswith("/v1/fine_tuning/jobs/"):
        await proxy.record_audit(request, st, who, resp.status_code, action="job.data.read")
    return resp


async def read_content(request: Request, st: State, who: Caller) -> Response:
    """A file's content: customer data leaving the platform, so the read is audited."""
    who.require("write")
    resp = await proxy.forward(request, st, who, _url(st), "training")
    await proxy.record_audit(request, st, who, resp.status_code, action="file.content.read")
    return resp


async def write(request: Request, st: State, who: Caller) -> Response:
    who.require("write")
    resp = await proxy.forward(request, st, who, _url(st), "training")
    await proxy.record_audit(request, st, who, resp.status_code)
    return resp


async def _check_job_quota(st: GatewayState, who: Principal, limit: int) -> None:
    """Refuse early (the training service checks again, atomically with the insert)."""
    jobs = await proxy.list_all(st, who, _url(st), "/v1/fine_tuning/jobs", "training")
    running = sum(1 for j in jobs if j.get("status") in ACTIVE)
    if running >= limit:
        raise RateLimited(
            f"at most {limit} concurrent fine-tuning jobs per tenant; {running} are active",
            retry_after=60,
            code="job_quota_exceeded",
        )


async def create(request: Request, st: State, who: Caller) -> Response:
    who.require("write")
    body = await proxy.body_for(request, st)

    async def call() -> Response:
        extra = {}
        if request.url.path == "/v1/fine_tuning/jobs":
            limit = await st.quotas.count_limit(who, "max_jobs")
            await _check_job_quota(st, who, limit)
            extra[MAX_JOBS_HEADER] = str(limit)
            # the adapter the job will publish counts against the tenant's max_adapters
            extra[MAX_ADAPTERS_HEADER] = str(await st.quotas.count_limit(who, "max_adapters"))
        resp = await proxy.forward(
            request, st, who, _url(st), "training", body=body, extra_headers=extra
        )
        await proxy.record_audit(request, st, who, resp.status_code)
        return resp

    return await proxy.idempotent(request, st, who, body, call)


for _path, _model in READS:
    router.add_api_route(_path, read, methods=["GET"], response_model=_model)
router.add_api_route(
    "/v1/files/{file_id}/content",
    read_content,
    methods=["GET"],
    response_class=Response,
    responses=binary_response("application/octet-stream", "the file as uploaded"),
)
for _method, _path, _model in WRITES:
    router.add_api_route(_path, write, methods=[_method], response_model=_model)
for _path, _model, _extra in CREATES:
    router.add_api_route(
        _path, create, methods=["POST"], response_model=_model, openapi_extra=_extra
    )
