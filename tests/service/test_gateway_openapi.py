"""The gateway's OpenAPI is a typed contract (issue 19, item 2): every operation answers a
typed 2xx schema, every write with a body documents it, and every ``$ref`` resolves.

Also: the typed ``GatewayClient`` against the in-process gateway, so the client, the routes'
response models and the JSON on the wire are checked against one another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import BaseModel

from shared.clients.gateway import GatewayClient
from shared.schemas.admin import AuditEntry, KeyCreated, KeyOut, KeyRevoked, TenantOut
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

# Writes that take no body (the job id in the path is all there is).
BODYLESS = {("post", "/v1/fine_tuning/jobs/{job_id}/cancel")}
WRITES = ("post", "put", "patch")


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return gateway_app(tmp_path_factory.mktemp("openapi")).openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/"), ref
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def _typed(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says something: a model with properties, a union of models, a list of
    typed items, or a binary string; not ``{}`` nor a free-form object."""
    s = _resolve(spec, schema)
    if "oneOf" in s or "anyOf" in s:
        return all(_typed(spec, sub) for sub in s.get("oneOf") or s["anyOf"])
    if s.get("type") == "array":
        return _typed(spec, s.get("items", {}))
    if s.get("type") == "string":
        return s.get("format") == "binary" or "enum" in s
    return bool(s.get("properties"))


def test_every_operation_has_a_typed_2xx_response(spec: dict[str, Any]) -> None:
    untyped = []
    for method, path, op in _operations(spec):
        ok = [
            media
            for status, resp in op["responses"].items()
            if status.startswith("2")
            for media in resp.get("content", {}).values()
            if _typed(spec, media.get("schema", {}))
        ]
        if not ok:
            untyped.append(f"{method.upper()} {path}")
    assert not untyped, f"operations without a typed 2xx response schema: {untyped}"
    assert len(_operations(spec)) >= 51


def test_every_write_with_a_body_documents_it(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, op in _operations(spec):
        if method not in WRITES or (method, path) in BODYLESS:
            continue
        content = op.get("requestBody", {}).get("content", {})
        if not content or not all(_typed(spec, m.get("schema", {})) for m in content.values()):
            missing.append(f"{method.upper()} {path}")
    assert not missing, f"writes without a typed request schema: {missing}"


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    names = set(spec["components"]["schemas"])
    dangling = sorted({r for r in refs if r.rsplit("/", 1)[1] not in names})
    assert refs and not dangling, dangling


def _exact(model: type[BaseModel], data: dict[str, Any]) -> None:
    """The wire object has exactly the model's fields (by alias) and validates."""
    fields = {f.alias or name for name, f in model.model_fields.items()}
    assert set(data) == fields, (model.__name__, sorted(data), sorted(fields))
    model.model_validate(data)


async def test_typed_client_against_the_gateway(tmp_path: Path) -> None:
    app = gateway_app(tmp_path)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with GatewayClient("http://gateway", BOOTSTRAP, transport=transport) as gw:
            # the typed client validates every answer with the route's own response model;
            # the raw JSON must have exactly the model's fields (nothing added or dropped)
            tenant = await gw.create_tenant("acme", "Acme")
            assert (tenant.id, tenant.name) == ("acme", "Acme")
            created = await gw.create_key("acme", "sre", "ops")
            assert created.key.startswith("tf-") and created.role == "sre"
            keys = await gw.list_keys("acme")
            assert [k.id for k in keys] == [created.id]
            assert [t.id for t in await gw.list_tenants()] == ["acme", "system"]
            revoked = await gw.revoke_key(created.id)
            assert revoked.revoked and revoked.deleted
            entries = await gw.audit("acme")
            assert [e.action for e in entries] == ["key.revoke", "key.create", "tenant.create"]
            assert await gw.usage("acme") == []
            for model, path, params in (
                (TenantOut, "/admin/tenants", {}),
                (KeyOut, "/admin/keys", {"tenant": "acme"}),
                (AuditEntry, "/admin/audit", {"tenant": "acme"}),
            ):
                for item in await gw._data(path, params=params):
                    _exact(model, item)
            _exact(
                KeyCreated,
                await gw._object("POST", "/admin/keys", json={"tenant": "acme", "role": "app"}),
            )
            _exact(KeyRevoked, await gw._object("DELETE", f"/admin/keys/{created.id}"))
            # a key's quota has no "effective" (only a tenant's has), as before the models
            for body, has_effective in (
                ({"key_id": created.id, "rpm": 5}, False),
                ({"tenant": "acme", "tpm": 1000}, True),
            ):
                quota = await gw._object("PUT", "/admin/quotas", json=body)
                assert ("effective" in quota) is has_effective, quota
            listed = await gw._object("GET", "/admin/quotas", params={"tenant": "acme"})
            assert [q["scope"] for q in listed["data"]] == ["key", "tenant"]
            assert set(listed["defaults"]) == {
                "rpm",
                "tpm",
                "max_streams",
                "max_adapters",
                "max_jobs",
            }
