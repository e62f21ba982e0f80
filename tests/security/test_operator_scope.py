"""Operator roles are tenant-scoped (issue 18, item 1): the whole matrix of role x own/other
tenant x every ``/admin`` route of the gateway.

The routes are read from the app's route table, so a new ``/admin`` route without a row in
``MATRIX`` fails here instead of escaping the check. Callers: a customer tenant's (acme)
app/integrator/sre/admin keys, a platform sre and admin (granted by the bootstrap admin) and
the bootstrap admin itself; each request targets acme (own tenant for acme's keys) and globex
(another tenant). A tenant-scoped key gets 404 for another tenant (no existence leak), 403
for what its role or a fleet-wide operation forbids; a listing without a tenant filter shows
its own tenant only. The gateway runs in-process with its downstream services unreachable:
the routes that call them answer 503 once the caller is allowed.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import select

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.storage.tables import ApiKeyRow, AuditRow

TOKEN = "scope-test-token"
BOOTSTRAP = "tf-bootstrap-scope-test"
OWN, OTHER = "acme", "globex"
OK = "ok"


class Unreachable(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"nothing at {request.url.host}", request=request)


def gateway_app(home: Path, **overrides: Any) -> FastAPI:
    """The gateway in-process with its downstream services unreachable."""
    values: dict[str, Any] = {
        "internal_token": TOKEN,
        "admin_key": BOOTSTRAP,
        "registry_url": "http://registry",
        "training_url": "http://training",
        "inference_urls": ["http://inference"],
    }
    settings = GatewaySettings(home=home, **(values | overrides))
    return create_app(settings, upstream_transport=Unreachable())


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    return sorted(
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/admin")
        for method in route.methods
    )


@dataclass(frozen=True)
class Caller:
    name: str
    tenant: str
    role: str
    scope: str  # tenant | platform | bootstrap


CALLERS = [
    *(Caller(f"{OWN}-{role}", OWN, role, "tenant") for role in ("app", "integrator", "sre")),
    Caller(f"{OWN}-admin", OWN, "admin", "tenant"),
    Caller("platform-sre", "system", "sre", "platform"),
    Caller("platform-admin", "system", "admin", "platform"),
    Caller("bootstrap", "system", "admin", "bootstrap"),
]
ROLES_FOR = {"read": ("sre", "admin"), "write": ("admin",)}


@dataclass
class World:
    http: httpx.AsyncClient
    app: FastAPI
    keys: dict[str, str]  # caller name -> secret
    victims: dict[str, str]  # tenant -> id of an app key others may revoke/limit
    counter: itertools.count[int]

    async def call(self, caller: str, method: str, path: str, **kw: Any) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.keys[caller]}"}
        return await self.http.request(method, path, headers=auth, **kw)


Request = tuple[str, dict[str, Any]]  # path, httpx keyword arguments


@dataclass(frozen=True)
class Variant:
    """One way to call a route. ``kind``: tenant (the target tenant's resources), platform
    (fleet-wide), tenant_platform (a target tenant's fleet limit), bootstrap (granting a
    platform key), list (no tenant filter: only the caller's tenant is shown)."""

    kind: str
    need: str  # read | write
    build: Callable[[World, str], Request]
    upstream: bool = False  # allowed calls reach an (unreachable) service: 503
    row_tenant: Callable[[dict[str, Any]], str] | None = None


def expected(v: Variant, c: Caller, target: str) -> int | str:
    if c.role not in ROLES_FOR[v.need]:
        return 403
    platform = c.scope in ("platform", "bootstrap")
    own = target == c.tenant
    if v.kind == "list":
        return OK  # the target plays no part: the rows shown are checked instead
    if v.kind == "tenant":
        return OK if platform or own else 404
    if v.kind == "platform":
        return OK if platform else 403
    if v.kind == "tenant_platform":
        return OK if platform else 403 if own else 404
    assert v.kind == "bootstrap"
    return OK if c.scope == "bootstrap" else 403 if platform else 404


def _tenant_of(row: dict[str, Any]) -> str:
    return str(row["tenant"])


MATRIX: dict[tuple[str, str], list[Variant]] = {
    ("GET", "/admin/tenants"): [
        Variant("list", "read", lambda w, t: ("/admin/tenants", {}), row_tenant=lambda r: r["id"])
    ],
    ("POST", "/admin/tenants"): [
        Variant(
            "platform",
            "write",
            lambda w, t: ("/admin/tenants", {"json": {"id": f"new-{next(w.counter)}"}}),
        )
    ],
    ("PATCH", "/admin/tenants/{tenant_id}"): [
        Variant(
            "tenant", "write", lambda w, t: (f"/admin/tenants/{t}", {"json": {"pii_mode": "mask"}})
        ),
        Variant(
            "tenant_platform",
            "write",
            lambda w, t: (f"/admin/tenants/{t}", {"json": {"rpm": 5000}}),
        ),
    ],
    ("GET", "/admin/keys"): [
        Variant("tenant", "read", lambda w, t: ("/admin/keys", {"params": {"tenant": t}})),
        Variant("list", "read", lambda w, t: ("/admin/keys", {}), row_tenant=_tenant_of),
    ],
    ("POST", "/admin/keys"): [
        Variant(
            "tenant", "write", lambda w, t: ("/admin/keys", {"json": {"tenant": t, "role": "app"}})
        ),
        Variant(
            "bootstrap",
            "write",
            lambda w, t: ("/admin/keys", {"json": {"tenant": "system", "role": "sre"}}),
        ),
    ],
    ("DELETE", "/admin/keys/{key_id}"): [
        Variant("tenant", "write", lambda w, t: (f"/admin/keys/{w.victims[t]}", {})),
    ],
    ("GET", "/admin/usage"): [
        Variant("tenant", "read", lambda w, t: ("/admin/usage", {"params": {"tenant": t}})),
        Variant("list", "read", lambda w, t: ("/admin/usage", {}), row_tenant=_tenant_of),
    ],
    ("GET", "/admin/audit"): [
        Variant("tenant", "read", lambda w, t: ("/admin/audit", {"params": {"tenant": t}})),
        Variant("list", "read", lambda w, t: ("/admin/audit", {}), row_tenant=_tenant_of),
    ],
    ("GET", "/admin/audit/verify"): [
        Variant("platform", "read", lambda w, t: ("/admin/audit/verify", {})),
    ],
    ("GET", "/admin/quotas"): [
        Variant("tenant", "read", lambda w, t: ("/admin/quotas", {"params": {"tenant": t}})),
        Variant("list", "read", lambda w, t: ("/admin/quotas", {})),
    ],
    ("PUT", "/admin/quotas"): [
        Variant(
            "tenant_platform",
            "write",
            lambda w, t: ("/admin/quotas", {"json": {"tenant": t, "rpm": 99}}),
        ),
        Variant(
            "tenant",
            "write",
            lambda w, t: ("/admin/quotas", {"json": {"key_id": w.victims[t], "rpm": 7}}),
        ),
    ],
    ("POST", "/admin/erasure"): [
        Variant(
            "tenant",
            "write",
            lambda w, t: ("/admin/erasure", {"json": {"tenant": t}}),
            upstream=True,
        ),
        Variant(
            "platform",
            "write",
            lambda w, t: ("/admin/erasure", {"json": {"subject": {"email": "a.b@example.com"}}}),
            upstream=True,
        ),
    ],
    ("PUT", "/admin/retention/{tenant_id}"): [
        Variant(
            "tenant",
            "write",
            lambda w, t: (f"/admin/retention/{t}", {"json": {"days": 30}}),
            upstream=True,
        ),
    ],
    ("GET", "/admin/retention/{tenant_id}"): [
        Variant("tenant", "read", lambda w, t: (f"/admin/retention/{t}", {}), upstream=True),
    ],
}

ROUTES = admin_routes(gateway_app(Path(tempfile.gettempdir()) / "tunefleet-scope-collect"))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    app = gateway_app(tmp_path)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        w = World(http, app, {"bootstrap": BOOTSTRAP}, {}, itertools.count())
        for tenant in (OWN, OTHER):
            r = await w.call("bootstrap", "POST", "/admin/tenants", json={"id": tenant})
            assert r.status_code == 201, r.text
            r = await w.call(
                "bootstrap", "POST", "/admin/keys", json={"tenant": tenant, "role": "app"}
            )
            w.victims[tenant] = r.json()["id"]
            r = await w.call(
                "bootstrap", "PUT", "/admin/quotas", json={"tenant": tenant, "rpm": 50}
            )
            assert r.status_code == 200, r.text
        for c in CALLERS:
            if c.scope != "bootstrap":
                r = await w.call(
                    "bootstrap", "POST", "/admin/keys", json={"tenant": c.tenant, "role": c.role}
                )
                assert r.status_code == 201, r.text
                w.keys[c.name] = r.json()["key"]
        yield w


def test_every_admin_route_is_in_the_matrix() -> None:
    assert len(ROUTES) >= 14, ROUTES
    missing = [r for r in ROUTES if r not in MATRIX]
    assert not missing, f"add these /admin routes to MATRIX: {missing}"
    assert not set(MATRIX) - set(ROUTES), "MATRIX lists routes the app no longer has"


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
async def test_admin_route_is_tenant_scoped(world: World, route: tuple[str, str]) -> None:
    method = route[0]
    problems = []
    for v, c, target in itertools.product(MATRIX[route], CALLERS, (OWN, OTHER)):
        path, kw = v.build(world, target)
        r = await world.call(c.name, method, path, **kw)
        want = expected(v, c, target)
        ok_status = r.is_success or (v.upstream and r.status_code == 503)
        got: int | str = OK if ok_status else r.status_code
        where = f"{c.name} {method} {path} {kw} ({v.kind}, target {target})"
        if got != want:
            problems.append(f"{where}: {r.status_code} {r.text[:160]}, expected {want}")
        elif got == OK and v.row_tenant and c.scope == "tenant":
            seen = {v.row_tenant(row) for row in r.json()["data"]}
            if seen - {c.tenant}:
                problems.append(f"{where}: shows other tenants {seen}")
    assert not problems, "\n".join(problems)
    # and nothing a tenant's key did landed in another tenant's audit trail
    with world.app.state.gateway.db.session() as s:
        acme_keys = set(s.scalars(select(ApiKeyRow.id).where(ApiKeyRow.tenant == OWN)))
        leaks = s.scalars(
            select(AuditRow).where(AuditRow.actor.in_(acme_keys), AuditRow.tenant != OWN)
        ).all()
        assert not leaks, [(a.action, a.tenant, a.target) for a in leaks]


async def test_platform_keys_only_from_the_bootstrap_admin(world: World) -> None:
    """A platform admin cannot mint more platform keys (nor admin keys for the system tenant);
    a customer admin cannot create a key for another tenant or the system tenant; the keys a
    platform admin creates for a customer stay tenant-scoped."""
    for caller, status in (("platform-admin", 403), (f"{OWN}-admin", 404)):
        r = await world.call(
            caller, "POST", "/admin/keys", json={"tenant": "system", "role": "admin"}
        )
        assert r.status_code == status, r.text
    r = await world.call(
        "platform-admin", "POST", "/admin/keys", json={"tenant": OWN, "role": "admin"}
    )
    assert r.status_code == 201, r.text
    world.keys["made"] = r.json()["key"]
    r = await world.call("made", "GET", "/admin/keys", params={"tenant": OTHER})
    assert r.status_code == 404
    r = await world.call("made", "POST", "/admin/erasure", json={"tenant": OTHER})
    assert r.status_code == 404
    listed = await world.call("made", "GET", "/admin/tenants")
    assert [t["id"] for t in listed.json()["data"]] == [OWN]
