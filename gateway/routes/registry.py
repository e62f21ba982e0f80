"""Adapter registry routes, passed through with the caller's tenant (API.md: registry).

Reads need role app+; state changes integrator+, are audited with their outcome, and creates
honour ``Idempotency-Key`` and the tenant's ``max_adapters`` quota."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, State
from gateway.routes import proxy
from shared.bodylimit import UPLOAD_ROUTE
from shared.errors import RateLimited

router = APIRouter(tags=["adapters"])

READS = [
    "/v1/adapters",
    "/v1/adapters/{name}",
    "/v1/adapters/{name}/versions",
    "/v1/adapters/{name}/versions/{version}",
    "/v1/adapters/{name}/versions/{version}/archive",
    "/v1/adapters/{name}/alias-moves",
    "/v1/adapters/{name}/aliases/{alias}",
    "/v1/webhooks",
]
WRITES = [
    ("DELETE", "/v1/adapters/{name}"),
    ("PUT", "/v1/adapters/{name}/aliases/{alias}"),
    ("DELETE", "/v1/adapters/{name}/aliases/{alias}"),
]
CREATES = ["/v1/adapters", "/v1/adapters/{name}/versions", "/v1/webhooks"]


async def read(request: Request, st: State, who: Caller) -> Response:
    who.require("read")
    return await proxy.forward(request, st, who, st.settings.registry_url, "registry")


@router.get("/v1/base-models")
async def base_models(st: State, who: Caller) -> dict[str, Any]:
    """The catalog, without the registry host's model directories (``path``): clients name
    base models by id; where they live on a server is nobody else's business."""
    who.require("read")
    models = await st.registry.list_base_models(who.tenant)
    data = [m.model_dump(exclude={"path"}) for m in models]
    return {"object": "list", "data": data, "has_more": False}


async def write(request: Request, st: State, who: Caller) -> Response:
    """State changes are forwarded, then audited with their outcome."""
    who.require("write")
    resp = await proxy.forward(request, st, who, st.settings.registry_url, "registry")
    await proxy.record_audit(request, st, who, resp.status_code)
    return resp


async def _check_adapter_quota(request: Request, st: State, who: Caller) -> None:
    """Refuse a create that would add an adapter beyond the tenant's (or key's) limit."""
    limit = await st.quotas.count_limit(who, "max_adapters")
    existing = await proxy.list_all(
        st, who, st.settings.registry_url, "/v1/adapters", "registry", cursor="name"
    )
    name = request.path_params.get("name")
    if name is not None and any(a["name"] == name for a in existing):
        return  # a new version of an existing adapter adds no adapter
    if len(existing) >= limit:
        raise RateLimited(
            f"adapter quota reached: at most {limit} adapters per tenant; delete one or ask an "
            "admin to raise max_adapters",
            retry_after=60,
            code="adapter_quota_exceeded",
        )


async def create(request: Request, st: State, who: Caller) -> Response:
    """Creates: idempotent (``Idempotency-Key``), quota-checked, audited."""
    who.require("write")
    body = await proxy.body_for(request, st)

    async def call() -> Response:
        if request.url.path != "/v1/webhooks":
            await _check_adapter_quota(request, st, who)
        resp = await proxy.forward(
            request, st, who, st.settings.registry_url, "registry", body=body
        )
        await proxy.record_audit(request, st, who, resp.status_code)
        return resp

    return await proxy.idempotent(request, st, who, body, call)


for _path in READS:
    router.add_api_route(_path, read, methods=["GET"])
for _method, _path in WRITES:
    router.add_api_route(_path, write, methods=[_method])
for _path in CREATES:
    extra = (
        UPLOAD_ROUTE if _path == "/v1/adapters/{name}/versions" else None
    )  # multipart, streamed through
    router.add_api_route(_path, create, methods=["POST"], openapi_extra=extra)
