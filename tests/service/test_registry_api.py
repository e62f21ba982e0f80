"""The registry over HTTP (in-process ASGI), against SQLite and a real Postgres alike."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import RegistryHarness
from tests.support.adapters import make_adapter, make_foreign_base, pack, set_config
from tests.support.models import model_archive, upload_model


@pytest.fixture(scope="module")
def adapter_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(model_dir, tmp_path_factory.mktemp("adapter") / "a", r=8)


@pytest.fixture(scope="module")
def archive(adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(adapter_dir, tmp_path_factory.mktemp("arch") / "adapter.tar.gz")


def meta(**kw: object) -> str:
    return json.dumps({"base_model": "tiny-llama", **kw})


async def push(
    reg: RegistryHarness,
    name: str,
    archive: Path,
    *,
    tenant: str = "acme",
    metadata: str | None = None,
) -> httpx.Response:
    with archive.open("rb") as fh:
        return await reg.http.post(
            f"/v1/adapters/{name}/versions",
            headers=reg.headers(tenant),
            files={"file": ("a.tar.gz", fh, "application/gzip")},
            data={
                "metadata": metadata
                or meta(lineage={"job_id": "ftjob-1", "metrics": {"accuracy": 0.9}})
            },
        )


def stored_blobs(reg: RegistryHarness) -> list[Path]:
    return [p for p in (reg.home / "artifacts" / "sha256").rglob("*") if p.is_file()]


async def test_health_ready_metrics(registry: RegistryHarness) -> None:
    assert (await registry.http.get("/healthz")).json()["status"] == "ok"
    assert (await registry.http.get("/readyz")).status_code == 200
    await registry.http.get("/v1/base-models")
    text = (await registry.http.get("/metrics")).text
    assert 'tunefleet_registry_http_requests_total{method="GET",route="/v1/base-models"' in text


async def test_internal_token_and_tenant_required(registry: RegistryHarness) -> None:
    r = await registry.http.get("/v1/adapters", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    body = r.json()["error"]
    assert body["code"] == "invalid_internal_token" and body["request_id"]
    assert r.headers["x-request-id"] == body["request_id"]
    r = await registry.http.get("/v1/adapters", headers={"X-Tenant-Id": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Tenant-Id"


async def test_catalog_seeded_with_tiny_llama(registry: RegistryHarness) -> None:
    data = (await registry.http.get("/v1/base-models")).json()["data"]
    tiny = next(m for m in data if m["id"] == "tiny-llama")
    assert tiny["architecture"] == "LlamaForCausalLM" and tiny["has_chat_template"]
    assert len(tiny["weights_sha256"]) == 64


async def test_register_tenant_base_model(registry: RegistryHarness, model_dir: Path) -> None:
    """A full fine-tune is uploaded as the tenant's own base (created_at set at flush); a
    directory path is no way in any more (replicas could not read it)."""
    r = await upload_model(registry.http, "acme-merged", model_archive(model_dir))
    assert r.status_code in (200, 201), r.text
    out = r.json()
    assert out["id"] == "acme-merged" and out["created"] > 0 and out["owned_by"] == "acme"
    again = await upload_model(registry.http, "acme-merged", model_archive(model_dir))
    assert again.status_code == 409 and again.json()["error"]["param"] == "metadata.id"
    by_path = await registry.http.post(
        "/v1/base-models", json={"id": "acme-path", "path": str(model_dir)}
    )
    assert by_path.status_code in (400, 422), by_path.text


async def test_push_list_resolve_alias_move(registry: RegistryHarness, archive: Path) -> None:
    r1 = await push(registry, "support-router", archive)
    assert r1.status_code == 201, r1.text
    v1 = r1.json()
    assert v1["version"] == 1 and v1["ref"] == "acme/support-router@v1"
    assert v1["rank"] == 8 and v1["target_modules"] == ["q_proj", "v_proj"]
    assert v1["lineage"]["job_id"] == "ftjob-1" and v1["lineage"]["base_model"] == "tiny-llama"
    v2 = (await push(registry, "support-router", archive)).json()
    assert v2["version"] == 2 and v2["sha256"] == v1["sha256"]
    assert len(stored_blobs(registry)) == 1  # content-addressed: same bytes stored once

    listed = (await registry.http.get("/v1/adapters")).json()
    assert [a["name"] for a in listed["data"]] == ["support-router"]
    assert listed["data"][0]["latest_version"] == 2

    r = await registry.http.get("/v1/resolve", params={"model": "support-router"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

    for alias, version in (("production", 1), ("staging", 2)):
        r = await registry.http.put(
            f"/v1/adapters/support-router/aliases/{alias}",
            json={"version": version},
            headers={**registry.headers(), "X-Tunefleet-Actor": "key_1"},
        )
        assert r.status_code == 200, r.text
    res = (await registry.http.get("/v1/resolve", params={"model": "support-router"})).json()
    assert res["kind"] == "adapter" and res["ref"] == "acme/support-router@v1"
    assert res["archive_path"] == "/v1/adapters/support-router/versions/1/archive"
    res = (
        await registry.http.get("/v1/resolve", params={"model": "support-router@staging"})
    ).json()
    assert res["version"] == 2
    res = (await registry.http.get("/v1/resolve", params={"model": "support-router@v2"})).json()
    assert res["version"] == 2 and res["alias"] is None

    moved = await registry.http.put(
        "/v1/adapters/support-router/aliases/production", json={"version": 2}
    )
    assert moved.json()["previous_version"] == 1
    res = (await registry.http.get("/v1/resolve", params={"model": "support-router"})).json()
    assert res["ref"] == "acme/support-router@v2"

    moves = (await registry.http.get("/v1/adapters/support-router/alias-moves")).json()["data"]
    assert [(m["alias"], m["from_version"], m["to_version"]) for m in moves] == [
        ("production", 1, 2),
        ("staging", None, 2),
        ("production", None, 1),
    ]
    assert moves[-1]["actor"] == "key_1"

    base = (await registry.http.get("/v1/resolve", params={"model": "tiny-llama"})).json()
    assert base == {**base, "kind": "base", "ref": "tiny-llama"}


async def test_archive_download_is_verified_bytes(registry: RegistryHarness, archive: Path) -> None:
    v = (await push(registry, "dl", archive)).json()
    r = await registry.http.get("/v1/adapters/dl/versions/1/archive")
    assert r.status_code == 200 and r.content == archive.read_bytes()
    assert r.headers["x-tunefleet-sha256"] == v["sha256"]


async def test_tenants_are_isolated(registry: RegistryHarness, archive: Path) -> None:
    assert (await push(registry, "secret", archive)).status_code == 201
    other = registry.headers("globex")
    for path in (
        "/v1/adapters/secret",
        "/v1/adapters/secret/versions/1",
        "/v1/adapters/secret/versions/1/archive",
    ):
        r = await registry.http.get(path, headers=other)
        assert r.status_code == 404, path
    r = await registry.http.get("/v1/resolve", params={"model": "secret@1"}, headers=other)
    assert r.status_code == 404
    r = await registry.http.put(
        "/v1/adapters/secret/aliases/production", json={"version": 1}, headers=other
    )
    assert r.status_code == 404
    assert (await registry.http.get("/v1/adapters", headers=other)).json()["data"] == []


@pytest.mark.parametrize(
    "kind",
    [
        "absolute_path",
        "dot_dot",
        "symlink",
        "hardlink",
        "device",
        "too_many_members",
        "gzip_bomb",
        "not_gzip",
        "plain_gzip",
        "truncated",
        "pickle_weights",
        "missing_config",
        "corrupt_weights",
    ],
)
async def test_malicious_archive_rejected_nothing_stored(
    registry: RegistryHarness, adapter_dir: Path, tmp_path: Path, kind: str
) -> None:
    from tests.support.bad_archives import BAD_ARCHIVES

    build, status, code = BAD_ARCHIVES[kind]
    bad = build(adapter_dir, tmp_path / f"{kind}.tar.gz")
    r = await push(registry, "evil", bad)
    assert r.status_code == status, (kind, r.text)
    err = r.json()["error"]
    assert err["code"] == code, (kind, err)
    assert err["message"] and "Traceback" not in r.text
    assert (await registry.http.get("/v1/adapters/evil")).status_code == 404
    assert stored_blobs(registry) == []
    assert list((registry.home / "artifacts" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "case,code",
    [
        ("rank_too_large", "adapter_rank_too_large"),
        ("modules_to_save", "modules_to_save_unsupported"),
        ("foreign_base", "base_model_mismatch"),
        ("wrong_base_name", "base_model_mismatch"),
    ],
)
async def test_semantically_invalid_adapter_is_422(
    registry: RegistryHarness, model_dir: Path, tmp_path: Path, case: str, code: str
) -> None:
    if case == "rank_too_large":
        d = make_adapter(model_dir, tmp_path / "a", r=32)
    elif case == "foreign_base":
        foreign = make_foreign_base(tmp_path / "foreign")
        d = set_config(
            make_adapter(foreign, tmp_path / "a"), base_model_name_or_path=str(model_dir)
        )
    else:
        d = make_adapter(model_dir, tmp_path / "a")
        if case == "modules_to_save":
            set_config(d, modules_to_save=["lm_head"])
        else:
            set_config(d, base_model_name_or_path="some-other/model")
    r = await push(registry, "bad", pack(d, tmp_path / "a.tar.gz"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert stored_blobs(registry) == []


@pytest.mark.parametrize(
    "metadata,param",
    [
        ("{not json", "metadata"),
        (json.dumps({"description": "no base"}), "metadata.base_model"),
        (json.dumps({"base_model": "no-such-base"}), "metadata.base_model"),
    ],
)
async def test_bad_metadata_names_the_field(
    registry: RegistryHarness, archive: Path, metadata: str, param: str
) -> None:
    r = await push(registry, "m", archive, metadata=metadata)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]["param"] == param
    assert stored_blobs(registry) == []


async def test_bad_names_and_selectors(registry: RegistryHarness, archive: Path) -> None:
    assert (await push(registry, "Bad Name", archive)).status_code in (400, 404)
    await push(registry, "ok", archive)
    r = await registry.http.put("/v1/adapters/ok/aliases/v2", json={"version": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "alias"
    r = await registry.http.put("/v1/adapters/ok/aliases/prod", json={"version": 9})
    assert r.status_code == 404 and r.json()["error"]["param"] == "version"
    r = await registry.http.put("/v1/adapters/ok/aliases/prod", json={"version": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "version"
    r = await registry.http.get("/v1/resolve", params={"model": "ok@@x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


async def test_concurrent_pushes_get_distinct_versions(
    registry: RegistryHarness, archive: Path
) -> None:
    results = await asyncio.gather(*(push(registry, "race", archive) for _ in range(6)))
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    assert sorted(r.json()["version"] for r in results) == [1, 2, 3, 4, 5, 6]


async def test_concurrent_alias_moves_end_consistent(
    registry: RegistryHarness, archive: Path
) -> None:
    for _ in range(4):
        await push(registry, "flip", archive)
    moves = [
        registry.http.put("/v1/adapters/flip/aliases/production", json={"version": v})
        for v in (1, 2, 3, 4, 2, 3, 1, 4)
    ]
    assert all(r.status_code == 200 for r in await asyncio.gather(*moves))
    alias = (await registry.http.get("/v1/adapters/flip/aliases/production")).json()
    history = (
        await registry.http.get("/v1/adapters/flip/alias-moves", params={"limit": 100})
    ).json()["data"]
    assert len(history) == 8
    assert history[0]["to_version"] == alias["version"]  # last recorded move is the state
    # the moves form one chain: each starts where the previous one ended
    chain = list(reversed(history))
    assert chain[0]["from_version"] is None
    assert all(a["to_version"] == b["from_version"] for a, b in itertools.pairwise(chain))


async def test_delete_adapter_requires_no_aliases(registry: RegistryHarness, archive: Path) -> None:
    await push(registry, "gone", archive)
    await registry.http.put("/v1/adapters/gone/aliases/production", json={"version": 1})
    r = await registry.http.delete("/v1/adapters/gone")
    assert r.status_code == 422 and r.json()["error"]["code"] == "adapter_has_aliases"
    await registry.http.delete("/v1/adapters/gone/aliases/production")
    assert (await registry.http.delete("/v1/adapters/gone")).status_code == 200
    assert (await registry.http.get("/v1/adapters/gone")).status_code == 404
    assert stored_blobs(registry) == []


async def test_routing_errors_use_the_envelope(registry: RegistryHarness) -> None:
    r = await registry.http.get("/v1/nowhere")
    assert r.status_code == 404
    assert r.json()["error"] == {
        **r.json()["error"],
        "code": "not_found",
        "type": "invalid_request_error",
    }
    r = await registry.http.patch("/v1/adapters")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
