"""Adapter registry routes, passed through with the caller's tenant (API.md: registry)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, State
from gateway.domain import audit
from gateway.domain.forward import open_upstream, relay, upstream_headers
from shared.app import request_id_of

router = APIRouter(tags=["adapters"])


async def _forward(request: Request, st: State, who: Caller, permission: str) -> Response:
    who.require(permission)
    resp = await open_upstream(
        st.upstream,
        request.method,
        st.settings.registry_url.rstrip("/") + request.url.path,
        headers=upstream_headers(request, who, st.internal_token),
        content=request.stream() if request.method in ("POST", "PUT") else None,
        params=dict(request.query_params),
        service="registry",
    )
    return await relay(resp)


READS = [
    "/v1/base-models",
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
    ("POST", "/v1/adapters"),
    ("DELETE", "/v1/adapters/{name}"),
    ("POST", "/v1/adapters/{name}/versions"),
    ("PUT", "/v1/adapters/{name}/aliases/{alias}"),
    ("DELETE", "/v1/adapters/{name}/aliases/{alias}"),
    ("POST", "/v1/webhooks"),
]


async def read(request: Request, st: State, who: Caller) -> Response:
    return await _forward(request, st, who, "read")


async def write(request: Request, st: State, who: Caller) -> Response:
    """State changes are forwarded, then audited with their outcome."""
    resp = await _forward(request, st, who, "write")
    route = request.scope.get("route")
    action = f"{request.method.lower()} {getattr(route, 'path', request.url.path)}"

    def log() -> None:
        with st.db.session(write=True) as s:
            audit.record(
                s,
                tenant=who.tenant,
                actor=who.key_id,
                action=action,
                target=request.url.path,
                request_id=request_id_of(request),
                outcome="ok" if resp.status_code < 400 else str(resp.status_code),
            )

    await anyio.to_thread.run_sync(log)
    return resp


for _path in READS:
    router.add_api_route(_path, read, methods=["GET"])
for _method, _path in WRITES:
    router.add_api_route(_path, write, methods=[_method])
