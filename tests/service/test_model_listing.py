"""What ``GET /v1/models`` lists and ``GET /v1/models/{id}`` retrieves, computed by the
inference domain against a real registry (in-process, SQLite and Postgres): canonical
``name@vN`` ids, alias forms, the tenant's own bases, cursor paging, tenant scoping.
(Through the gateway with the openai SDK: tests/slow/test_openai_conventions.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.inference.domain.models import list_models, retrieve_model
from services.inference.engine.resolver import ModelResolver
from shared.clients.registry import RegistryClient
from shared.errors import NotFound
from tests.conftest import TOKEN, RegistryHarness
from tests.support.adapters import make_adapter, pack
from tests.support.models import model_archive, upload_model

SERVED = "tiny-llama"


@pytest.fixture(scope="module")
def archive(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("listing")
    return pack(make_adapter(model_dir, root / "a", r=4), root / "a.tar.gz")


@pytest.fixture
async def client(registry: RegistryHarness) -> AsyncIterator[RegistryClient]:
    c = RegistryClient("http://registry", TOKEN, transport=httpx.ASGITransport(app=registry.app))
    yield c
    await c.aclose()


async def push(reg: RegistryHarness, name: str, archive: Path, tenant: str = "acme") -> None:
    with archive.open("rb") as fh:
        r = await reg.http.post(
            f"/v1/adapters/{name}/versions",
            headers=reg.headers(tenant),
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 201, r.text


async def alias(reg: RegistryHarness, name: str, alias: str, version: int) -> None:
    r = await reg.http.put(f"/v1/adapters/{name}/aliases/{alias}", json={"version": version})
    assert r.status_code == 200, r.text


async def test_list_and_retrieve(
    registry: RegistryHarness,
    client: RegistryClient,
    archive: Path,
    model_dir: Path,
) -> None:
    for name, versions in (("router", 2), ("aaa", 1), ("zzz", 1)):
        for _ in range(versions):
            await push(registry, name, archive)
    await registry.http.post("/v1/adapters", json={"name": "empty"})  # no version: not listed
    await alias(registry, "router", "production", 1)
    await alias(registry, "router", "staging", 2)
    # a full fine-tune of acme's, and a system base this replica does not serve
    packed = model_archive(model_dir)
    r = await upload_model(registry.http, "acme-full", packed)
    assert r.status_code == 201, r.text
    r = await upload_model(registry.http, "other-base", packed, headers=registry.headers("system"))
    assert r.status_code == 201, r.text

    cards = await list_models(client, "acme", SERVED, page=1)  # paged one adapter at a time
    ids = [c.id for c in cards]
    assert ids == [
        SERVED,
        "acme-full",
        "aaa@v1",
        "router",
        "router@v1",
        "router@v2",
        "router@production",
        "router@staging",
        "zzz@v1",
    ]
    roots = {c.id: c.root for c in cards}
    assert roots["router"] == roots["router@production"] == "router@v1"
    assert roots["router@staging"] == "router@v2" and roots["acme-full"] == "acme-full"
    owners = {c.id: c.owned_by for c in cards}
    assert owners[SERVED] == "system" and owners["acme-full"] == owners["router@v1"] == "acme"
    assert [c.id for c in await list_models(client, "globex", SERVED)] == [SERVED]

    resolver = ModelResolver(client)
    for form, root in {
        "router": "router@v1",
        "router@production": "router@v1",
        "router@staging": "router@v2",
        "router@v2": "router@v2",
        "router@2": "router@v2",
        SERVED: SERVED,
        "acme-full": "acme-full",
    }.items():
        card = await retrieve_model(resolver, client, "acme", form, SERVED)
        assert (card.id, card.root) == (form, root)
    for unknown in ("router@v3", "router@canary", "empty", "nope", "Bad Name!", "other-base"):
        with pytest.raises(NotFound) as info:
            await retrieve_model(resolver, client, "acme", unknown, SERVED)
        assert (info.value.code, info.value.param) == ("model_not_found", "model"), unknown
    for theirs in ("router@v1", "acme-full"):
        with pytest.raises(NotFound):
            await retrieve_model(resolver, client, "globex", theirs, SERVED)


async def test_a_replica_serving_a_tenants_merged_model_lists_it_to_that_tenant_only(
    registry: RegistryHarness, client: RegistryClient, model_dir: Path
) -> None:
    r = await upload_model(registry.http, "acme-full", model_archive(model_dir))
    assert r.status_code == 201, r.text
    acme = await list_models(client, "acme", "acme-full", served_owner="acme")
    assert acme[0].id == "acme-full" and acme[0].owned_by == "acme"
    globex = await list_models(client, "globex", "acme-full", served_owner="acme")
    assert "acme-full" not in [c.id for c in globex]  # the old listing named it as served
    resolver = ModelResolver(client)
    with pytest.raises(NotFound):
        await retrieve_model(resolver, client, "globex", "acme-full", "acme-full", "acme")
