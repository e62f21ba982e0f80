"""The audit chain is keyed and its tail is signed (issue 18, item 6).

Row hashes are HMACs with a key that is not in the database, and a signed head names the
last row: editing a row, deleting one in the middle, cutting the tail, and appending a row
hashed with the old unkeyed sha256 formula are all reported by ``GET /admin/audit/verify``
(before: the tail cut and the sha256 forgery verified as valid). Rows from before the keyed
chain still verify after the upgrade, and a rotated key keeps old rows verifiable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.config import Config
from asgi_lifespan import LifespanManager
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from gateway.app import MIGRATIONS, VERSION_TABLE
from gateway.domain import audit
from gateway.storage.tables import AuditRow
from shared.db import Database, normalize_url
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@asynccontextmanager
async def running(home: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Database]]:
    app = gateway_app(home, **settings)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        yield http, app.state.gateway.db


async def verify(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/admin/audit/verify", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def audited_actions(http: httpx.AsyncClient, n: int = 6, prefix: str = "t") -> None:
    for i in range(n):
        r = await http.post("/admin/tenants", json={"id": f"{prefix}{i}"}, headers=ADMIN)
        assert r.status_code == 201, r.text


async def audit_hashes(http: httpx.AsyncClient) -> list[str]:
    r = await http.get("/admin/audit", params={"limit": 100}, headers=ADMIN)
    return [e["hash"] for e in sorted(r.json()["data"], key=lambda e: e["id"])]


def ids(db: Database) -> list[int]:
    with db.session() as s:
        return list(s.scalars(select(AuditRow.id).order_by(AuditRow.id)))


def forge_sha256_row(s: Session, keyed: bool) -> None:
    """Append a row as the old code did: sha256(prev || JSON), chained from the last row."""
    last = s.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
    assert last is not None
    row = AuditRow(
        at=last.at, tenant="system", actor="mallory", action="key.create", target="k",
        outcome="ok", request_id=None, details={}, prev_hash=last.hash, hash="",
        key_id=last.key_id if keyed else None,
    )  # fmt: skip
    row.hash = audit.legacy_digest(last.hash, row)
    s.add(row)


def edit(s: Session, rows: list[int]) -> int:
    s.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = :i"), {"i": rows[2]})
    return rows[2]


def delete_middle(s: Session, rows: list[int]) -> int:
    s.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": rows[2]})
    return rows[3]


def truncate_tail(s: Session, rows: list[int]) -> None:
    s.execute(text("DELETE FROM audit_log WHERE id >= :i"), {"i": rows[-2]})


def truncate_and_resign_head(s: Session, rows: list[int]) -> None:
    truncate_tail(s, rows)
    last = s.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
    assert last is not None
    sig = audit.head_sig(b"a guessed key", last.key_id or "", last.id, last.hash)
    s.execute(
        text("UPDATE audit_head SET seq = :q, hash = :h, sig = :g"),
        {"q": last.id, "h": last.hash, "g": sig},
    )


def forged_unkeyed(s: Session, rows: list[int]) -> int:
    forge_sha256_row(s, keyed=False)
    return rows[-1] + 1


def forged_sha256_with_key_id(s: Session, rows: list[int]) -> int:
    forge_sha256_row(s, keyed=True)
    return rows[-1] + 1


TAMPERING: dict[str, Callable[[Session, list[int]], int | None]] = {
    "edited row": edit,
    "deleted middle row": delete_middle,
    "truncated tail": truncate_tail,
    "truncated tail, head re-signed without the key": truncate_and_resign_head,
    "forged sha256 row (no key id)": forged_unkeyed,
    "forged sha256 row (the key's id)": forged_sha256_with_key_id,
}


@pytest.mark.parametrize("how", list(TAMPERING))
async def test_verify_detects_tampering(tmp_path: Path, how: str) -> None:
    async with running(tmp_path) as (http, db):
        await audited_actions(http)
        rows = ids(db)
        ok = await verify(http)
        assert ok == {**ok, "valid": True, "checked": len(rows), "head_seq": rows[-1]}
        assert ok["head_hash"] == (await audit_hashes(http))[-1]
        with db.session(write=True) as s:
            bad_id = TAMPERING[how](s, rows)
        bad = await verify(http)
        assert bad["valid"] is False, (how, bad)
        assert bad["first_bad_id"] == bad_id, (how, bad)
        assert bad["reason"], bad


async def test_appending_after_a_truncation_does_not_hide_it(tmp_path: Path) -> None:
    """The next row chains from the signed head, not from what is left of the rows."""
    async with running(tmp_path) as (http, db):
        await audited_actions(http)
        with db.session(write=True) as s:
            truncate_tail(s, ids(db))
        await audited_actions(http, 1, prefix="late")
        assert (await verify(http))["valid"] is False


def legacy_database(url: str, n: int) -> None:
    """A gateway database at revision 0004 with ``n`` sha256-chained audit rows."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    cfg.attributes["version_table"] = VERSION_TABLE
    command.upgrade(cfg, "0004")
    db = Database(url)
    columns = [c for c in AuditRow.__table__.columns if c.name not in ("id", "key_id")]
    with db.engine.begin() as conn:
        prev = audit.GENESIS
        for i in range(n):
            row = AuditRow(
                at=1_700_000_000 + i, tenant="system", actor="key_x", action="tenant.create",
                target=f"old{i}", outcome="ok", request_id=None, details={"i": i},
                prev_hash=prev, hash="",
            )  # fmt: skip
            row.hash = audit.legacy_digest(prev, row)
            values = {c.name: getattr(row, c.name) for c in columns}
            conn.execute(insert(AuditRow).values(values))
            prev = row.hash
    db.dispose()


async def test_rows_from_before_the_keyed_chain_still_verify(tmp_path: Path, db_url: str) -> None:
    """Migration 0005 on SQLite and Postgres: the sha256 rows stay and verify, sealed."""
    legacy_database(db_url, 5)
    async with running(tmp_path, database_url=db_url) as (http, db):
        await audited_actions(http, 2)
        ok = await verify(http)
        assert ok == {**ok, "valid": True, "checked": 5 + 1 + 2}  # + the bootstrap key entry
        with db.session(write=True) as s:
            s.execute(text("UPDATE audit_log SET target = 'x' WHERE id = 3"))
        assert (await verify(http))["first_bad_id"] == 3


async def test_a_rotated_key_keeps_earlier_rows_verifiable(tmp_path: Path) -> None:
    async with running(tmp_path, audit_key="first-key") as (http, _):
        await audited_actions(http, 2)
    retired = {"audit_key": "second-key", "audit_retired_keys": ["first-key"]}
    async with running(tmp_path, **retired) as (http, _):
        await audited_actions(http, 1, prefix="new")
        assert (await verify(http))["valid"] is True
    async with running(tmp_path, audit_key="second-key") as (http, _):
        bad = await verify(http)
        assert bad["valid"] is False and "unknown key" in bad["reason"]
