"""The audit log: append-only, keyed and hash-chained, with a signed head.

Row n: ``hash_n = HMAC(key, ROW_LABEL || hash_{n-1} || canonical JSON of row n)`` with the
audit key (``gateway.domain.audit_keys``: a secret that is never in the database), its id in
the row. The head (table ``audit_head``, one row) holds the last row's ``(id, hash)`` signed
with the key, and is rewritten in the transaction that appends the row.

Writers are serialized: each append reads the head and writes the next row and head under
one lock (``lock_chain``: SQLite's write transaction; Postgres: a transaction-scoped advisory
lock), so gateways sharing a database cannot both chain from the same row (a fork).

What ``verify_chain`` detects, for an attacker who can write the database but has no key:
an edited row, a deleted or inserted row (a broken link), a forged row (an HMAC needs the
key; a row hashed with the old unkeyed sha256 formula after keyed rows is refused), and a
truncated tail (the signed head names a row that is gone; a head rewritten to match needs
the key). What it cannot detect: a rollback of rows *and* head to an earlier genuine state
the attacker copied (any state kept only in the database can be replayed; a monitor that
records the ``(head_seq, head_hash)`` verify answers, outside the database, catches it: that
row must stay in the chain with that hash), and anything done by someone holding the key.

Rows from before the keyed chain (``key_id`` NULL: ``hash_n = sha256(hash_{n-1} || JSON)``)
still verify, only as a prefix: the first start after the upgrade signs a head over the last
of them (``seal``), which fixes them (an edit changes every later hash, and the last one is
signed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gateway.domain.audit_keys import AuditKeys
from gateway.storage.tables import AuditHeadRow, AuditRow

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_MISSING = "f" * 64  # what a row chains from when the head was removed: never valid
HEAD_ID = 1
ROW_LABEL = "tunefleet audit row v2"
HEAD_LABEL = "tunefleet audit head v2"
LOCK_KEY = int.from_bytes(hashlib.sha256(b"lock:audit-chain").digest()[:8], "big", signed=True)


def _body(row: AuditRow, *, keyed: bool) -> str:
    fields: dict[str, Any] = {
        "at": row.at,
        "tenant": row.tenant,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "request_id": row.request_id,
        "details": row.details,
    }
    if keyed:
        fields["key_id"] = row.key_id
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def legacy_digest(prev: str, row: AuditRow) -> str:
    """The unkeyed formula of rows from before the keyed chain."""
    return hashlib.sha256((prev + _body(row, keyed=False)).encode()).hexdigest()


def row_digest(key: bytes, prev: str, row: AuditRow) -> str:
    msg = f"{ROW_LABEL}\n{prev}\n{_body(row, keyed=True)}"
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def head_sig(key: bytes, kid: str, seq: int, digest: str) -> str:
    msg = f"{HEAD_LABEL}\n{kid}\n{seq}\n{digest}"
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def lock_chain(s: Session) -> None:
    """Hold the chain's write lock until the transaction ends. SQLite: the session must be a
    write one (``session(write=True)``: its write transaction begins now and excludes
    others); Postgres: an advisory lock, whatever the session."""
    s.connection()
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})


def _read_head(s: Session) -> AuditHeadRow | None:
    stmt = select(AuditHeadRow).where(AuditHeadRow.id == HEAD_ID)
    return s.scalars(stmt.execution_options(populate_existing=True)).first()


def _last_row(s: Session) -> AuditRow | None:
    return s.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()


def _keyed_rows_exist(s: Session) -> bool:
    stmt = select(AuditRow.id).where(AuditRow.key_id.is_not(None)).limit(1)
    return s.scalars(stmt).first() is not None


def _set_head(
    s: Session, keys: AuditKeys, head: AuditHeadRow | None, seq: int, digest: str
) -> None:
    sig = head_sig(keys.current, keys.current_id, seq, digest)
    if head is None:
        s.add(AuditHeadRow(id=HEAD_ID, seq=seq, hash=digest, key_id=keys.current_id, sig=sig))
    else:
        head.seq, head.hash, head.key_id, head.sig = seq, digest, keys.current_id, sig
    s.flush()


def record(
    s: Session,
    keys: AuditKeys,
    *,
    tenant: str | None,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRow:
    """Append one entry and move the signed head to it, under the chain's lock (SQLite: call
    in a write session)."""
    lock_chain(s)
    head = _read_head(s)
    if head is not None:
        prev = head.hash  # not the last row: a truncated tail stays a broken link
    else:
        last = _last_row(s)
        if last is None:
            prev = GENESIS
        elif _keyed_rows_exist(s):
            log.error("the audit chain's signed head is missing: the chain stays invalid")
            prev = HEAD_MISSING
        else:
            prev = last.hash  # rows from before the keyed chain, not sealed yet
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
        key_id=keys.current_id,
    )
    row.hash = row_digest(keys.current, prev, row)
    s.add(row)
    s.flush()
    _set_head(s, keys, head, row.id, row.hash)
    return row


def seal(s: Session, keys: AuditKeys) -> int | None:
    """At start-up: sign a head over the chain if there is none yet (a new database, or rows
    from before the keyed chain). Returns the number of rows sealed, None if nothing was done.
    A missing head over keyed rows is tampering: it is logged and left for ``verify_chain``."""
    lock_chain(s)
    if _read_head(s) is not None:
        return None
    if _keyed_rows_exist(s):
        log.error("the audit chain's signed head is missing: not re-sealed")
        return None
    last = _last_row(s)
    _set_head(s, keys, None, last.id if last else 0, last.hash if last else GENESIS)
    sealed = s.scalar(select(func.count()).select_from(AuditRow)) or 0
    if sealed:
        log.warning("audit chain: %d rows from before the keyed chain sealed", sealed)
    return sealed


def verify_chain(s: Session, keys: AuditKeys) -> dict[str, Any]:
    """Recompute every row's hash and link, and check the signed head (see the module doc)."""
    head = _read_head(s)  # first: rows appended later are read too and checked by their links
    count = 0

    def bad(reason: str, row_id: int | None) -> dict[str, Any]:
        return {
            "valid": False,
            "checked": count,
            "first_bad_id": row_id,
            "reason": reason,
            "head_seq": head.seq if head else None,
            "head_hash": head.hash if head else None,
        }

    if head is None:
        return bad("the signed head is missing", None)
    hkey = keys.get(head.key_id)
    if hkey is None or not hmac.compare_digest(
        head.sig, head_sig(hkey, head.key_id, head.seq, head.hash)
    ):
        return bad("the head's signature does not verify", None)
    prev, keyed, at_head = GENESIS, False, head.seq == 0 and head.hash == GENESIS
    for row in s.scalars(select(AuditRow).order_by(AuditRow.id)):
        if row.prev_hash != prev:
            return bad("broken link: a row was deleted, inserted or forged", row.id)
        if row.key_id is None:
            if keyed:
                return bad("an unkeyed row after keyed ones", row.id)
            ok = legacy_digest(prev, row) == row.hash
        else:
            keyed = True
            key = keys.get(row.key_id)
            if key is None:
                return bad("signed with an unknown key", row.id)
            ok = hmac.compare_digest(row_digest(key, prev, row), row.hash)
        if not ok:
            return bad("the row's hash does not match its content", row.id)
        if row.id == head.seq:
            if row.hash != head.hash:
                return bad("the signed head does not match its row", row.id)
            at_head = True
        prev = row.hash
        count += 1
    if not at_head:
        return bad(f"truncated: the signed head names row {head.seq}, which is gone", None)
    return {
        "valid": True,
        "checked": count,
        "first_bad_id": None,
        "reason": None,
        "head_seq": head.seq,
        "head_hash": head.hash,
    }
