"""Per-tenant count limits (adapters, concurrent fine-tuning jobs) enforced where the rows
are inserted, atomically.

The gateway knows a tenant's limit (its quotas) and sends it with the create, in a header
only the internal token can set (``MAX_ADAPTERS_HEADER``, ``MAX_JOBS_HEADER``); the service
counts and inserts in one write transaction holding the tenant's lock for that count
(``lock_tenant``), so N concurrent creates at ``limit - 1`` let exactly one through. A
count-then-insert without the lock lets them all through: each sees ``limit - 1``.

The lock: SQLite's write transaction (``Database.session(write=True)`` begins it at once, and
write transactions exclude each other); Postgres: a transaction-scoped advisory lock on
(what, tenant), released at commit or rollback.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session

MAX_ADAPTERS_HEADER = "X-Tunefleet-Max-Adapters"
MAX_JOBS_HEADER = "X-Tunefleet-Max-Jobs"


def lock_key(what: str, tenant: str) -> int:
    """A signed 64-bit advisory-lock key for (what, tenant)."""
    digest = hashlib.sha256(f"count:{what}:{tenant}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_tenant(s: Session, what: str, tenant: str) -> None:
    """Hold ``tenant``'s lock for counting ``what`` until the transaction ends (see above).
    The session must be a write one (``session(write=True)``) on SQLite."""
    s.connection()  # begins the transaction now (SQLite: BEGIN IMMEDIATE, the write lock)
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(what, tenant)})
