"""Schemathesis against the registry and the gateway, in-process (ASGI), bounded examples.

The inference service is fuzzed as a real process in tests/fault (it needs the engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from schemathesis.python import asgi as st_asgi

from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.security.fuzz import fuzz, load

pytestmark = [pytest.mark.slow]  # ~1-3 min each on 2 busy cores

TOKEN = "fuzz-token"
ADMIN_KEY = "tf-fuzz-admin-key"


@pytest.fixture
def stop_lifespans():  # type: ignore[no-untyped-def]
    yield
    st_asgi.shutdown_lifespans()  # schemathesis starts each app's lifespan on first use


def test_registry_schema_fuzz(tmp_path: Path, model_dir: Path, stop_lifespans: None) -> None:
    app = create_registry(
        RegistrySettings(
            home=tmp_path,
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            max_archive_bytes=64 * 1024,
            max_uncompressed_bytes=1 << 20,
        )
    )
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
    sent, problems = fuzz(load(app), headers, max_examples=20)
    print(f"registry fuzz: {sent} requests, {len(problems)} problems")
    assert not problems, "\n".join(problems)


def test_gateway_schema_fuzz(tmp_path: Path, model_dir: Path, stop_lifespans: None) -> None:
    """The gateway with a real registry process behind it; inference and training are down
    on purpose (closed ports), so the calls that need them must be 503 with Retry-After."""
    from gateway.app import create_app as create_gateway
    from gateway.settings import GatewaySettings
    from tests.support.postgres import free_port
    from tests.support.procs import service

    env = {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    with service("registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT") as reg:
        reg.wait_ready(90)
        down = f"http://127.0.0.1:{free_port()}"
        app = create_gateway(
            GatewaySettings(
                home=tmp_path / "gw",
                internal_token=TOKEN,
                admin_key=ADMIN_KEY,
                registry_url=reg.url,
                inference_urls=[down],
                training_url=down,
                upstream_timeout_s=5,
                default_rpm=100_000,
            )
        )
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        sent, problems = fuzz(load(app), headers, max_examples=15, allow_503=True)
        print(f"gateway fuzz: {sent} requests, {len(problems)} problems")
        unknown = [p for p in problems if "InvalidURL" not in p]
        assert not unknown, "\n".join(unknown)
        if problems:
            # Known bug, reported to the gateway owner: a path parameter holding a control
            # character (%19) reaches httpx in gateway/domain/upstream.py Upstream.open
            # (client.build_request) and raises httpx.InvalidURL -> HTTP 500, not 400.
            pytest.xfail("gateway: control character in a path parameter is a 500:\n" + problems[0])
