"""Services behind the gateway refuse any request without the internal token and bind to
127.0.0.1 unless told otherwise: checked on the settings defaults, on every route of the
in-process registry, on the route table of the training app, and on a real registry process's
listening socket."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
from fastapi.routing import APIRoute

from gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.registry.settings import RegistrySettings
from services.training.settings import TrainingSettings
from shared.auth import require_internal_token
from tests.conftest import RegistryHarness
from tests.support.procs import service

PUBLIC = {"/healthz", "/readyz", "/metrics"}
SETTINGS = [RegistrySettings, InferenceSettings, TrainingSettings, GatewaySettings]


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_service_binds_loopback_by_default(
    cls: type, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prefix = cls.model_config.get("env_prefix", "")
    monkeypatch.delenv(f"{prefix}HOST", raising=False)
    assert cls(home=tmp_path).host == "127.0.0.1"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def _api_routes(app: object) -> list[tuple[str, str]]:
    out = []
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.path not in PUBLIC:
            out += [(m, route.path) for m in sorted(route.methods)]
    return out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_registry_route_refuses_without_the_token(registry: RegistryHarness) -> None:
    routes = _api_routes(registry.app)
    assert len(routes) >= 10
    for method, path in routes:
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "tf-customer-key"}):
            # The harness client sends the real token by default: override it (empty = none).
            headers = {"X-Tenant-Id": "acme", "Authorization": auth.get("Authorization", "")}
            r = await registry.http.request(method, _concrete(path), headers=headers)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_internal_token"


def _depends_on(route: APIRoute, names: set[str]) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if getattr(dep.call, "__name__", "") in names:
            return True
        stack += dep.dependencies
    return False


def test_training_routes_all_need_a_token(tmp_path: Path) -> None:
    from services.training.app import create_app

    app = create_app(TrainingSettings(home=tmp_path, internal_token="t"))
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path not in PUBLIC]
    assert routes
    for route in routes:
        # The Ray job runner authenticates with its per-job token instead.
        allowed = {require_internal_token.__name__, "runner_token"}
        assert _depends_on(route, allowed), route.path


def test_real_registry_process_listens_on_loopback_only(model_dir: Path, tmp_path: Path) -> None:
    import httpx

    env = {
        "TUNEFLEET_INTERNAL_TOKEN": "bind-test-token",
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    with service("registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT") as reg:
        reg.wait_ready(90)
        proc = psutil.Process(reg.proc.pid)
        listening = [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening, "no listening socket found"
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
        r = httpx.get(f"{reg.url}/v1/adapters", headers={"X-Tenant-Id": "acme"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_internal_token"
