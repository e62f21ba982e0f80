"""Files and fine-tuning, passed through to the training service with the caller's tenant.

Role integrator+ for everything (API.md). State changes are audited, and so are reads of a
file's content (training data is customer data). Creates honour ``Idempotency-Key``; a new job
is refused (429) while the tenant already runs ``max_jobs`` jobs. Uploads are streamed to the
training service and cut off at ``max_upload_bytes`` (413).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, GatewayState, State
from gateway.domain.keys import Principal
from gateway.routes import proxy
from shared.bodylimit import UPLOAD_ROUTE
from shared.errors import RateLimited

router = APIRouter(tags=["fine-tuning"])
ACTIVE = {"validating_files", "queued", "running"}

READS = [
    "/v1/files",
    "/v1/files/{file_id}",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/jobs/{job_id}",
    "/v1/fine_tuning/jobs/{job_id}/events",
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
]
WRITES = [
    ("DELETE", "/v1/files/{file_id}"),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"),
]
CREATES = ["/v1/files", "/v1/fine_tuning/jobs", "/v1/fine_tuning/model_selection"]


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


async def _check_job_quota(st: GatewayState, who: Principal) -> None:
    limit = await st.quotas.count_limit(who, "max_jobs")
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
        if request.url.path == "/v1/fine_tuning/jobs":
            await _check_job_quota(st, who)
        resp = await proxy.forward(request, st, who, _url(st), "training", body=body)
        await proxy.record_audit(request, st, who, resp.status_code)
        return resp

    return await proxy.idempotent(request, st, who, body, call)


for _path in READS:
    router.add_api_route(_path, read, methods=["GET"])
router.add_api_route("/v1/files/{file_id}/content", read_content, methods=["GET"])
for _method, _path in WRITES:
    router.add_api_route(_path, write, methods=[_method])
for _path in CREATES:
    extra = UPLOAD_ROUTE if _path == "/v1/files" else None  # multipart, streamed through
    router.add_api_route(_path, create, methods=["POST"], openapi_extra=extra)
