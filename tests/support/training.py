"""The training service wired to a real registry, both served by uvicorn on loopback ports
in background threads of the test process (the Ray job runner, a separate process, must reach
the training service over real HTTP; the training service reaches the registry the same way).

    with training_stack(home, model_dir) as stack:
        f = stack.upload(rows)                    # -> file object
        job = stack.create_job(training_file=f["id"], task="sentiment", ...)
        job = stack.wait_job(job["id"])
        stack.restart_training()                  # same DB, same port, new app

Tests are plain sync code over ``httpx.Client`` (the apps run in their own event loops).
``ray=False`` gives a backend that reports Ray as unreachable, for tests that must not start
a head (jobs then fail with ``ray_unavailable`` after their data was prepared).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.training.app import create_app as create_training
from services.training.ray.backend import RayBackend
from services.training.ray.cluster import RayInfo
from services.training.settings import TrainingSettings
from services.training.storage.files import BlobStore
from shared.errors import ServiceUnavailable
from tests.support.postgres import free_port

TOKEN = "training-test-token"
TERMINAL = ("succeeded", "failed", "cancelled")


class ServerThread:
    """One app under uvicorn in a daemon thread (uvicorn skips signal handlers off-main)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


class UnreachableRay(RayBackend):
    """A Ray that cannot be reached: exercises the service's failure path without a head."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))

    def connect(self) -> RayInfo:
        raise ServiceUnavailable("cannot reach Ray (test backend)", code="ray_unavailable")


@dataclass
class TrainingStack:
    home: Path
    registry_url: str
    training_url: str
    settings: TrainingSettings
    backend: RayBackend | None
    http: httpx.Client  # internal token; pass the tenant per call (default "acme")
    _servers: dict[str, ServerThread] = field(default_factory=dict)

    def headers(self, tenant: str = "acme") -> dict[str, str]:
        return {"X-Tenant-Id": tenant}

    def store(self) -> BlobStore:
        """The same blob store the service uses (reads through its cipher, if any)."""
        from services.training.app import _cipher

        return BlobStore(self.settings.data_root() / "blobs", _cipher(self.settings))

    def upload(
        self,
        rows: list[dict[str, Any]] | bytes,
        *,
        filename: str = "train.jsonl",
        tenant: str = "acme",
        purpose: str = "fine-tune",
        mapping: str | None = None,
    ) -> httpx.Response:
        data = rows if isinstance(rows, bytes) else _jsonl(rows)
        form = {"purpose": purpose}
        if mapping is not None:
            form["mapping"] = mapping
        return self.http.post(
            "/v1/files",
            headers=self.headers(tenant),
            files={"file": (filename, data, "application/octet-stream")},
            data=form,
        )

    def create_job(self, tenant: str = "acme", **body: Any) -> httpx.Response:
        body.setdefault("model", "tiny-llama")
        return self.http.post("/v1/fine_tuning/jobs", headers=self.headers(tenant), json=body)

    def job(self, job_id: str, tenant: str = "acme") -> dict[str, Any]:
        r = self.http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=self.headers(tenant))
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_job(
        self, job_id: str, *, until: tuple[str, ...] = TERMINAL, timeout: float = 600.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in until:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(0.5)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        r = self.http.get(
            f"/v1/fine_tuning/jobs/{job_id}/events",
            params={"limit": 100},
            headers=self.headers(),
        )
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    def restart_training(self) -> None:
        """Stop the training service and start a fresh app on the same DB and port."""
        self._servers.pop("training").stop()
        self._start_training()

    def _start_training(self) -> None:
        app = create_training(self.settings, backend=self.backend)
        self._servers["training"] = ServerThread(app, self.settings.port).start()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@contextmanager
def training_stack(
    home: Path, model_dir: Path, *, ray: bool = True, **overrides: Any
) -> Iterator[TrainingStack]:
    """Registry + training on loopback; with ``ray`` a Ray head must already be connected
    (``tests.support.ray_cluster.start_test_ray``)."""
    reg_port, tr_port = free_port(), free_port()
    registry = create_registry(
        RegistrySettings(
            home=home / "registry-home",
            internal_token=TOKEN,
            database_url=f"sqlite:///{home / 'registry.db'}",
            seed_models_dir=model_dir.parent,
            max_lora_rank=64,
        )
    )
    reg = ServerThread(registry, reg_port).start()
    settings = TrainingSettings(
        home=home,
        internal_token=TOKEN,
        port=tr_port,
        database_url=f"sqlite:///{home / 'training.db'}",
        registry_url=f"http://127.0.0.1:{reg_port}",
        **{"max_upload_bytes": 4 << 20, "monitor_poll_s": 0.5, **overrides},
    )
    url = f"http://127.0.0.1:{tr_port}"
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as http:
        stack = TrainingStack(
            home=home,
            registry_url=f"http://127.0.0.1:{reg_port}",
            training_url=url,
            settings=settings,
            backend=None if ray else UnreachableRay(),
            http=http,
            _servers={"registry": reg},
        )
        try:
            stack._start_training()
            yield stack
        finally:
            for name in ("training", "registry"):
                server = stack._servers.pop(name, None)
                if server is not None:
                    server.stop()
