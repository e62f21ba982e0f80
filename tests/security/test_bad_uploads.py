"""Bad uploads of the kinds tests/unit/test_archives.py does not cover: oversized archives
and metadata, metadata in the wrong encoding or nested thousands deep, and the same for the
gateway's JSON bodies. Each is a 4xx naming the field, and nothing is stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.conftest import RegistryHarness
from tests.service.test_registry_api import adapter_dir, archive, stored_blobs  # noqa: F401
from tests.support.postgres import free_port

ADMIN_KEY = "tf-bad-uploads-admin"
DEEP = "[" * 100_000 + "]" * 100_000
NESTED_OK_SIZE = '{"a":' * 5000 + "1" + "}" * 5000  # 5,000 levels, 30 KB


async def _push(reg: RegistryHarness, files: dict, data: dict) -> httpx.Response:  # type: ignore[type-arg]
    return await reg.http.post("/v1/adapters/bad/versions", files=files, data=data)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("metadata", "param", "status"),
    [
        pytest.param(DEEP[:60_000], "metadata", 400),
        pytest.param(NESTED_OK_SIZE, "metadata", 400),
        ('{"base_model": "tiny-llama", "description": "' + "x" * 70_000 + '"}', "metadata", 400),
        ("\udcff", "metadata", 400),
    ],
    ids=["nested-60k", "nested-5k-objects", "oversized", "lone-surrogate"],
)
async def test_registry_bad_metadata_is_4xx_nothing_stored(
    registry: RegistryHarness,
    archive: Path,  # noqa: F811
    metadata: str,
    param: str,
    status: int,
) -> None:
    body = metadata.encode("utf-8", "surrogateescape")
    r = await _push(
        registry, {"file": ("a.tar.gz", archive.read_bytes()), "metadata": (None, body)}, {}
    )
    assert r.status_code == status, r.text[:300]
    assert r.json()["error"]["param"].startswith(param)
    assert stored_blobs(registry) == []
    assert (await registry.http.get("/v1/adapters/bad/versions")).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_registry_metadata_in_latin1_is_4xx(
    registry: RegistryHarness,
    archive: Path,  # noqa: F811
) -> None:
    meta = '{"base_model": "tiny-llama", "description": "Gr\u00fc\u00dfe"}'.encode("latin-1")
    r = await _push(
        registry, {"file": ("a.tar.gz", archive.read_bytes()), "metadata": (None, meta)}, {}
    )
    # Either refused as not UTF-8, or decoded as latin-1 by the form parser and stored as
    # text: never a 500, and never bytes that are not what the client sent.
    assert r.status_code in (201, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"] == "metadata"
        assert stored_blobs(registry) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_registry_oversized_archive_is_413_nothing_stored(
    registry: RegistryHarness,
) -> None:
    st = registry.app.state.registry  # type: ignore[attr-defined]
    limit = 64 * 1024  # the fixture's default is 256 MiB: too much to send in a unit test
    st.policy = replace(st.policy, limits=replace(st.policy.limits, max_archive_bytes=limit))
    big = b"\x1f\x8b" + b"\0" * (limit + 1)
    r = await _push(
        registry,
        {"file": ("a.tar.gz", big)},
        {"metadata": '{"base_model": "tiny-llama"}'},
    )
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["param"] == "file"
    assert stored_blobs(registry) == []
    staging = registry.app.state.registry.store.staging_dir()  # type: ignore[attr-defined]
    assert list(staging.iterdir()) == []  # the spooled upload is gone too


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    down = f"http://127.0.0.1:{free_port()}"
    app = create_app(
        GatewaySettings(
            home=tmp_path,
            internal_token="t",
            admin_key=ADMIN_KEY,
            registry_url=down,
            inference_urls=[down],
            training_url=down,
            max_body_bytes=256 * 1024,
        )
    )
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        ) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"x" * (256 * 1024 + 1), 413),
        (b'{"model": "tiny-llama", "prompt": "' + b"\xff\xfe" + b'"}', 400),
        pytest.param(
            b'{"model": "tiny-llama", "prompt": ' + DEEP.encode() + b"}",
            400,
        ),
        pytest.param(
            b'{"model": "tiny-llama", "prompt": "x", "extra": ' + NESTED_OK_SIZE.encode() + b"}",
            400,
        ),
    ],
    ids=["oversized", "not-utf8", "nested-100k", "nested-5k-objects"],
)
async def test_gateway_bad_json_bodies_are_4xx(
    gateway: httpx.AsyncClient, body: bytes, status: int
) -> None:
    r = await gateway.post("/v1/completions", content=body)
    assert r.status_code == status, r.text[:300]
    assert set(r.json()["error"]) >= {"message", "type", "code", "param", "request_id"}
