"""Replica administration (internal token): loaded adapters, prewarm, pin, unload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.inference.deps import Srv
from services.inference.engine.adapters import LoadedAdapter
from shared.auth import TenantId
from shared.errors import InvalidRequest
from shared.schemas.common import ListResponse

router = APIRouter(prefix="/admin", tags=["admin"])


class AdapterState(BaseModel):
    object: str = "inference.adapter"
    ref: str
    sha256: str
    loaded_at: float
    load_seconds: float
    last_used: float
    pinned: bool
    in_use: int
    requests: int


class ModelBody(BaseModel):
    model: str = Field(min_length=1, max_length=200, description="any model form of the tenant")


class RefBody(BaseModel):
    ref: str = Field(min_length=1, max_length=200, description="immutable 'tenant/name@vN'")


def _out(a: LoadedAdapter) -> AdapterState:
    return AdapterState(
        ref=a.handle.ref,
        sha256=a.sha256,
        loaded_at=a.loaded_at,
        load_seconds=round(a.load_seconds, 4),
        last_used=a.last_used,
        pinned=a.pinned,
        in_use=a.in_use,
        requests=a.requests,
    )


@router.get("/adapters", response_model=ListResponse[AdapterState])
async def list_loaded(srv: Srv) -> ListResponse[AdapterState]:
    return ListResponse(data=[_out(a) for a in srv.cache.loaded()])


@router.post("/adapters/prewarm", response_model=AdapterState)
async def prewarm(body: ModelBody, srv: Srv, tenant: TenantId) -> AdapterState:
    res = await srv.resolver.resolve(tenant, body.model)
    if res.kind != "adapter":
        raise InvalidRequest(f"{body.model!r} is a base model, not an adapter", param="model")
    return _out(await srv.cache.ensure(res))


@router.post("/adapters/pin", response_model=AdapterState)
async def pin(body: RefBody, srv: Srv) -> AdapterState:
    return _out(srv.cache.pin(body.ref, True))


@router.post("/adapters/unpin", response_model=AdapterState)
async def unpin(body: RefBody, srv: Srv) -> AdapterState:
    return _out(srv.cache.pin(body.ref, False))


@router.post("/adapters/unload")
async def unload(body: RefBody, srv: Srv) -> dict[str, Any]:
    await srv.cache.unload(body.ref)
    return {"ref": body.ref, "object": "inference.adapter", "unloaded": True}
