"""Bodies bounded per route before they are read (issue 18, item 2).

The apps are driven at the ASGI level with a body source that counts what the app pulled,
so "refused before reading" is measured, not inferred: an anonymous request is 401 with
nothing read; a declared ``Content-Length`` over the route's limit is 413 with nothing
read; a chunked body is cut off at the limit; a multipart ``Content-Type`` does not lift a
JSON route to the upload limit (gateway and registry alike), while upload routes keep it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

MiB = 2**20
CHUNK = b"x" * MiB
MULTIPART = b"multipart/form-data; boundary=xyz"
FILE_PART = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'


@dataclass
class Outcome:
    status: int
    body: bytes
    pulled: int  # body bytes the app asked for


async def call(
    app: FastAPI,
    method: str,
    path: str,
    *,
    size: int,
    headers: dict[str, str] | None = None,
    declare: bool = True,
    content_type: bytes = b"application/json",
    prefix: bytes = b"",
) -> Outcome:
    """Send ``size`` bytes (1 MiB chunks), with a Content-Length or chunked."""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"content-type", content_type))
    raw.append(
        (b"content-length", str(size).encode()) if declare else (b"transfer-encoding", b"chunked")
    )
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }
    left, pulled, sent = size, 0, False
    out = Outcome(0, b"", 0)

    async def receive() -> dict[str, Any]:
        nonlocal left, pulled, sent
        if sent:
            return {"type": "http.disconnect"}
        chunk = CHUNK[: min(left, MiB)]
        if left == size:  # the first chunk starts with the prefix
            chunk = prefix + chunk[len(prefix) :]
        left -= len(chunk)
        pulled += len(chunk)
        out.pulled = pulled
        sent = left == 0
        return {"type": "http.request", "body": chunk, "more_body": left > 0}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")

    await app(scope, receive, send)
    return out


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[FastAPI]:
    app = gateway_app(tmp_path)  # max_body 8 MiB, uploads 512 MiB; services unreachable
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def integrator_key(app: FastAPI) -> str:
    from gateway.domain.keys import create_key, create_tenant

    st = app.state.gateway
    with st.db.session(write=True) as s:
        create_tenant(s, "acme", "")
        return create_key(s, st.key_secret, tenant="acme", role="integrator")[1]


ROUTES = [
    "/admin/tenants",
    "/admin/keys",
    "/v1/chat/completions",
    "/v1/feedback",
    "/v1/fine_tuning/jobs",
    "/v1/files",
    "/v1/integrations",
]


@pytest.mark.parametrize("path", ROUTES)
async def test_anonymous_bodies_are_refused_unread(gateway: FastAPI, path: str) -> None:
    for headers in ({}, bearer("tf-not-a-key"), {"Authorization": "Basic abc"}):
        small = await call(gateway, "POST", path, size=1024, headers=headers)
        assert (small.status, small.pulled) == (401, 0), (headers, small)
    huge = await call(gateway, "POST", path, size=64 * MiB)
    assert huge.status in (401, 413) and huge.pulled == 0, huge


async def test_declared_length_over_the_route_limit_is_413_unread(gateway: FastAPI) -> None:
    admin = bearer(BOOTSTRAP)
    r = await call(gateway, "POST", "/admin/tenants", size=9 * MiB, headers=admin)
    assert (r.status, r.pulled) == (413, 0), r
    assert json.loads(r.body)["error"]["code"] == "payload_too_large", r.body


async def test_chunked_bodies_are_cut_off_at_the_limit(gateway: FastAPI) -> None:
    admin = bearer(BOOTSTRAP)
    r = await call(gateway, "POST", "/admin/tenants", size=64 * MiB, headers=admin, declare=False)
    assert r.status == 413, r
    assert r.pulled <= 9 * MiB, r.pulled  # the 8 MiB limit plus the chunk that crossed it


async def test_multipart_header_does_not_lift_a_json_route(gateway: FastAPI) -> None:
    key = bearer(await integrator_key(gateway))
    for declare in (True, False):
        for path in ("/v1/fine_tuning/jobs", "/v1/chat/completions", "/v1/integrations"):
            r = await call(
                gateway,
                "POST",
                path,
                size=20 * MiB,
                headers=key,
                declare=declare,
                content_type=MULTIPART,
            )
            if declare:
                assert (r.status, r.pulled) == (413, 0), (path, r)
            else:  # cut off at 8 MiB (or never read: the proxy's quota check needs training)
                assert r.status in (413, 503) and r.pulled <= 9 * MiB, (path, r)
    # an upload route keeps the upload limit (training is down here: 503, not 413)
    up = await call(
        gateway, "POST", "/v1/files", size=20 * MiB, headers=key, content_type=MULTIPART
    )
    assert up.status == 503, up


async def test_training_files_route_has_its_own_1_gib_limit(gateway: FastAPI) -> None:
    """POST /v1/files takes up to ``max_training_file_bytes`` (1 GiB); adapter archives stay at
    ``max_upload_bytes`` (512 MiB) and JSON routes at 8 MiB."""
    key = bearer(await integrator_key(gateway))

    async def post(path: str, size: int) -> Outcome:
        return await call(gateway, "POST", path, size=size, headers=key, content_type=MULTIPART)

    over = await post("/v1/files", 2**30 + 1)
    assert (over.status, over.pulled) == (413, 0), over
    message = json.loads(over.body)["error"]["message"]
    assert "1073741824 bytes (1 GiB)" in message, message
    assert (await post("/v1/files", 600 * MiB)).status == 503  # allowed; training is down
    archive = await post("/v1/adapters/a/versions", 600 * MiB)
    assert (archive.status, archive.pulled) == (413, 0), archive
    assert "536870912 bytes (512 MiB)" in json.loads(archive.body)["error"]["message"]
    assert (await post("/v1/fine_tuning/jobs", 9 * MiB)).status == 413


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = RegistrySettings(
        home=tmp_path, internal_token="t", seed_models_dir=tmp_path / "none", max_archive_bytes=MiB
    )
    app = create_registry(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        yield app


async def test_internal_service_bounds_bodies_per_route(registry: FastAPI) -> None:
    token = bearer("t") | {"X-Tenant-Id": "acme"}
    alias = "/v1/adapters/a/aliases/production"
    for declare in (True, False):
        r = await call(
            registry,
            "PUT",
            alias,
            size=40 * MiB,
            headers=token,
            declare=declare,
            content_type=MULTIPART,
        )
        assert r.status == 413 and r.pulled <= 33 * MiB, (declare, r)  # 32 MiB JSON limit
        up = await call(
            registry,
            "POST",
            "/v1/adapters/a/versions",
            size=4 * MiB,
            headers=token,
            declare=declare,
            content_type=MULTIPART,
            prefix=FILE_PART,
        )
        assert up.status == 413 and up.pulled <= 3 * MiB, (declare, up)  # archive 1 MiB + 1


def test_real_processes_stream_uploads_and_refuse_oversized_bodies(
    tmp_path: Path, model_dir: Path
) -> None:
    """Over real sockets (uvicorn): an adapter archive is pushed through the gateway's upload
    route to a registry process; a chunked 20 MiB JSON body and an anonymous 64 MiB one are
    refused without the gateway reading them."""
    import time

    import httpx

    from tests.support.adapters import make_adapter, pack
    from tests.support.procs import registry_and_gateway

    archive = pack(make_adapter(model_dir, tmp_path / "a", r=4), tmp_path / "a.tar.gz")
    with registry_and_gateway(
        tmp_path, model_dir, "proc-body-token", {"TUNEFLEET_ADMIN_KEY": BOOTSTRAP}
    ) as (_, gw):
        admin = bearer(BOOTSTRAP)
        with httpx.Client(base_url=gw.url, timeout=120) as http:
            assert http.post("/admin/tenants", json={"id": "acme"}, headers=admin).is_success
            key = http.post(
                "/admin/keys", json={"tenant": "acme", "role": "integrator"}, headers=admin
            ).json()["key"]
            with archive.open("rb") as fh:
                r = http.post(
                    "/v1/adapters/a/versions",
                    headers=bearer(key),
                    files={"file": ("a.tar.gz", fh)},
                    data={"metadata": '{"base_model":"tiny-llama"}'},
                )
            assert r.status_code == 201, r.text

            def chunks(n: int) -> Any:
                yield from (CHUNK for _ in range(n))

            r = http.post(
                "/v1/integrations",
                content=chunks(20),
                headers=bearer(key) | {"Content-Type": "application/json"},
            )
            assert r.status_code == 413, r.text
            t0 = time.monotonic()
            r = http.post(
                "/admin/tenants",
                content=CHUNK * 64,
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code in (401, 413), r.text
            assert time.monotonic() - t0 < 30
