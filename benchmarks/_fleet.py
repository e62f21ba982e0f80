"""A fleet of real processes on loopback for ``scale_out.py``: a throwaway Postgres (as the
tests start it), a registry, replicas (the stub of ``_stub_replica.py``, the real inference app
with the digest stand-in engine, or vLLM) and gateways sharing one database, each pinned to
CPUs with ``taskset`` when asked. Everything started is stopped when the fleet's ``ExitStack``
closes; a scenario opens its own stack for the gateways it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, log, wait_ready

from tests.support.postgres import PostgresCluster, free_port

TOKEN = "bench-scale-out-token-000"
ADMIN_KEY = "tf-bench-scale-out-admin"
KEY_SECRET = "bench-scale-out-key-hash-secret"
INTERNAL = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "bench"}
STUB = Path(__file__).with_name("_stub_replica.py")


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fleet:
    def __init__(self, home: Path, model_dir: Path, stack: ExitStack) -> None:
        self.home = home
        self.model_dir = model_dir
        self.stack = stack
        self.pids: dict[str, int] = {}
        self._pending: dict[str, tuple[str, subprocess.Popen[bytes], Path, float]] = {}
        self._migrated = False  # the first gateway migrates the database alone
        self.pg = PostgresCluster(home / "pg").start()
        stack.callback(self.pg.stop)
        self.db_url = self.pg.create_database("gateways")
        self.registry = self.start(
            "registry",
            [sys.executable, "-m", "services.registry"],
            {
                "TUNEFLEET_REGISTRY_PORT": "{port}",
                "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
            },
        )

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cpus: str | None = None,
        stack: ExitStack | None = None,
        ready_s: float = 300,
        wait: bool = True,
    ) -> str:
        """Start ``argv`` (``{port}`` in ``env`` values or ``argv`` is a free port) and wait
        (unless not ``wait``: then ``ready`` does) until its ``/readyz`` answers 200; the URL.
        Stopped (SIGTERM) when ``stack`` closes."""
        port = free_port()
        home = self.home / name
        home.mkdir(parents=True, exist_ok=True)
        full = {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "TUNEFLEET_HOME": str(home),
            "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
            "TUNEFLEET_LOG_LEVEL": "WARNING",
            **{k: v.replace("{port}", str(port)) for k, v in env.items()},
        }
        full.pop("DATABASE_URL", None)
        logf = (home / "out.log").open("wb")
        cmd = [*taskset(cpus), *(a.replace("{port}", str(port)) for a in argv)]
        proc = subprocess.Popen(cmd, env=full, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            logf.close()

        (stack or self.stack).callback(stop)
        url = f"http://127.0.0.1:{port}"
        self._pending[url] = (name, proc, home, time.monotonic() + ready_s)
        if wait:
            self.ready(url)
        return url

    def ready(self, *urls: str) -> None:
        """Wait until each started process at ``urls`` answers ``/readyz`` with 200."""
        for url in urls:
            self._ready(url)

    def _ready(self, url: str) -> None:
        name, proc, home, deadline = self._pending.pop(url)
        wait_ready(proc, url, name, home / "out.log", deadline, poll_s=0.3)
        self.pids[name] = proc.pid
        log(f"{name} ready at {url}")

    def stub(self, name: str, delay_s: float, cap: int = 0, cpus: str | None = None) -> str:
        argv = [sys.executable, str(STUB), "{port}", str(delay_s), str(cap)]
        return self.start(name, argv, {}, cpus=cpus)

    def replicas(self, names: list[str], kind: str) -> list[str]:
        """``replica`` for each name, started side by side."""
        urls = [self.replica(n, kind, wait=False) for n in names]
        self.ready(*urls)
        return urls

    def replica(self, name: str, kind: str, cpus: str | None = None, wait: bool = True) -> str:
        """The real inference app: ``digest`` (the tests' stand-in engine, every answer the
        digest of the adapter weights that served it) or ``vllm``."""
        module = "tests.support.digest_replica" if kind == "digest" else "services.inference"
        env = {
            "TUNEFLEET_INFERENCE_PORT": "{port}",
            "TUNEFLEET_INFERENCE_REPLICA_ID": name,
            "TUNEFLEET_INFERENCE_MODEL_DIR": str(self.model_dir),
            "TUNEFLEET_INFERENCE_REGISTRY_URL": self.registry,
            "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
            "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
            "TUNEFLEET_INFERENCE_DRAIN_TIMEOUT_S": "2",
        }
        argv = [sys.executable, "-m", module]
        return self.start(name, argv, env, cpus=cpus, ready_s=900, wait=wait)

    def gateway(
        self,
        name: str,
        replicas: list[str],
        stack: ExitStack,
        *,
        store: str = "database",
        cpus: str | None = None,
        wait: bool = True,
        **settings: Any,
    ) -> str:
        """A gateway on the shared Postgres database, its quota state in ``store``."""
        env = {
            "TUNEFLEET_GATEWAY_PORT": "{port}",
            "TUNEFLEET_GATEWAY_DATABASE_URL": self.db_url,
            "TUNEFLEET_GATEWAY_STATE_STORE": store,
            "TUNEFLEET_GATEWAY_REGISTRY_URL": self.registry,
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps(replicas),
            "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
            "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
            "TUNEFLEET_GATEWAY_KEY_HASH_SECRET": KEY_SECRET,
            **{f"TUNEFLEET_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
        }
        argv = [sys.executable, "-m", "gateway"]
        wait = wait or not self._migrated
        url = self.start(name, argv, env, cpus=cpus, stack=stack, wait=wait)
        self._migrated = True
        return url

    def gateways(
        self, names: list[str], replicas: list[str], stack: ExitStack, cpus: list[str], **kw: Any
    ) -> list[str]:
        """``gateway`` for each name (pinned to ``cpus[-1]``, ``cpus[0]``, ... in turn),
        started side by side once the database is migrated."""
        pins = cpus[::-1]
        urls = [
            self.gateway(n, replicas, stack, cpus=pins[i % len(pins)], wait=False, **kw)
            for i, n in enumerate(names)
        ]
        self.ready(*[u for u in urls if u in self._pending])
        return urls

    # ------------------------------------------------------------------ set-up calls
    def tenant_key(self, gateway: str, tenant: str, **quota: int) -> str:
        """Create ``tenant`` (if new) with ``quota`` through ``gateway``; a new app key."""
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = httpx.post(f"{gateway}/admin/tenants", json={"id": tenant}, headers=admin)
        if r.status_code not in (201, 409):
            r.raise_for_status()
        if quota:
            body = {"tenant": tenant, **quota}
            httpx.put(f"{gateway}/admin/quotas", json=body, headers=admin).raise_for_status()
        r = httpx.post(
            f"{gateway}/admin/keys", json={"tenant": tenant, "role": "app"}, headers=admin
        )
        r.raise_for_status()
        return str(r.json()["key"])

    def push_adapter(self, tenant: str, name: str, archive: Path) -> int:
        """Upload ``archive`` as a new version of ``tenant``'s adapter ``name``; the version."""
        with archive.open("rb") as fh:
            r = httpx.post(
                f"{self.registry}/v1/adapters/{name}/versions",
                headers={**INTERNAL, "X-Tenant-Id": tenant},
                files={"file": (f"{name}.tar.gz", fh)},
                data={"metadata": json.dumps({"base_model": self.model_dir.name})},
                timeout=120,
            )
        r.raise_for_status()
        return int(r.json()["version"])

    def move_alias(self, tenant: str, name: str, version: int, alias: str = "production") -> None:
        r = httpx.put(
            f"{self.registry}/v1/adapters/{name}/aliases/{alias}",
            json={"version": version},
            headers={**INTERNAL, "X-Tenant-Id": tenant},
            timeout=30,
        )
        r.raise_for_status()
