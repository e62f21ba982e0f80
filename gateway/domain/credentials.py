"""The gateway's own secrets: the API-key hashing secret and the bootstrap admin key.

The key-hashing secret is not the internal token: rotating the token between services must
not invalidate every customer's API key. It comes from ``TUNEFLEET_GATEWAY_KEY_HASH_SECRET``
(required when several gateways share one database: they must hash alike), else from
``$TUNEFLEET_HOME/key_hash_secret`` (0600), created at the first start: random on a new
database, the internal token's value on one whose keys were hashed with it before the two
were separated (they stay valid; the token can be rotated from then on).

``rotate_bootstrap`` is ``tunefleet admin rotate-bootstrap-key``: a new bootstrap key, every
earlier one revoked, the new one written to the 0600 key file.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import audit
from gateway.domain.audit_keys import AuditKeys
from gateway.domain.keys import BOOTSTRAP_SCOPE, SYSTEM_TENANT, create_key
from gateway.storage.tables import ApiKeyRow
from shared.db import Database

KEY_HASH_SECRET_FILE = "key_hash_secret"


def _write_0600(path: Path, value: str, *, exclusive: bool) -> bool:
    """Write ``value`` to ``path`` (mode 0600); with ``exclusive``, False if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return True


def key_hash_secret(configured: str | None, path: Path, db: Database, internal_token: str) -> str:
    """The HMAC key of API-key hashes (see the module docstring)."""
    if configured:
        return configured
    if path.exists():
        return path.read_text().strip()
    with db.session() as s:
        legacy = s.scalars(select(ApiKeyRow.id).limit(1)).first() is not None
    value = internal_token if legacy else secrets.token_urlsafe(32)
    if not _write_0600(path, value, exclusive=True):  # another process was first
        return path.read_text().strip()
    return value


def rotate_bootstrap(
    s: Session, secret: str, audit_keys: AuditKeys, key_file: Path
) -> tuple[str, list[str]]:
    """Create a new bootstrap admin key, revoke every active earlier one (audited) and write
    the new key to ``key_file`` (0600). Returns the new key and the revoked key ids."""
    old = list(
        s.scalars(
            select(ApiKeyRow).where(
                ApiKeyRow.scope == BOOTSTRAP_SCOPE, ApiKeyRow.revoked_at.is_(None)
            )
        )
    )
    now = int(time.time())
    for row in old:
        row.revoked_at = now
    row, key = create_key(
        s, secret, tenant=SYSTEM_TENANT, role="admin", name="bootstrap", scope=BOOTSTRAP_SCOPE
    )
    revoked = [r.id for r in old]
    audit.record(
        s,
        audit_keys,
        tenant=SYSTEM_TENANT,
        actor="cli",
        action="key.bootstrap",
        target=row.id,
        details={"revoked": revoked},
    )
    _write_0600(key_file, key, exclusive=False)
    return key, revoked
