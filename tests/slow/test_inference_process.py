"""Registry + inference as real processes: serving an adapter, and a SIGTERM drain that lets
in-flight requests finish, refuses new ones, and leaves no vLLM process behind."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.adapters import make_adapter, pack
from tests.support.procs import service

pytestmark = [pytest.mark.slow]
TOKEN = "proc-fleet-token"


async def test_serve_adapter_then_drain_on_sigterm(tmp_path: Path, model_dir: Path) -> None:
    env = {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    with service("registry", "services.registry", tmp_path, env, "TUNEFLEET_REGISTRY_PORT") as reg:
        reg.wait_ready(60)
        inf_env = {
            **env,
            "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
            "TUNEFLEET_INFERENCE_REGISTRY_URL": reg.url,
            "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
            "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
            "TUNEFLEET_INFERENCE_MAX_LORAS": "2",
            "TUNEFLEET_INFERENCE_MAX_CPU_LORAS": "4",
            "TUNEFLEET_INFERENCE_DRAIN_TIMEOUT_S": "60",
        }
        with service(
            "inference", "services.inference", tmp_path, inf_env, "TUNEFLEET_INFERENCE_PORT"
        ) as inf:
            inf.wait_ready(300)
            h = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
            archive = pack(make_adapter(model_dir, tmp_path / "a"), tmp_path / "a.tar.gz")
            with archive.open("rb") as fh:
                r = httpx.post(
                    f"{reg.url}/v1/adapters/proc/versions",
                    headers=h,
                    files={"file": ("a.tar.gz", fh)},
                    data={"metadata": '{"base_model": "tiny-llama"}'},
                )
            assert r.status_code == 201, r.text
            body = {
                "model": "proc@1",
                "prompt": "Ticket: refund please\nCategory:",
                "max_tokens": 48,
                "temperature": 0,
            }
            r = httpx.post(f"{inf.url}/v1/completions", json=body, headers=h, timeout=120)
            assert r.status_code == 200, r.text
            assert r.headers["x-tunefleet-adapter-version"] == "acme/proc@v1"

            children = psutil.Process(inf.proc.pid).children(recursive=True)
            assert children, "the vLLM engine runs in child processes"
            async with httpx.AsyncClient(base_url=inf.url, headers=h, timeout=120) as client:
                inflight = [
                    asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(4)
                ]
                await asyncio.sleep(0.5)  # requests are running in the engine
                inf.proc.terminate()  # SIGTERM: drain
                await asyncio.sleep(0.3)
                try:
                    late = await client.post("/v1/completions", json=body)
                    late_status: int | str = late.status_code
                except httpx.TransportError as exc:  # listener already closed
                    late_status = type(exc).__name__
                results = await asyncio.gather(*inflight)
            assert [r.status_code for r in results] == [200] * 4
            assert all(r.json()["usage"]["completion_tokens"] > 0 for r in results)
            assert late_status in (503, "ConnectError", "RemoteProtocolError", "ReadError")
            code = inf.proc.wait(timeout=90)
            # uvicorn re-raises the captured SIGTERM once its graceful shutdown is complete
            assert code in (0, -signal.SIGTERM), inf.log_text()[-3000:]
            assert "Application shutdown complete" in inf.log_text()
            time.sleep(1)
            alive = [
                c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
            ]
            assert not alive, f"vLLM processes outlived the service: {alive}"
            assert TOKEN not in inf.log_text()
