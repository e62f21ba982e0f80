"""Services as real processes on loopback (``python -m …``), as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.postgres import free_port


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0, probe: str = "/readyz") -> None:
        """Until ``probe`` answers 200 (``/healthz`` for a gateway with no replica to be
        ready for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log_text()[-4000:]}"
            try:
                if httpx.get(f"{self.url}{probe}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


@contextmanager
def service(
    name: str, module: str, home: Path, env: dict[str, str], port_var: str
) -> Iterator[ServiceProcess]:
    """Start ``python -m module`` with ``env`` on a free port; stop it (SIGTERM) on exit."""
    port = free_port()
    full_env = {**os.environ, "TUNEFLEET_HOME": str(home), port_var: str(port), **env}
    full_env.pop("DATABASE_URL", None)
    log = home / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=full_env, stdout=fh, stderr=subprocess.STDOUT
        )
    sp = ServiceProcess(name, proc, f"http://127.0.0.1:{port}", log)
    try:
        yield sp
    finally:
        sp.stop()


@contextmanager
def registry_and_gateway(
    tmp_path: Path, model_dir: Path, token: str, gateway_env: dict[str, str]
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A registry and a gateway in front of it as processes (training and inference URLs
    point at closed ports); yielded once the gateway is healthy."""
    common = {"TUNEFLEET_INTERNAL_TOKEN": token}
    reg_env = common | {"TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)}
    (tmp_path / "reg").mkdir()
    (tmp_path / "gw").mkdir()
    with service(
        "registry", "services.registry", tmp_path / "reg", reg_env, "TUNEFLEET_REGISTRY_PORT"
    ) as reg:
        reg.wait_ready(120)
        gw_env = common | {
            "TUNEFLEET_GATEWAY_REGISTRY_URL": reg.url,
            "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": f'["http://127.0.0.1:{free_port()}"]',
            **gateway_env,
        }
        with service("gateway", "gateway", tmp_path / "gw", gw_env, "TUNEFLEET_GATEWAY_PORT") as gw:
            gw.wait_ready(120, probe="/healthz")  # /readyz needs an inference replica
            yield reg, gw
