"""Real service processes for fault tests: started on a fixed port (so a restart is the same
address), killed hard with their children (vLLM's EngineCore), measured."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil

from tests.support.procs import ServiceProcess


def start_at(
    name: str, module: str, home: Path, env: dict[str, str], port_var: str, port: int
) -> ServiceProcess:
    """``python -m module`` on ``port``; the log is appended to (restarts keep one log)."""
    full_env = {**os.environ, "TUNEFLEET_HOME": str(home), port_var: str(port), **env}
    full_env.pop("DATABASE_URL", None)
    log = home / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=full_env, stdout=fh, stderr=subprocess.STDOUT
        )
    return ServiceProcess(name, proc, f"http://127.0.0.1:{port}", log)


def kill_hard(sp: ServiceProcess) -> None:
    """SIGKILL the service and every process it started (no chance to clean up)."""
    try:
        children = psutil.Process(sp.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    sp.proc.kill()
    sp.proc.wait(timeout=30)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=30)


def kill_during(
    sp: ServiceProcess, workers: Sequence[Callable[[threading.Event], None]], after_s: float
) -> None:
    """Run ``workers`` in threads (each loops until the event is set or the kill cuts its
    connection), kill -9 ``sp`` after ``after_s``, stop and join the workers, and wait until
    the port is free for the restart."""
    stop = threading.Event()
    threads = [threading.Thread(target=w, args=(stop,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    time.sleep(after_s)
    kill_hard(sp)
    stop.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a worker hung after the kill"
    wait_port_free(sp.url)


def wait_port_free(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} still answers")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MiB."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return round(total / 2**20, 1)
