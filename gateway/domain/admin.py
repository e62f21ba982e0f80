"""Tenants, API keys, usage and the audit log as the ``/admin`` API shows them.

Each function is one unit of work on a session (the caller opens it, off the event loop) and
returns the wire model; permission checks that need a row (a key's tenant) happen here, the
rest in the route. Every change is audited in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import audit
from gateway.domain.audit_keys import AuditKeys
from gateway.domain.keys import Principal, create_key, create_tenant, get_tenant
from gateway.storage.tables import ApiKeyRow, AuditRow, TenantRow, UsageRow
from shared.errors import NotFound
from shared.schemas.admin import (
    AuditEntry,
    AuditVerification,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyRevoked,
    TenantCreate,
    TenantOut,
    UsageOut,
)


@dataclass(frozen=True)
class Actor:
    """Who makes a change and under which request: what the audit entry names."""

    who: Principal
    request_id: str | None
    keys: AuditKeys

    def record(self, s: Session, *, tenant: str | None, action: str, **kw: Any) -> AuditRow:
        return audit.record(
            s,
            self.keys,
            tenant=tenant,
            actor=self.who.key_id,
            action=action,
            request_id=self.request_id,
            **kw,
        )


def tenant_out(t: TenantRow) -> TenantOut:
    return TenantOut(id=t.id, name=t.name, pii_mode=t.pii_mode, rpm=t.rpm, created=t.created_at)


def key_fields(k: ApiKeyRow) -> dict[str, Any]:
    return {
        "id": k.id,
        "tenant": k.tenant,
        "role": k.role,
        "name": k.name,
        "prefix": k.prefix,
        "expires_at": k.expires_at,
        "revoked": k.revoked_at is not None,
        "created": k.created_at,
    }


def add_tenant(s: Session, body: TenantCreate, actor: Actor) -> TenantOut:
    out = tenant_out(create_tenant(s, body.id, body.name))
    actor.record(s, tenant=body.id, action="tenant.create", target=body.id)
    return out


def update_tenant(s: Session, tenant_id: str, changes: dict[str, Any], actor: Actor) -> TenantOut:
    row = get_tenant(s, tenant_id)
    for field, value in changes.items():
        setattr(row, field, value)
    actor.record(s, tenant=tenant_id, action="tenant.update", target=tenant_id, details=changes)
    return tenant_out(row)


def list_tenants(s: Session, only: str | None) -> list[TenantOut]:
    stmt = select(TenantRow).order_by(TenantRow.id)
    if only is not None:
        stmt = stmt.where(TenantRow.id == only)
    return [tenant_out(t) for t in s.scalars(stmt)]


def add_key(s: Session, secret: str, body: KeyCreate, actor: Actor) -> KeyCreated:
    expires = int(time.time()) + body.expires_in_s if body.expires_in_s else None
    row, key = create_key(
        s, secret, tenant=body.tenant, role=body.role, name=body.name, expires_at=expires
    )
    actor.record(
        s, tenant=body.tenant, action="key.create", target=row.id, details={"role": body.role}
    )
    return KeyCreated(**key_fields(row), key=key)


def list_keys(s: Session, tenant: str | None) -> list[KeyOut]:
    stmt = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
    if tenant:
        get_tenant(s, tenant)
        stmt = stmt.where(ApiKeyRow.tenant == tenant)
    return [KeyOut(**key_fields(k)) for k in s.scalars(stmt)]


def revoke_key(s: Session, key_id: str, actor: Actor) -> KeyRevoked:
    row = s.get(ApiKeyRow, key_id)
    missing = f"API key {key_id!r} not found"
    if row is None:
        raise NotFound(missing, param="key_id")
    actor.who.require_tenant("admin_write", row.tenant, what=missing)
    row.revoked_at = row.revoked_at or int(time.time())
    actor.record(s, tenant=row.tenant, action="key.revoke", target=key_id)
    return KeyRevoked(**key_fields(row))


def usage(
    s: Session, tenant: str | None, date_from: str | None, date_to: str | None
) -> list[UsageOut]:
    stmt = select(UsageRow).order_by(UsageRow.day, UsageRow.tenant, UsageRow.model)
    if tenant:
        stmt = stmt.where(UsageRow.tenant == tenant)
    if date_from:
        stmt = stmt.where(UsageRow.day >= date_from)
    if date_to:
        stmt = stmt.where(UsageRow.day <= date_to)
    return [
        UsageOut(
            tenant=u.tenant,
            key_id=u.key_id,
            model=u.model,
            day=u.day,
            requests=u.requests,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
        )
        for u in s.scalars(stmt)
    ]


def audit_entries(s: Session, tenant: str | None, limit: int) -> list[AuditEntry]:
    stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
    if tenant:
        stmt = stmt.where(AuditRow.tenant == tenant)
    return [
        AuditEntry(
            id=r.id,
            at=r.at,
            tenant=r.tenant,
            actor=r.actor,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            request_id=r.request_id,
            details=r.details,
            hash=r.hash,
        )
        for r in s.scalars(stmt)
    ]


def verify_audit(s: Session, keys: AuditKeys) -> AuditVerification:
    return AuditVerification(**audit.verify_chain(s, keys))
