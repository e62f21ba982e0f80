"""The generation routes' fast path answers exactly as the FastAPI routes it bypasses
(issue 19 item 5).

Two gateways in-process, the same settings, one with ``InferenceFastPath`` and one without
it (every request through FastAPI's routing and dependencies): the same requests, refused or
failed in every way the routes can refuse or fail before a replica is reached (no key, a bad
key, a role without ``infer``, a body over the limit, invalid JSON, no model, the registry
unreachable), get the same status, body and headers, and are logged under the same route
template in the HTTP metrics. Other methods and paths still reach FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.routes.fastpath import InferenceFastPath
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
PATHS = ("/v1/chat/completions", "/v1/completions")


def without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not InferenceFastPath]
    return app


async def started(stack: AsyncExitStack, app: FastAPI) -> tuple[httpx.AsyncClient, str, str]:
    """A client of ``app`` started, with an ``app`` key and a ``read``-only (sre) key."""
    await stack.enter_async_context(LifespanManager(app, startup_timeout=60, shutdown_timeout=60))
    http = await stack.enter_async_context(
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
    )
    assert (await http.post("/admin/tenants", json={"id": "acme"}, headers=ADMIN)).is_success
    keys = []
    for role in ("app", "sre"):
        r = await http.post("/admin/keys", json={"tenant": "acme", "role": role}, headers=ADMIN)
        assert r.status_code in (200, 201), r.text
        keys.append(r.json()["key"])
    return http, keys[0], keys[1]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[list[tuple[httpx.AsyncClient, str, str]]]:
    async with AsyncExitStack() as stack:
        fast = gateway_app(tmp_path / "fast", max_body_bytes=4096)
        slow = without_fast_path(gateway_app(tmp_path / "slow", max_body_bytes=4096))
        yield [await started(stack, fast), await started(stack, slow)]


def requests(app_key: str, sre_key: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    good = b'{"model": "tiny-llama", "prompt": "hi", "messages": []}'
    out = []
    for path in PATHS:
        out += [
            ("POST", path, {}, good),
            ("POST", path, {"Authorization": "Bearer tf-not-a-key"}, good),
            ("POST", path, {"Authorization": "Basic abc"}, good),
            ("POST", path, {"Authorization": f"Bearer {sre_key}"}, good),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, b"x" * 5000),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, b"{not json"),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, b"[1, 2]"),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, b'{"prompt": "hi"}'),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, b""),
            ("POST", path, {"Authorization": f"Bearer {app_key}"}, good),  # 503: no registry
            ("GET", path, {"Authorization": f"Bearer {app_key}"}, b""),  # 405 from FastAPI
            ("POST", path + "/", {"Authorization": f"Bearer {app_key}"}, good),
        ]
    return out


def route_samples(metrics: str) -> list[str]:
    return sorted(
        line.rsplit(" ", 1)[0]
        for line in metrics.splitlines()
        if line.startswith("tunefleet_gateway_http_requests_total") and "/v1/" in line
    )


async def test_fast_path_answers_as_fastapi_does(
    pair: list[tuple[httpx.AsyncClient, str, str]],
) -> None:
    answers: list[list[tuple[int, bytes, dict[str, str]]]] = []
    for http, app_key, sre_key in pair:
        seen = []
        for n, (method, path, headers, body) in enumerate(requests(app_key, sre_key)):
            rid = {"X-Request-Id": f"req-{n}", "Content-Type": "application/json"}
            r = await http.request(method, path, headers=headers | rid, content=body)
            kept = {k: v for k, v in r.headers.items() if k not in ("date", "server")}
            seen.append((r.status_code, r.content, kept))
        answers.append(seen)
    fast, slow = answers
    assert [a[0] for a in fast] == [a[0] for a in slow]
    assert {a[0] for a in fast} >= {400, 401, 403, 405, 413, 503}
    assert fast == slow
    metrics = [(await http.get("/metrics")).text for http, _, _ in pair]
    assert route_samples(metrics[0]) == route_samples(metrics[1])
    assert any('route="/v1/chat/completions"' in s for s in route_samples(metrics[0]))
