"""``/docs`` and ``/redoc`` work offline: every script, style and icon they load is served by
the app itself. The gateway's OpenAPI declares the bearer scheme on each operation that needs
an API key."""

from __future__ import annotations

import re
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
from tests.support.postgres import free_port

TOKEN = "docs-test-token"
_ASSET = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


def _apps(home: Path) -> dict[str, FastAPI]:
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "gateway": create_gateway(
            GatewaySettings(
                home=home,
                internal_token=TOKEN,
                **{"registry_url": closed, "inference_urls": [closed], "training_url": closed},
            )
        ),
        "registry": create_registry(RegistrySettings(home=home, internal_token=TOKEN)),
    }


@pytest.fixture(params=["gateway", "registry"])
async def client(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    app = _apps(tmp_path)[request.param]
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_their_own_assets(client: httpx.AsyncClient, page: str) -> None:
    r = await client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    urls = {a or b for a, b in _ASSET.findall(html)}
    assert urls, html
    for url in urls:
        assert not re.match(r"^([a-z]+:)?//", url), f"{page} loads {url} from elsewhere"
    assert "cdn" not in html and "googleapis" not in html
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, html
    for url in urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"], url
            assert len(asset.content) > 100_000  # the bundle itself, not an error page
        if url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")
        if url.endswith(".json"):  # the OpenAPI document the page renders
            assert asset.json()["openapi"].startswith("3.")


async def test_gateway_openapi_declares_bearer_on_keyed_operations(tmp_path: Path) -> None:
    app = _apps(tmp_path)["gateway"]
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["type"] == "http"
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    operations = [
        (path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]
    assert len(operations) > 40
    for path, method, op in operations:
        assert path.startswith(("/v1/", "/admin/")), path  # nothing public is documented
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
    for public in ("/healthz", "/readyz", "/metrics"):
        assert public not in schema["paths"]
    # the probes answer without a key, as the scheme says
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
            assert (await c.get("/v1/models")).status_code == 401
