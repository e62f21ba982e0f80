"""The registry as a real process (``python -m services.registry``) on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.adapters import make_adapter, pack
from tests.support.postgres import free_port

TOKEN = "process-test-token"


@pytest.fixture
def registry_process(tmp_path: Path, model_dir: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_HOME": str(tmp_path),
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_PORT": str(port),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    env.pop("DATABASE_URL", None)
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.registry"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, (tmp_path / "registry.log").read_text()
        time.sleep(0.2)
    yield url, tmp_path
    proc.terminate()
    proc.wait(timeout=30)


def test_real_process_serves_push_and_resolve(
    registry_process,
    model_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    url, home = registry_process
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
    assert (
        httpx.get(f"{url}/v1/resolve", params={"model": "proc@1"}, headers=h).json()["ref"]
        == "acme/proc@v1"
    )
    assert "tunefleet_registry_http_request_duration_seconds" in httpx.get(f"{url}/metrics").text
    # JSON logs carry the request id and never the token
    time.sleep(0.2)
    log_text = (home / "registry.log").read_text()
    assert '"request_id": "req-42"' in log_text
    assert TOKEN not in log_text
    assert (home / "registry" / "registry.db").exists()
