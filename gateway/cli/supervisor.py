"""``tunefleet up``: start the fleet in dependency order, wait for each ``/readyz``, write logs
to ``$TUNEFLEET_HOME/logs``, and stop everything cleanly (SIGTERM, reverse order)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    env: dict[str, str]
    ready_timeout_s: float = 60.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Running:
    name: str
    pid: int
    url: str
    log: str


def fleet_specs(env: dict[str, str]) -> list[ServiceSpec]:
    """The fleet in start order; ports from the usual variables (defaults 8001/8003/8002/8000)."""
    reg = int(env.get("TUNEFLEET_REGISTRY_PORT", 8001))
    inf = int(env.get("TUNEFLEET_INFERENCE_PORT", 8003))
    trn = int(env.get("TUNEFLEET_TRAINING_PORT", 8002))
    gw = int(env.get("TUNEFLEET_GATEWAY_PORT", 8000))
    reg_url, inf_url = f"http://127.0.0.1:{reg}", f"http://127.0.0.1:{inf}"
    trn_url, gw_url = f"http://127.0.0.1:{trn}", f"http://127.0.0.1:{gw}"
    return [
        ServiceSpec(
            "registry",
            "services.registry",
            reg,
            {
                "TUNEFLEET_REGISTRY_PORT": str(reg),
                # Alias moves reach inference (hot swap) and the gateway (drops cached
                # resolutions) at once instead of after their TTLs.
                "TUNEFLEET_REGISTRY_NOTIFY_URLS": json.dumps(
                    [f"{inf_url}/internal/registry-events", f"{gw_url}/internal/registry-events"]
                ),
            },
        ),
        ServiceSpec(
            "inference",
            "services.inference",
            inf,
            {
                "TUNEFLEET_INFERENCE_PORT": str(inf),
                "TUNEFLEET_INFERENCE_REGISTRY_URL": reg_url,
            },
            ready_timeout_s=600.0,
        ),
        ServiceSpec(
            "training",
            "services.training",
            trn,
            {
                "TUNEFLEET_TRAINING_PORT": str(trn),
                "TUNEFLEET_TRAINING_REGISTRY_URL": reg_url,
            },
            ready_timeout_s=300.0,  # starts an embedded Ray head unless RAY_ADDRESS is set
        ),
        ServiceSpec(
            "gateway",
            "gateway",
            gw,
            {
                "TUNEFLEET_GATEWAY_PORT": str(gw),
                "TUNEFLEET_GATEWAY_REGISTRY_URL": reg_url,
                "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([inf_url]),
                "TUNEFLEET_GATEWAY_TRAINING_URL": trn_url,
            },
        ),
    ]


class Supervisor:
    def __init__(
        self, home: Path, env: dict[str, str] | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.home = home.resolve()
        self.env = {**os.environ, **(env or {}), "TUNEFLEET_HOME": str(self.home)}
        self.say = say
        self.state_file = self.home / "run" / "fleet.json"
        self.logs = self.home / "logs"

    # ------------------------------------------------------------------ state
    def running(self) -> list[Running]:
        if not self.state_file.exists():
            return []
        return [Running(**r) for r in json.loads(self.state_file.read_text())]

    def _save(self, procs: list[Running]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps([asdict(p) for p in procs], indent=2))

    # ------------------------------------------------------------------ up / down
    def up(self) -> list[Running]:
        """Start every service and wait until each is ready; on failure stop what started."""
        alive = [r for r in self.running() if _alive(r.pid)]
        if alive:
            raise RuntimeError(
                f"fleet already running ({', '.join(r.name for r in alive)}); "
                "run 'tunefleet down' first"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        started: list[Running] = []
        try:
            for spec in fleet_specs(self.env):
                if _port_in_use(spec.port):
                    # Otherwise /readyz would be answered by whatever holds the port.
                    raise RuntimeError(f"port {spec.port} for {spec.name} is already in use")
                log = self.logs / f"{spec.name}.log"
                with log.open("ab") as fh:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", spec.module],
                        env={**self.env, **spec.env},
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                started.append(Running(spec.name, proc.pid, spec.url, str(log)))
                self._save(started)
                self.say(f"starting {spec.name} on {spec.url} (log: {log})")
                self._wait_ready(spec, proc, log)
                self.say(f"  {spec.name} ready")
        except BaseException:
            self._stop(started)
            raise
        return started

    def _wait_ready(self, spec: ServiceSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + spec.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{spec.name} exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{spec.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{spec.name} not ready after {spec.ready_timeout_s:.0f}s; see {log}")

    def down(self, timeout_s: float = 60.0) -> int:
        procs = self.running()
        self._stop(procs, timeout_s)
        self.state_file.unlink(missing_ok=True)
        return len(procs)

    def _stop(self, procs: list[Running], timeout_s: float = 60.0) -> None:
        for r in reversed(procs):  # gateway first, registry last
            if _alive(r.pid):
                self.say(f"stopping {r.name} (pid {r.pid})")
                os.kill(r.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while _alive(r.pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _alive(r.pid):
                    os.killpg(r.pid, signal.SIGKILL)

    def status(self) -> list[dict[str, object]]:
        out = []
        for r in self.running():
            ready = False
            if _alive(r.pid):
                with contextlib.suppress(httpx.TransportError):
                    ready = httpx.get(f"{r.url}/readyz", timeout=2).status_code == 200
            out.append(
                {
                    "name": r.name,
                    "pid": r.pid,
                    "alive": _alive(r.pid),
                    "ready": ready,
                    "url": r.url,
                    "log": r.log,
                }
            )
        return out


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited children
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
