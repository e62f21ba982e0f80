"""Tenants and API keys.

Keys look like ``tf-<id>-<secret>``; only ``HMAC-SHA256(server secret, key)`` is stored, so a
leaked table does not leak usable keys, and lookups stay one indexed equality.

Operator roles are tenant-scoped: a customer tenant's ``admin`` and ``sre`` act inside their
own tenant only (another tenant's resources answer 404, as everywhere). Fleet-wide operation
needs a *platform* key: a key of the ``system`` tenant with scope ``platform``, which only the
bootstrap admin (scope ``bootstrap``) can create.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import audit
from gateway.domain.audit_keys import AuditKeys
from gateway.storage.tables import ApiKeyRow, TenantRow
from shared.auth import TENANT_RE
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized

log = logging.getLogger(__name__)
ROLES = ("app", "integrator", "sre", "admin")
SYSTEM_TENANT = "system"
# api_keys.scope: what a key's role reaches. "tenant": its own tenant; "platform": the whole
# fleet; "bootstrap": the whole fleet, and it alone may grant platform keys.
TENANT_SCOPE, PLATFORM_SCOPE, BOOTSTRAP_SCOPE = "tenant", "platform", "bootstrap"
FLEET_SCOPES = frozenset({PLATFORM_SCOPE, BOOTSTRAP_SCOPE})

# What each role may do (API.md): app = inference (and reading models/adapters);
# integrator = files, jobs, adapters, integrations + inference; sre = metrics and read-only
# admin; admin = everything.
PERMISSIONS: dict[str, frozenset[str]] = {
    "infer": frozenset({"app", "integrator", "admin"}),
    "read": frozenset({"app", "integrator", "sre", "admin"}),
    "write": frozenset({"integrator", "admin"}),
    "admin_read": frozenset({"sre", "admin"}),
    "admin_write": frozenset({"admin"}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from the API key on every request."""

    key_id: str
    tenant: str
    role: str
    pii_mode: str = "off"
    rpm: int | None = None
    scope: str = TENANT_SCOPE

    @property
    def platform(self) -> bool:
        """A fleet operator: its admin/sre role reaches every tenant."""
        return self.scope in FLEET_SCOPES

    @property
    def bootstrap(self) -> bool:
        return self.scope == BOOTSTRAP_SCOPE

    def require(self, permission: str) -> None:
        """Raise 403 unless this key's role grants ``permission`` (see PERMISSIONS)."""
        allowed = PERMISSIONS[permission]
        if self.role not in allowed:
            raise Forbidden(
                f"an API key with role {self.role!r} may not do this "
                f"(allowed: {', '.join(sorted(allowed))})"
            )

    def require_tenant(self, permission: str, tenant: str, *, what: str = "") -> None:
        """``require(permission)`` on ``tenant``'s resources: another tenant's are 404 for a
        tenant-scoped key (no existence leak), whatever its role."""
        self.require(permission)
        if not self.platform and tenant != self.tenant:
            raise NotFound(what or f"tenant {tenant!r} not found", param="tenant")

    def require_platform(self, permission: str, what: str = "this") -> None:
        """A fleet-wide operation: the role must allow it and the key must be a platform one."""
        self.require(permission)
        if not self.platform:
            raise Forbidden(
                f"{what} is a fleet-wide operation: it needs a platform operator key "
                "(granted by the bootstrap admin)",
                code="platform_role_required",
            )

    def visible_tenant(self, permission: str, requested: str | None) -> str | None:
        """The tenant a listing is restricted to: ``requested`` (None: all) for a platform
        key, always the key's own tenant otherwise (asking for another one is a 404)."""
        self.require(permission)
        if self.platform:
            return requested
        if requested is not None and requested != self.tenant:
            raise NotFound(f"tenant {requested!r} not found", param="tenant")
        return self.tenant


