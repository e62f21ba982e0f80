"""The ``tunefleet`` CLI as a user runs it: a real process, against the fleet that
``tunefleet up`` started (real registry, vLLM inference, Ray training, gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import free_port

ADMIN = "tf-cli-admin-key"


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Errors are one readable line on stderr, never a traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_errors_are_one_line_without_a_fleet(tmp_path: Path) -> None:
    env = {**os.environ, "TUNEFLEET_URL": f"http://127.0.0.1:{free_port()}", "COLUMNS": "400"}
    env.pop("TUNEFLEET_API_KEY", None)
    assert "(gateway_unavailable)" in one_line_error(cli("models", env=env, timeout=60))
    data = tmp_path / "d.csv"
    data.write_text("a,b\n1,2\n")
    bad = cli("files", "upload", str(data), "--mapping", "{nope", env=env, timeout=60)
    assert "--mapping is not valid JSON" in one_line_error(bad)
    missing = cli("files", "upload", str(tmp_path / "absent.csv"), env=env, timeout=60)
    assert "no such file" in one_line_error(missing)
    wrong = cli("jobs", "create", "--model", "m", "--training-file", "f", "--epochs", "x", env=env)
    assert "expected a number or 'auto'" in one_line_error(wrong)


@pytest.fixture(scope="module")
def fleet_env(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("cli-fleet")
    gw = free_port()
    env = {
        **os.environ,
        "TUNEFLEET_HOME": str(home),
        "TUNEFLEET_ADMIN_KEY": ADMIN,
        "TUNEFLEET_REGISTRY_PORT": str(free_port()),
        "TUNEFLEET_INFERENCE_PORT": str(free_port()),
        "TUNEFLEET_TRAINING_PORT": str(free_port()),
        "TUNEFLEET_GATEWAY_PORT": str(gw),
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
        "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
        "TUNEFLEET_TRAINING_RAY_NUM_CPUS": "2",
        "TUNEFLEET_URL": f"http://127.0.0.1:{gw}",
        "TUNEFLEET_API_KEY": ADMIN,
        "COLUMNS": "200",
        "CI": "true",
    }
    env.pop("DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    up = cli("up", "--detach", env=env)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        yield env
    finally:
        down = cli("down", env=env)
        assert down.returncode == 0, down.stderr


def run_json(env: dict[str, str], *args: str) -> object:
    result = cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_admin_and_api_commands(fleet_env: dict[str, str], tmp_path: Path) -> None:
    env = fleet_env
    tenant = run_json(env, "tenants", "create", "clitest")
    assert tenant["id"] == "clitest"
    key = run_json(env, "keys", "create", "--tenant", "clitest", "--role", "integrator")
    assert str(key["key"]).startswith("tf-")
    listed = run_json(env, "keys", "list", "--tenant", "clitest")
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    as_integrator = {**env, "TUNEFLEET_API_KEY": str(key["key"])}
    models = run_json(as_integrator, "models")
    assert "tiny-llama" in {m["id"] for m in models}
    assert run_json(as_integrator, "adapters", "list") == []
    assert run_json(as_integrator, "jobs", "list") == []
    data = tmp_path / "tickets.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"prompt": f"Ticket {i}", "completion": " billing"}) for i in range(12)
        )
    )
    uploaded = run_json(as_integrator, "files", "upload", str(data))
    assert uploaded["status"] == "processed" and uploaded["id"].startswith("file-")
    assert [f["id"] for f in run_json(as_integrator, "files", "list")] == [uploaded["id"]]
    chat = run_json(as_integrator, "chat", "Ticket: my card was charged twice", "--max-tokens", "3")
    assert chat["usage"]["completion_tokens"] >= 1
    # The envelope's message and code, on one line.
    nope = cli("adapters", "versions", "no-such-adapter", env=as_integrator)
    assert "(not_found)" in one_line_error(nope) or "(adapter_not_found)" in nope.stderr
    bad_key = cli("models", env={**env, "TUNEFLEET_API_KEY": "tf-wrong"})
    assert "(invalid_api_key)" in one_line_error(bad_key)
    forbidden = cli("tenants", "list", env=as_integrator)
    assert forbidden.returncode == 1 and "Traceback" not in forbidden.stderr
