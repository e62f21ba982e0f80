"""Administration: tenants, API keys, usage, audit (role admin; sre reads).

A tenant's admin/sre see and change their own tenant only (another tenant is a 404);
creating tenants, raising a tenant's rate and verifying the fleet's audit chain are
fleet-wide, for platform keys (``Principal.platform``), which only the bootstrap admin
grants (keys of the ``system`` tenant)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from gateway.deps import Caller, State
from gateway.domain import audit
from gateway.domain.keys import SYSTEM_TENANT, create_key, create_tenant, get_tenant
from gateway.routes import proxy
from gateway.storage.tables import ApiKeyRow, AuditRow, TenantRow, UsageRow
from shared.app import request_id_of
from shared.auth import TENANT_RE
from shared.errors import Forbidden, NotFound
from shared.schemas.common import MAX_LIMIT

router = APIRouter(prefix="/admin", tags=["admin"])
DAY = r"^\d{4}-\d{2}-\d{2}$"


class TenantCreate(BaseModel):
    id: str = Field(pattern=TENANT_RE.pattern)
    name: str = Field(default="", max_length=200)


class TenantUpdate(BaseModel):
    pii_mode: str | None = Field(default=None, pattern=r"^(off|mask|block)$")
    rpm: int | None = Field(default=None, ge=1)


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=TENANT_RE.pattern)
    role: str = Field(pattern=r"^(app|integrator|sre|admin)$")
    name: str = Field(default="", max_length=200)
    expires_in_s: int | None = Field(default=None, ge=60)


def _tenant_out(t: TenantRow) -> dict[str, Any]:
    return {
        "id": t.id,
        "object": "tenant",
        "name": t.name,
        "pii_mode": t.pii_mode,
        "rpm": t.rpm,
        "created": t.created_at,
    }


def _key_out(k: ApiKeyRow) -> dict[str, Any]:
    return {
        "id": k.id,
        "object": "api_key",
        "tenant": k.tenant,
        "role": k.role,
        "name": k.name,
        "prefix": k.prefix,
        "expires_at": k.expires_at,
        "revoked": k.revoked_at is not None,
        "created": k.created_at,
    }


async def _write(st: State, fn: Any) -> Any:
    def run() -> Any:
        with st.db.session(write=True) as s:
            return fn(s)

    return await anyio.to_thread.run_sync(run)


async def _created(request: Request, st: State, who: Caller, make: Any) -> Response:
    """A 201 JSON answer from ``make()``, once per ``Idempotency-Key``."""

    async def call() -> Response:
        return JSONResponse(await make(), status_code=201)

    return await proxy.idempotent(request, st, who, await request.body(), call)


@router.post("/tenants", status_code=201, response_model=None)
async def add_tenant(body: TenantCreate, request: Request, st: State, who: Caller) -> Response:
    who.require_platform("admin_write", "creating a tenant")

    def do(s: Any) -> dict[str, Any]:
        out = _tenant_out(create_tenant(s, body.id, body.name))
        audit.record(
            s,
            tenant=body.id,
            actor=who.key_id,
            action="tenant.create",
            target=body.id,
            request_id=request_id_of(request),
        )
        return out

    return await _created(request, st, who, lambda: _write(st, do))


@router.patch("/tenants/{tenant_id}")
async def update_tenant(
    tenant_id: str, body: TenantUpdate, request: Request, st: State, who: Caller
) -> dict[str, Any]:
    """Per-tenant policy: PII guard mode (the tenant's admin) and request rate (a fleet
    limit: platform operators only)."""
    who.require_tenant("admin_write", tenant_id)
    changes = body.model_dump(exclude_none=True)
    if "rpm" in changes:
        who.require_platform("admin_write", "changing a tenant's rpm")

    def do(s: Any) -> dict[str, Any]:
        row = get_tenant(s, tenant_id)
        for field, value in changes.items():
            setattr(row, field, value)
        audit.record(
            s,
            tenant=tenant_id,
            actor=who.key_id,
            action="tenant.update",
            target=tenant_id,
            request_id=request_id_of(request),
            details=changes,
        )
        return _tenant_out(row)

    out = await _write(st, do)
    st.auth_cache.clear()  # policies ride on the cached principal: refresh at once
    return out  # type: ignore[no-any-return]


@router.get("/tenants")
async def list_tenants(st: State, who: Caller) -> dict[str, Any]:
    only = who.visible_tenant("admin_read", None)
    with st.db.session() as s:
        stmt = select(TenantRow).order_by(TenantRow.id)
        if only is not None:
            stmt = stmt.where(TenantRow.id == only)
        rows = s.scalars(stmt).all()
        return {"object": "list", "data": [_tenant_out(t) for t in rows], "has_more": False}


@router.post("/keys", status_code=201, response_model=None)
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
    expires = int(time.time()) + body.expires_in_s if body.expires_in_s else None

    def do(s: Any) -> dict[str, Any]:
        row, key = create_key(
            s, st.key_secret, tenant=body.tenant, role=body.role, name=body.name, expires_at=expires
        )
        audit.record(
            s,
            tenant=body.tenant,
            actor=who.key_id,
            action="key.create",
            target=row.id,
            request_id=request_id_of(request),
            details={"role": body.role},
        )
        return {**_key_out(row), "key": key}

    return await _created(request, st, who, lambda: _write(st, do))


@router.get("/keys")
async def list_keys(st: State, who: Caller, tenant: str | None = None) -> dict[str, Any]:
    tenant = who.visible_tenant("admin_read", tenant or None)
    with st.db.session() as s:
        stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant:
            get_tenant(s, tenant)
            stmt = stmt.where(ApiKeyRow.tenant == tenant)
        return {"object": "list", "data": [_key_out(k) for k in s.scalars(stmt)], "has_more": False}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, st: State, who: Caller) -> dict[str, Any]:
    who.require("admin_write")

    def do(s: Any) -> dict[str, Any]:
        row = s.get(ApiKeyRow, key_id)
        missing = f"API key {key_id!r} not found"
        if row is None:
            raise NotFound(missing, param="key_id")
        who.require_tenant("admin_write", row.tenant, what=missing)
        row.revoked_at = row.revoked_at or int(time.time())
        audit.record(
            s,
            tenant=row.tenant,
            actor=who.key_id,
            action="key.revoke",
            target=key_id,
            request_id=request_id_of(request),
        )
        return {**_key_out(row), "deleted": True}

    out = await _write(st, do)
    st.auth_cache.clear()  # revocation takes effect at once on this gateway
    return out  # type: ignore[no-any-return]


@router.get("/usage")
async def usage(
    st: State,
    who: Caller,
    tenant: str | None = None,
    date_from: Annotated[str | None, Query(alias="from", pattern=DAY)] = None,
    date_to: Annotated[str | None, Query(alias="to", pattern=DAY)] = None,
) -> dict[str, Any]:
    """Tokens by tenant, model and UTC day (``from``/``to`` as YYYY-MM-DD, inclusive)."""
    tenant = who.visible_tenant("admin_read", tenant or None)
    await st.usage.flush()  # include what the request path tallied in the last second
    with st.db.session() as s:
        stmt = select(UsageRow).order_by(UsageRow.day, UsageRow.tenant, UsageRow.model)
        if tenant:
            stmt = stmt.where(UsageRow.tenant == tenant)
        if date_from:
            stmt = stmt.where(UsageRow.day >= date_from)
        if date_to:
            stmt = stmt.where(UsageRow.day <= date_to)
        data = [
            {
                "object": "usage",
                "tenant": u.tenant,
                "key_id": u.key_id,
                "model": u.model,
                "day": u.day,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
            }
            for u in s.scalars(stmt)
        ]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/audit")
async def list_audit(
    st: State,
    who: Caller,
    tenant: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    tenant = who.visible_tenant("admin_read", tenant or None)
    with st.db.session() as s:
        stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if tenant:
            stmt = stmt.where(AuditRow.tenant == tenant)
        data = [
            {
                "id": r.id,
                "object": "audit.entry",
                "at": r.at,
                "tenant": r.tenant,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "outcome": r.outcome,
                "request_id": r.request_id,
                "details": r.details,
                "hash": r.hash,
            }
            for r in s.scalars(stmt)
        ]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/audit/verify")
async def verify_audit(st: State, who: Caller) -> dict[str, Any]:
    who.require_platform("admin_read", "verifying the fleet's audit chain")
    with st.db.session() as s:
        return {"object": "audit.verification", **audit.verify_chain(s)}
