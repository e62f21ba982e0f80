"""The audit log: append-only and hash-chained, so an edited or deleted row is detectable.

hash_n = sha256(hash_{n-1} || canonical JSON of row n). ``verify_chain`` recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage.tables import AuditRow

GENESIS = "0" * 64


def _digest(prev: str, row: AuditRow) -> str:
    body = json.dumps(
        {
            "at": row.at,
            "tenant": row.tenant,
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
            "request_id": row.request_id,
            "details": row.details,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev + body).encode()).hexdigest()


def record(
    s: Session,
    *,
    tenant: str | None,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRow:
    """Append one entry. Call inside a write unit of work (serializes the chain)."""
    last = s.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()
    prev = last.hash if last else GENESIS
    row = AuditRow(
        at=int(time.time()),
        tenant=tenant,
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        request_id=request_id,
        details=details or {},
        prev_hash=prev,
        hash="",
    )
    row.hash = _digest(prev, row)
    s.add(row)
    s.flush()
    return row


def verify_chain(s: Session) -> dict[str, Any]:
    prev = GENESIS
    count = 0
    for row in s.scalars(select(AuditRow).order_by(AuditRow.id)):
        if row.prev_hash != prev or _digest(prev, row) != row.hash:
            return {"valid": False, "checked": count, "first_bad_id": row.id}
        prev = row.hash
        count += 1
    return {"valid": True, "checked": count, "first_bad_id": None}
