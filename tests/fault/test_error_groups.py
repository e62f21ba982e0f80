"""A domain error raised inside a task group keeps its status: found by the fault test that
kills the inference replica (the gateway's cancel-on-disconnect task group turned the 503
"no inference replica is available" into a 500)."""

from __future__ import annotations

import anyio
import httpx
from fastapi import FastAPI

from shared.app import create_service_app
from shared.errors import ServiceUnavailable


def _app() -> FastAPI:
    app = create_service_app("probe", internal_token="t")

    @app.get("/grouped")
    async def grouped() -> None:
        async def work() -> None:
            raise ServiceUnavailable("no inference replica is available", retry_after=3)

        async with anyio.create_task_group() as tg:
            tg.start_soon(work)

    @app.get("/plain-group")
    async def plain_group() -> None:
        raise ExceptionGroup("two", [ValueError("a"), KeyError("b")])

    return app


async def test_domain_error_inside_a_task_group_keeps_its_status() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        r = await client.get("/grouped")
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["code"] == "service_unavailable"
        r = await client.get("/plain-group")
        assert r.status_code == 500
        assert "Traceback" not in r.text and r.json()["error"]["code"] == "internal_error"
