"""Adapter registry routes, passed through with the caller's tenant (API.md: registry).

Reads need role app+; state changes integrator+, are audited with their outcome, and creates
honour ``Idempotency-Key`` and the tenant's ``max_adapters`` quota.

The registry's answers are relayed as they come (bytes, not re-serialized), so each route
names the wire model it relays (``response_model``, for the OpenAPI) and the request body it
forwards (``openapi_extra``: the body is streamed, never parsed here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, State
from gateway.routes import proxy
from shared.bodylimit import UPLOAD_ROUTE
from shared.countlimit import MAX_ADAPTERS_HEADER
from shared.errors import RateLimited
from shared.openapi import BINARY, binary_response, json_body, multipart_body, schema_of
from shared.schemas.common import Deleted, ListResponse
from shared.schemas.registry import (
    AdapterCreate,
    AdapterOut,
    AdapterVersionOut,
    AliasMoveOut,
    AliasOut,
    AliasSet,
    BaseModelPublic,
    VersionMetadata,
    WebhookCreate,
    WebhookOut,
)

router = APIRouter(tags=["adapters"])


async def read(request: Request, st: State, who: Caller) -> Response:
    who.require("read")
    return await proxy.forward(request, st, who, st.settings.registry_url, "registry")


@router.get("/v1/base-models")
async def base_models(st: State, who: Caller) -> ListResponse[BaseModelPublic]:
    """The catalog, without the registry host's model directories (``path``): clients name
    base models by id; where they live on a server is nobody else's business."""
    who.require("read")
    models = await st.registry.list_base_models(who.tenant)
    return ListResponse(data=[BaseModelPublic(**m.model_dump(exclude={"path"})) for m in models])


async def write(request: Request, st: State, who: Caller) -> Response:
    """State changes are forwarded, then audited with their outcome."""
    who.require("write")
    resp = await proxy.forward(request, st, who, st.settings.registry_url, "registry")
    await proxy.record_audit(request, st, who, resp.status_code)
    return resp


async def _check_adapter_quota(request: Request, st: State, who: Caller, limit: int) -> None:
    """Refuse early a create that would add an adapter beyond the tenant's (or key's) limit
    (the registry checks again, atomically with the insert: ``shared.countlimit``)."""
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
        extra = {}
        if request.url.path != "/v1/webhooks":
            limit = await st.quotas.count_limit(who, "max_adapters")
            await _check_adapter_quota(request, st, who, limit)
            extra[MAX_ADAPTERS_HEADER] = str(limit)
        resp = await proxy.forward(
            request, st, who, st.settings.registry_url, "registry", body=body, extra_headers=extra
        )
        await proxy.record_audit(request, st, who, resp.status_code)
        return resp

    return await proxy.idempotent(request, st, who, body, call)


READS: list[tuple[str, Any]] = [
    ("/v1/adapters", ListResponse[AdapterOut]),
    ("/v1/adapters/{name}", AdapterOut),
    ("/v1/adapters/{name}/versions", ListResponse[AdapterVersionOut]),
    ("/v1/adapters/{name}/versions/{version}", AdapterVersionOut),
    ("/v1/adapters/{name}/versions/{version}/archive", None),  # bytes: see below
    ("/v1/adapters/{name}/alias-moves", ListResponse[AliasMoveOut]),
    ("/v1/adapters/{name}/aliases/{alias}", AliasOut),
    ("/v1/webhooks", ListResponse[WebhookOut]),
]
WRITES: list[tuple[str, str, Any, dict[str, Any] | None]] = [
    ("DELETE", "/v1/adapters/{name}", Deleted, None),
    ("PUT", "/v1/adapters/{name}/aliases/{alias}", AliasOut, json_body(AliasSet)),
    ("DELETE", "/v1/adapters/{name}/aliases/{alias}", Deleted, None),
]
VERSION_PUSH = multipart_body(
    {
        "file": {**BINARY, "description": "the adapter archive (.tar.gz)"},
        "metadata": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": schema_of(VersionMetadata),
            "description": "VersionMetadata as JSON",
        },
    },
    ["file", "metadata"],
    **UPLOAD_ROUTE,  # multipart, streamed through
)
CREATES: list[tuple[str, Any, dict[str, Any]]] = [
    ("/v1/adapters", AdapterOut, json_body(AdapterCreate)),
    ("/v1/adapters/{name}/versions", AdapterVersionOut, VERSION_PUSH),
    ("/v1/webhooks", WebhookOut, json_body(WebhookCreate)),
]

for _path, _model in READS:
    if _model is None:
        archive = binary_response("application/gzip", "the version's archive (.tar.gz)")
        router.add_api_route(
            _path, read, methods=["GET"], response_class=Response, responses=archive
        )
    else:
        router.add_api_route(_path, read, methods=["GET"], response_model=_model)
for _method, _path, _model, _extra in WRITES:
    router.add_api_route(
        _path, write, methods=[_method], response_model=_model, openapi_extra=_extra
    )
for _path, _model, _extra in CREATES:
    router.add_api_route(
        _path,
        create,
        methods=["POST"],
        status_code=201,
        response_model=_model,
        openapi_extra=_extra,
    )
