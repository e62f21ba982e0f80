"""The registry as a real process (``python -m services.registry``) on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.adapters import make_adapter, pack
from tests.support.procs import service

TOKEN = "process-test-token"


def test_real_process_serves_push_and_resolve(model_dir: Path, tmp_path: Path) -> None:
    env = {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    with service("registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT") as reg:
        reg.wait_ready(60)
        url = reg.url
        archive = pack(make_adapter(model_dir, tmp_path / "a"), tmp_path / "a.tar.gz")
        h = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme", "X-Request-Id": "req-42"}
        assert httpx.get(f"{url}/healthz").json()["service"] == "registry"
        assert httpx.get(f"{url}/v1/adapters").status_code == 401
        with archive.open("rb") as fh:
            r = httpx.post(
                f"{url}/v1/adapters/proc/versions",
                headers=h,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model": "tiny-llama"}'},
            )
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == "req-42"
        resolved = httpx.get(f"{url}/v1/resolve", params={"model": "proc@1"}, headers=h).json()
        assert resolved["ref"] == "acme/proc@v1"
        assert (
            "tunefleet_registry_http_request_duration_seconds" in httpx.get(f"{url}/metrics").text
        )
        # JSON logs carry the request id and never the token
        time.sleep(0.2)
        assert '"request_id": "req-42"' in reg.log_text()
        assert TOKEN not in reg.log_text()
        assert (tmp_path / "registry" / "registry.db").exists()
