"""``/admin/quotas`` as data: the per-tenant and per-key overrides, and setting one.

The request path's side (admit, charge, streams) is ``gateway.domain.quotas``; this module
is the administration of the ``quotas`` table, one unit of work per call (blocking: callers
run it off the event loop)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain.admin import Actor
from gateway.domain.keys import get_tenant
from gateway.domain.quotas import LIMIT_FIELDS, Limits, QuotaBook
from gateway.storage.tables import ApiKeyRow, QuotaRow, now
from shared.errors import NotFound
from shared.schemas.admin import KeyQuotaOut, QuotaLimits, QuotaList, QuotaPut, TenantQuotaOut


def limits_out(limits: Limits) -> QuotaLimits:
    return QuotaLimits(**{f: getattr(limits, f) for f in LIMIT_FIELDS})


def quota_out(
    scope: str, subject: str, limits: Limits, effective: Limits | None
) -> TenantQuotaOut | KeyQuotaOut:
    values = {f: getattr(limits, f) for f in LIMIT_FIELDS}
    if scope == "tenant":
        assert effective is not None
        return TenantQuotaOut(subject=subject, **values, effective=limits_out(effective))
    return KeyQuotaOut(subject=subject, **values)


def list_overrides(s: Session, book: QuotaBook, defaults: Limits, tenant: str | None) -> QuotaList:
    """Every override (``tenant``: only that tenant's and its keys') with each tenant's
    effective limits. ``book`` must be loaded."""
    rows = list(s.scalars(select(QuotaRow).order_by(QuotaRow.scope, QuotaRow.subject)))
    key_tenants = {k.id: k.tenant for k in s.scalars(select(ApiKeyRow))}
    data: list[TenantQuotaOut | KeyQuotaOut] = []
    for r in rows:
        owner = r.subject if r.scope == "tenant" else key_tenants.get(r.subject)
        if tenant and owner != tenant:
            continue
        limits = Limits(**{f: getattr(r, f) for f in LIMIT_FIELDS})
        eff = book.tenant(r.subject, defaults) if r.scope == "tenant" else None
        data.append(quota_out(r.scope, r.subject, limits, eff))
    return QuotaList(data=data, defaults=limits_out(defaults))


def set_quota(s: Session, body: QuotaPut, actor: Actor) -> tuple[str, str, Limits]:
    """Replace one tenant's or key's limits (audited); returns (scope, subject, limits).

    A tenant's limits are the platform's to set; a tenant's admin may limit their own keys."""
    who = actor.who
    scope, subject = ("tenant", body.tenant) if body.tenant else ("key", body.key_id)
    assert subject is not None
    values = {f: getattr(body, f) for f in LIMIT_FIELDS}
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
    actor.record(s, tenant=owner, action="quota.set", target=f"{scope}:{subject}", details=values)
    return scope, subject, Limits(**values)
