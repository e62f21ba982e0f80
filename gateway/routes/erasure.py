"""``/admin/erasure`` (GDPR right to erasure) and ``/admin/retention/{tenant}`` (role admin;
sre reads retention). A tenant's admin erases and sets retention for their own tenant; a
data subject is erased in every tenant, so that is a platform operation. Every call is
audited, failures included; a subject's e-mail or id is kept only as an HMAC
(``gateway.domain.erasure.subject_digest``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from gateway.deps import Caller, GatewayState, State
from gateway.domain.admin import Actor
from gateway.domain.erasure import erase_audited, set_retention_audited
from gateway.domain.keys import get_tenant
from shared.app import request_id_of
from shared.auth import TENANT_RE
from shared.offloop import in_session
from shared.schemas.erasure import ErasureReport, ErasureRequest, RetentionSet, TenantRetention

router = APIRouter(prefix="/admin", tags=["admin"])
TenantPath = Annotated[str, Path(pattern=TENANT_RE.pattern)]


async def _tenant_exists(st: GatewayState, tenant: str) -> None:
    """404 naming ``tenant`` when there is no such tenant."""
    await in_session(st.db, lambda s: get_tenant(s, tenant).id)


@router.post("/erasure")
async def erasure(body: ErasureRequest, request: Request, st: State, who: Caller) -> ErasureReport:
    """Delete a tenant's or a data subject's files and datasets; report the adapter versions
    trained on them (to retrain or retire). Audited whatever the outcome."""
    who.require("admin_write")
    body.check()
    if body.tenant is None:
        who.require_platform("admin_write", "erasing a data subject in every tenant")
    else:
        who.require_tenant("admin_write", body.tenant)
        await _tenant_exists(st, body.tenant)
    actor = Actor(who, request_id_of(request), st.audit_keys)
    return await erase_audited(st.db, st.key_secret, st.training, st.registry, body, actor)


@router.put("/retention/{tenant_id}")
async def set_retention(
    tenant_id: TenantPath, body: RetentionSet, request: Request, st: State, who: Caller
) -> TenantRetention:
    """How long the tenant's files and prepared datasets are kept (``null``: forever); the
    training service purges older ones on its own schedule."""
    who.require_tenant("admin_write", tenant_id)
    await _tenant_exists(st, tenant_id)
    actor = Actor(who, request_id_of(request), st.audit_keys)
    return await set_retention_audited(st.db, st.training, tenant_id, body, actor)


@router.get("/retention/{tenant_id}")
async def get_retention(tenant_id: TenantPath, st: State, who: Caller) -> TenantRetention:
    who.require_tenant("admin_read", tenant_id)
    await _tenant_exists(st, tenant_id)
    out = await st.training.get_retention(tenant_id)
    return TenantRetention(tenant=tenant_id, days=out.days)
