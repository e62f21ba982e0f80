"""The low items of issue 18: hostile headers and paths answer 4xx, never 500, and server paths
stay on the server.

* A non-ASCII ``X-Request-Id`` is replaced by a generated id (it used to reach the headers sent
  to other services and fail there with a 500).
* A webhook signature with a 400-digit timestamp is 401 (it overflowed a float: 500).
* ``%2e%2e`` in a path parameter is 400 and never reaches an upstream service (it arrives
  decoded, and ``/v1/adapters/../versions`` would be normalised to another path there).
* ``GET /v1/base-models`` carries no server directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.security.test_operator_scope import BOOTSTRAP, TOKEN

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


class Upstreams(httpx.AsyncBaseTransport):
    """http://registry → the registry app (when there is one); records every URL asked for;
    anything else is unreachable."""

    def __init__(self) -> None:
        self.registry: FastAPI | None = None
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        if request.url.host == "registry" and self.registry is not None:
            transport = httpx.ASGITransport(app=self.registry)
            return await transport.handle_async_request(request)
        raise httpx.ConnectError(f"nothing at {request.url.host}", request=request)


def gateway_with(home: Path, upstreams: Upstreams) -> FastAPI:
    settings = GatewaySettings(
        home=home,
        internal_token=TOKEN,
        admin_key=BOOTSTRAP,
        registry_url="http://registry",
        training_url="http://training",
        inference_urls=["http://inference"],
    )
    return create_gateway(settings, upstream_transport=upstreams)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Upstreams]]:
    ups = Upstreams()
    app = gateway_with(tmp_path, ups)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        yield http, ups


@pytest.mark.parametrize("rid", ["é日本".encode(), b"a b", b"x" * 200, b"\x00\x01"])
async def test_bad_request_ids_are_replaced_not_500(
    gw: tuple[httpx.AsyncClient, Upstreams], rid: bytes
) -> None:
    http, _ = gw
    for path in ("/admin/tenants", "/v1/adapters"):  # the second is passed on upstream
        r = await http.get(
            path,
            headers=[(b"Authorization", f"Bearer {BOOTSTRAP}".encode()), (b"X-Request-Id", rid)],
        )
        assert r.status_code in (200, 503), (path, r.status_code, r.text)
        assert r.headers["x-request-id"].startswith("req_")
    r = await http.get("/admin/tenants", headers=ADMIN | {"X-Request-Id": "client-id.42"})
    assert r.headers["x-request-id"] == "client-id.42"  # a sane id is kept


async def test_huge_signature_timestamp_is_401(gw: tuple[httpx.AsyncClient, Upstreams]) -> None:
    http, _ = gw
    for ts in ("9" * 400, "-1", "1e9", "٣٣٣"):
        sig = [(b"X-Tunefleet-Signature", f"t={ts},v1=ab".encode())]
        r = await http.post("/internal/registry-events", content=b"{}", headers=sig)
        assert r.status_code == 401, (ts, r.status_code, r.text)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/adapters/%2e%2e/versions",
        "/v1/adapters/%2E%2E/aliases/production",
        "/v1/adapters/%2e/versions",
        "/v1/files/%2e%2e",
        "/v1/fine_tuning/jobs/%2e%2e/events",
    ],
)
async def test_dot_segments_never_reach_upstream(
    gw: tuple[httpx.AsyncClient, Upstreams], path: str
) -> None:
    http, ups = gw
    ups.urls.clear()  # the replica health checks at start
    r = await http.get(path, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_path", r.text
    assert [u for u in ups.urls if not u.endswith("/readyz")] == []


async def test_base_models_carry_no_server_paths(tmp_path: Path, model_dir: Path) -> None:
    ups = Upstreams()
    ups.registry = create_registry(
        RegistrySettings(
            home=tmp_path / "registry", internal_token=TOKEN, seed_models_dir=model_dir.parent
        )
    )
    app = gateway_with(tmp_path / "gateway", ups)
    async with (
        LifespanManager(ups.registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        r = await http.get("/v1/base-models", headers=ADMIN)
        assert r.status_code == 200, r.text
        models = r.json()["data"]
        assert [m["id"] for m in models] == ["tiny-llama"]
        assert "path" not in models[0]
        assert str(model_dir) not in r.text and str(tmp_path) not in r.text
