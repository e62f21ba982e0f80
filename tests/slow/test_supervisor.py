"""``tunefleet up/status/down``: the whole fleet as processes, reached through the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.postgres import free_port

pytestmark = [pytest.mark.slow]
ADMIN = "tf-supervisor-admin"


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_up_status_down(tmp_path: Path, model_dir: Path) -> None:
    gw_port = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_HOME": str(tmp_path),
        "TUNEFLEET_ADMIN_KEY": ADMIN,
        "TUNEFLEET_REGISTRY_PORT": str(free_port()),
        "TUNEFLEET_INFERENCE_PORT": str(free_port()),
        "TUNEFLEET_TRAINING_PORT": str(free_port()),
        "TUNEFLEET_GATEWAY_PORT": str(gw_port),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
        "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
    }
    env.pop("DATABASE_URL", None)
    up = cli("up", "--detach", env=env)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert "fleet ready" in up.stderr
        rows = json.loads(cli("status", "--json", env=env).stdout)
        assert [r["name"] for r in rows] == ["registry", "inference", "training", "gateway"]
        assert all(r["ready"] for r in rows)
        r = httpx.post(
            f"http://127.0.0.1:{gw_port}/v1/completions",
            timeout=60,
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"model": "tiny-llama", "prompt": "Order", "max_tokens": 3},
        )
        assert r.status_code == 200, r.text
        for name in ("registry", "inference", "training", "gateway"):
            assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0
        again = cli("up", "--detach", env=env)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        down = cli("down", env=env)
    assert down.returncode == 0, down.stderr
    assert not any(
        psutil.pid_exists(r["pid"]) and psutil.Process(r["pid"]).status() != psutil.STATUS_ZOMBIE
        for r in rows
    )
    assert "fleet not running" in cli("status", env=env).stdout
