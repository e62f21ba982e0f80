"""Administration: tenants, API keys, usage, audit (role admin; sre reads).

A tenant's admin/sre see and change their own tenant only (another tenant is a 404);
creating tenants, raising a tenant's rate and verifying the fleet's audit chain are
fleet-wide, for platform keys (``Principal.platform``), which only the bootstrap admin
grants (keys of the ``system`` tenant).

Database work runs off the event loop: reads are plain ``def`` handlers (FastAPI's thread
pool), changes go through ``in_session``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from gateway.deps import Caller, GatewayState, State
from gateway.domain import admin as domain
from gateway.domain.keys import SYSTEM_TENANT, Principal
from gateway.routes import proxy
from shared.app import request_id_of
from shared.errors import Forbidden
from shared.offloop import in_session
from shared.schemas.admin import (
    AuditEntry,
    AuditVerification,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyRevoked,
    TenantCreate,
    TenantOut,
    TenantUpdate,
    UsageOut,
)
from shared.schemas.common import MAX_LIMIT, ListResponse

router = APIRouter(prefix="/admin", tags=["admin"])
DAY = r"^\d{4}-\d{2}-\d{2}$"


def _actor(request: Request, st: GatewayState, who: Principal) -> domain.Actor:
    return domain.Actor(who, request_id_of(request), st.audit_keys)


async def _created(
    request: Request, st: GatewayState, who: Principal, make: Callable[[Session], BaseModel]
) -> Response:
    """A 201 answer from ``make(session)`` (a write unit of work, off the loop), once per
    ``Idempotency-Key``."""

    async def call() -> Response:
        out = await in_session(st.db, make, write=True)
        return JSONResponse(out.model_dump(mode="json"), status_code=201)

    return await proxy.idempotent(request, st, who, await request.body(), call)


@router.post("/tenants", status_code=201, response_model=TenantOut)
async def add_tenant(body: TenantCreate, request: Request, st: State, who: Caller) -> Response:
    who.require_platform("admin_write", "creating a tenant")
    actor = _actor(request, st, who)
    return await _created(request, st, who, lambda s: domain.add_tenant(s, body, actor))


@router.patch("/tenants/{tenant_id}")
async def update_tenant(
    tenant_id: str, body: TenantUpdate, request: Request, st: State, who: Caller
) -> TenantOut:
    """Per-tenant policy: PII guard mode (the tenant's admin) and request rate (a fleet
    limit: platform operators only)."""
    who.require_tenant("admin_write", tenant_id)
    changes = body.model_dump(exclude_none=True)
    if "rpm" in changes:
        who.require_platform("admin_write", "changing a tenant's rpm")
    actor = _actor(request, st, who)
    out = await in_session(
        st.db, lambda s: domain.update_tenant(s, tenant_id, changes, actor), write=True
    )
    st.auth_cache.clear()  # policies ride on the cached principal: refresh at once
    return out


@router.get("/tenants")
def list_tenants(st: State, who: Caller) -> ListResponse[TenantOut]:
    only = who.visible_tenant("admin_read", None)
    with st.db.session() as s:
        return ListResponse(data=domain.list_tenants(s, only))


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def add_key(body: KeyCreate, request: Request, st: State, who: Caller) -> Response:
    """Creates a key and shows it once; only its keyed hash is stored. A key of the
    ``system`` tenant is a platform key: only the bootstrap admin creates those."""
    who.require_tenant("admin_write", body.tenant)
    if body.tenant == SYSTEM_TENANT and not who.bootstrap:
        raise Forbidden(
            "only the bootstrap admin grants platform keys (tenant 'system')",
            code="platform_role_required",
            param="tenant",
        )
    actor = _actor(request, st, who)
    return await _created(request, st, who, lambda s: domain.add_key(s, st.key_secret, body, actor))


@router.get("/keys")
def list_keys(st: State, who: Caller, tenant: str | None = None) -> ListResponse[KeyOut]:
    tenant = who.visible_tenant("admin_read", tenant or None)
    with st.db.session() as s:
        return ListResponse(data=domain.list_keys(s, tenant))


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, st: State, who: Caller) -> KeyRevoked:
    who.require("admin_write")
    actor = _actor(request, st, who)
    out = await in_session(st.db, lambda s: domain.revoke_key(s, key_id, actor), write=True)
    st.auth_cache.clear()  # revocation takes effect at once on this gateway
    return out


@router.get("/usage")
async def usage(
    st: State,
    who: Caller,
    tenant: str | None = None,
    date_from: Annotated[str | None, Query(alias="from", pattern=DAY)] = None,
    date_to: Annotated[str | None, Query(alias="to", pattern=DAY)] = None,
) -> ListResponse[UsageOut]:
    """Tokens by tenant, model and UTC day (``from``/``to`` as YYYY-MM-DD, inclusive)."""
    tenant = who.visible_tenant("admin_read", tenant or None)
    await st.usage.flush()  # include what the request path tallied in the last second
    data = await in_session(st.db, lambda s: domain.usage(s, tenant, date_from, date_to))
    return ListResponse(data=data)


@router.get("/audit")
def list_audit(
    st: State,
    who: Caller,
    tenant: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> ListResponse[AuditEntry]:
    tenant = who.visible_tenant("admin_read", tenant or None)
    with st.db.session() as s:
        return ListResponse(data=domain.audit_entries(s, tenant, limit))


@router.get("/audit/verify")
def verify_audit(st: State, who: Caller) -> AuditVerification:
    """Walks the whole hash chain: a plain ``def`` handler, so it runs in the thread pool."""
    who.require_platform("admin_read", "verifying the fleet's audit chain")
    with st.db.session() as s:
        return domain.verify_audit(s, st.audit_keys)