def hash_key(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def new_key() -> tuple[str, str]:
    key_id = "key_" + secrets.token_hex(6)
    return key_id, f"tf-{key_id[4:]}-{secrets.token_urlsafe(24)}"


def create_tenant(s: Session, tenant_id: str, name: str) -> TenantRow:
    if not TENANT_RE.fullmatch(tenant_id):
        raise InvalidRequest("tenant id must match [a-z0-9][a-z0-9_-]{0,62}", param="id")
    if s.get(TenantRow, tenant_id) is not None:
        raise Conflict(f"tenant {tenant_id!r} already exists", param="id")
    row = TenantRow(id=tenant_id, name=name or tenant_id)
    s.add(row)
    s.flush()
    return row


def get_tenant(s: Session, tenant_id: str) -> TenantRow:
    row = s.get(TenantRow, tenant_id)
    if row is None:
        raise NotFound(f"tenant {tenant_id!r} not found", param="tenant")
    return row


def create_key(
    s: Session,
    secret: str,
    *,
    tenant: str,
    role: str,
    name: str = "",
    expires_at: int | None = None,
    scope: str | None = None,
) -> tuple[ApiKeyRow, str]:
    """A new key; keys of the ``system`` tenant are platform keys unless ``scope`` says
    otherwise (the caller checks that only the bootstrap admin grants them)."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    get_tenant(s, tenant)
    key_id, key = new_key()
    row = ApiKeyRow(
        id=key_id,
        tenant=tenant,
        role=role,
        name=name,
        hash=hash_key(secret, key),
        prefix=key[:10],
        expires_at=expires_at,
        scope=scope or (PLATFORM_SCOPE if tenant == SYSTEM_TENANT else TENANT_SCOPE),
    )
    s.add(row)
    s.flush()
    return row, key


def bearer_key(authorization: str | None) -> str:
    """The API key of an ``Authorization: Bearer tf-…`` header (401 when there is none)."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith("tf-") or len(key) > 200:
        raise Unauthorized("missing API key: send 'Authorization: Bearer tf-…'")
    return key


def authenticate(s: Session, secret: str, authorization: str | None) -> Principal:
    key = bearer_key(authorization)
    row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.hash == hash_key(secret, key))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API key")
    if row.expires_at is not None and row.expires_at <= time.time():
        raise Unauthorized("API key expired", code="api_key_expired")
    tenant = s.get(TenantRow, row.tenant)
    return Principal(
        key_id=row.id,
        tenant=row.tenant,
        role=row.role,
        pii_mode=tenant.pii_mode if tenant else "off",
        rpm=tenant.rpm if tenant else None,
        # a fleet scope only ever counts inside the system tenant
        scope=row.scope if row.tenant == SYSTEM_TENANT else TENANT_SCOPE,
    )


def bootstrap_admin(
    s: Session, secret: str, audit_keys: AuditKeys, configured: str | None, key_file: Path
) -> str | None:
    """Ensure the bootstrap admin key exists: TUNEFLEET_ADMIN_KEY, else one generated once into
    a 0600 file. Returns the key file path written, if any.

    A changed TUNEFLEET_ADMIN_KEY is a rotation: the new key becomes the bootstrap key and
    every earlier one is revoked (audited), so the old value stops working at this start."""
    if s.get(TenantRow, SYSTEM_TENANT) is None:
        s.add(TenantRow(id=SYSTEM_TENANT, name="fleet operators"))
        s.flush()
    active = list(
        s.scalars(
            select(ApiKeyRow).where(
                ApiKeyRow.scope == BOOTSTRAP_SCOPE, ApiKeyRow.revoked_at.is_(None)
            )
        )
    )
    if not configured:
        if active:
            return None
        _, key = create_key(
            s, secret, tenant=SYSTEM_TENANT, role="admin", name="bootstrap", scope=BOOTSTRAP_SCOPE
        )
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        return str(key_file)
    digest = hash_key(secret, configured)
    if any(row.hash == digest for row in active):
        return None
    if s.scalars(select(ApiKeyRow).where(ApiKeyRow.hash == digest)).first() is not None:
        # never re-activate a revoked key or promote another one; start without it
        log.error(
            "TUNEFLEET_ADMIN_KEY is the value of a revoked or non-bootstrap API key: it is "
            "not made the bootstrap key; set a new value"
        )
        return None
    revoked_at = int(time.time())
    for row in active:
        row.revoked_at = revoked_at
    key_id = new_key()[0]
    s.add(
        ApiKeyRow(
            id=key_id,
            tenant=SYSTEM_TENANT,
            role="admin",
            name="bootstrap (TUNEFLEET_ADMIN_KEY)",
            hash=digest,
            prefix=configured[:10],
            scope=BOOTSTRAP_SCOPE,
        )
    )
    s.flush()
    audit.record(
        s,
        audit_keys,
        tenant=SYSTEM_TENANT,
        actor="startup",
        action="key.bootstrap",
        target=key_id,
        details={"revoked": [row.id for row in active]},
    )
    return None
