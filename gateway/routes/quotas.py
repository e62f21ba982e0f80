"""``/admin/quotas``: limits per tenant or per API key (admin writes, sre reads).

A tenant's limits are the platform's to set (platform keys only: a customer admin must not
lift their own tenant's); a tenant's admin may set limits on their own keys, which bind
within the tenant's. Both handlers are plain ``def``: their database work runs in the
thread pool, never on the event loop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.deps import Caller, State
from gateway.domain import quota_admin
from gateway.domain.admin import Actor
from shared.app import request_id_of
from shared.schemas.admin import KeyQuotaOut, QuotaList, QuotaOut, QuotaPut, TenantQuotaOut

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/quotas")
def list_quotas(st: State, who: Caller, tenant: Annotated[str | None, Query()] = None) -> QuotaList:
    """Overrides (per tenant and key) with each tenant's effective limits; ``?tenant=`` filters."""
    tenant = who.visible_tenant("admin_read", tenant or None)
    st.quotas.book.load_if_stale()
    with st.db.session() as s:
        return quota_admin.list_overrides(s, st.quotas.book, st.quotas.defaults(), tenant)


@router.put("/quotas", response_model=QuotaOut)
def put_quota(
    body: QuotaPut, request: Request, st: State, who: Caller
) -> TenantQuotaOut | KeyQuotaOut:
    """Set (replace) the limits of one tenant or key. Applies at once on this gateway."""
    who.require("admin_write")
    actor = Actor(who, request_id_of(request), st.audit_keys)
    with st.db.session(write=True) as s:
        scope, subject, limits = quota_admin.set_quota(s, body, actor)
    st.quotas.book.invalidate()
    st.quotas.book.load_if_stale()
    eff = st.quotas.book.tenant(subject, st.quotas.defaults()) if scope == "tenant" else None
    return quota_admin.quota_out(scope, subject, limits, eff)
