"""Idempotency records keep no secrets and expire for good (issue 18, item 7).

A created API key is shown once: the stored answer (what a retry with the same
``Idempotency-Key`` replays) holds ``null`` in its place, and no byte of any stored row
contains the key. A webhook's signing secret is scrubbed the same way. Expired rows are
deleted by the gateway's purger while it runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select, update

from gateway.domain.idempotency import without_secrets
from gateway.storage.tables import IdempotencyRow
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = gateway_app(tmp_path)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        assert (await http.post("/admin/tenants", json={"id": "acme"}, headers=ADMIN)).is_success
        yield app, http


def stored_rows(app: FastAPI) -> list[IdempotencyRow]:
    with app.state.gateway.db.session() as s:
        rows = list(s.scalars(select(IdempotencyRow)))
        s.expunge_all()
        return rows


async def test_a_created_key_is_never_stored_nor_replayed(
    gw: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, http = gw
    headers = ADMIN | {"Idempotency-Key": "create-app-key-1"}
    first = await http.post("/admin/keys", json={"tenant": "acme", "role": "app"}, headers=headers)
    assert first.status_code == 201, first.text
    key = first.json()["key"]
    assert key.startswith("tf-")
    rows = stored_rows(app)
    assert len(rows) == 1 and rows[0].status == 201
    assert key.encode() not in rows[0].body and key[10:].encode() not in rows[0].body
    replay = await http.post("/admin/keys", json={"tenant": "acme", "role": "app"}, headers=headers)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["key"] is None and replay.json()["id"] == first.json()["id"]
    # the key itself works: it was created once
    me = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code != 401


def test_webhook_secret_is_scrubbed() -> None:
    answer = {"id": "wh-1", "object": "webhook", "url": "https://x.example", "secret": "whsec_s"}
    kept = without_secrets("application/json", json.dumps(answer).encode())
    assert b"whsec_s" not in kept and json.loads(kept)["secret"] is None
    plain = json.dumps({"id": "file-1", "object": "file"}).encode()
    assert without_secrets("application/json", plain) == plain


async def test_expired_rows_are_purged_while_the_gateway_runs(tmp_path: Path) -> None:
    app = gateway_app(tmp_path, idempotency_purge_s=0.2)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        for n in range(3):
            r = await http.post(
                "/admin/tenants", json={"id": f"t{n}"}, headers=ADMIN | {"Idempotency-Key": f"k{n}"}
            )
            assert r.status_code == 201
        with app.state.gateway.db.session(write=True) as s:
            s.execute(update(IdempotencyRow).where(IdempotencyRow.key != "k2").values(expires_at=1))
        for _ in range(50):
            if [r.key for r in stored_rows(app)] == ["k2"]:
                break
            await asyncio.sleep(0.1)
        assert [r.key for r in stored_rows(app)] == ["k2"]
