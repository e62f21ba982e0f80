"""Internal-token and tenant dependencies for the services behind the gateway.

Only the gateway accepts customer API keys. Every other service refuses any request without
``Authorization: Bearer <internal token>`` and takes the tenant from ``X-Tenant-Id``.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, Header, Request

from shared.errors import InvalidRequest, Unauthorized

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def require_internal_token(request: Request) -> None:
    """Dependency: the caller must present the fleet's internal token."""
    expected: str = request.app.state.internal_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise Unauthorized("missing or invalid internal token", code="invalid_internal_token")


def tenant_header(
    x_tenant_id: Annotated[str | None, Header(alias="X-Tenant-Id")] = None,
) -> str:
    """The tenant this internal request acts for (set by the gateway)."""
    if not x_tenant_id:
        raise InvalidRequest(
            "X-Tenant-Id header is required", param="X-Tenant-Id", code="missing_tenant"
        )
    if not TENANT_RE.fullmatch(x_tenant_id):  # "$" alone would accept a final "\n"
        raise InvalidRequest(
            "X-Tenant-Id must match [a-z0-9][a-z0-9_-]{0,62}",
            param="X-Tenant-Id",
            code="invalid_tenant",
        )
    return x_tenant_id


TenantId = Annotated[str, Depends(tenant_header)]
InternalAuth = Depends(require_internal_token)
