"""``/admin/quotas``: limits per tenant or per API key (admin writes, sre reads).

A tenant's limits are the platform's to set (platform keys only: a customer admin must not
lift their own tenant's); a tenant's admin may set limits on their own keys, which bind
within the tenant's."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from gateway.deps import Caller, State
from gateway.domain import audit
from gateway.domain.keys import get_tenant
from gateway.domain.quotas import LIMIT_FIELDS, Limits
from gateway.storage.tables import ApiKeyRow, QuotaRow, now
from shared.app import request_id_of
from shared.auth import TENANT_RE
from shared.errors import InvalidRequest, NotFound

router = APIRouter(prefix="/admin", tags=["admin"])
Limit = Annotated[int | None, Field(default=None, ge=1)]


class QuotaPut(BaseModel):
    """Exactly one of ``tenant``/``key_id``; a limit left out or null = the default."""

    tenant: str | None = Field(default=None, pattern=TENANT_RE.pattern)
    key_id: str | None = Field(default=None, max_length=40)
    rpm: Limit = None
    tpm: Limit = None
    max_streams: Limit = None
    max_adapters: Limit = None
    max_jobs: Limit = None

    @model_validator(mode="after")
    def _one_subject(self) -> QuotaPut:
        if (self.tenant is None) == (self.key_id is None):
            raise InvalidRequest("give exactly one of tenant or key_id", param="tenant")
        return self


def _out(scope: str, subject: str, limits: Limits, effective: Limits | None) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "quota", "scope": scope, "subject": subject}
    out.update({f: getattr(limits, f) for f in LIMIT_FIELDS})
    if effective is not None:
        out["effective"] = {f: getattr(effective, f) for f in LIMIT_FIELDS}
    return out


@router.get("/quotas")
async def list_quotas(
    st: State, who: Caller, tenant: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """Overrides (per tenant and key) with each tenant's effective limits; ``?tenant=`` filters."""
    tenant = who.visible_tenant("admin_read", tenant or None)
    await anyio.to_thread.run_sync(st.quotas.book.load_if_stale)
    defaults = st.quotas.defaults()
    with st.db.session() as s:
        stmt = select(QuotaRow).order_by(QuotaRow.scope, QuotaRow.subject)
        rows = list(s.scalars(stmt))
        key_tenants = {k.id: k.tenant for k in s.scalars(select(ApiKeyRow))}
    data = []
    for r in rows:
        owner = r.subject if r.scope == "tenant" else key_tenants.get(r.subject)
        if tenant and owner != tenant:
            continue
        limits = Limits(**{f: getattr(r, f) for f in LIMIT_FIELDS})
        eff = st.quotas.book.tenant(r.subject, defaults) if r.scope == "tenant" else None
        data.append(_out(r.scope, r.subject, limits, eff))
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "defaults": {f: getattr(defaults, f) for f in LIMIT_FIELDS},
    }


@router.put("/quotas")
async def put_quota(body: QuotaPut, request: Request, st: State, who: Caller) -> dict[str, Any]:
    """Set (replace) the limits of one tenant or key. Applies at once on this gateway."""
    who.require("admin_write")
    scope, subject = ("tenant", body.tenant) if body.tenant else ("key", body.key_id)
    assert subject is not None
    values = {f: getattr(body, f) for f in LIMIT_FIELDS}

    def do() -> str:
        with st.db.session(write=True) as s:
            if scope == "tenant":
                who.require_tenant("admin_write", subject)
                owner = get_tenant(s, subject).id
                who.require_platform("admin_write", "setting a tenant's limits")
            else:
                key = s.get(ApiKeyRow, subject)
                missing = f"API key {subject!r} not found"
                if key is None:
                    raise NotFound(missing, param="key_id")
                who.require_tenant("admin_write", key.tenant, what=missing)
                owner = key.tenant
            row = s.get(QuotaRow, (scope, subject)) or QuotaRow(scope=scope, subject=subject)
            for f, v in values.items():
                setattr(row, f, v)
            row.updated_at = now()
            s.add(row)
            audit.record(
                s,
                tenant=owner,
                actor=who.key_id,
                action="quota.set",
                target=f"{scope}:{subject}",
                request_id=request_id_of(request),
                details=values,
            )
            return owner

    await anyio.to_thread.run_sync(do)
    st.quotas.book.invalidate()
    await anyio.to_thread.run_sync(st.quotas.book.load_if_stale)
    eff = st.quotas.book.tenant(subject, st.quotas.defaults()) if scope == "tenant" else None
    return _out(scope, subject, Limits(**values), eff)
