"""Gateway + registry + training in-process for the data-protection tests (erasure,
retention): real SQLite or Postgres, real blob store (encrypted when TUNEFLEET_DATA_KEYS
is set), Ray replaced by an unreachable backend, wired by host name like the real fleet.

(A candidate for tests/support/; it lives here while only tests/security uses it.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from services.inference.app import create_app as create_inference
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.training.app import create_app as create_training
from services.training.settings import TrainingSettings
from shared.datasets import samples
from tests.support.standin_engine import replica_settings
from tests.support.training import UnreachableRay

TOKEN = "erasure-test-token"
ADMIN_KEY = "tf-admin-erasure-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
EMAIL = "Alice.Smith@example.com"
CUSTOMER_ID = "CUST-0042"


class HostRouter(httpx.AsyncBaseTransport):
    """http://gateway, http://registry, http://training → the in-process apps; any other
    host (the gateway's inference replica) is unreachable, as a stopped service would be."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self.apps = apps

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self.apps.get(request.url.host)
        if app is None:
            raise httpx.ConnectError(f"nothing at {request.url.host}", request=request)
        return await httpx.ASGITransport(app=app).handle_async_request(request)


@dataclass
class DataFleet:
    home: Path
    gateway: httpx.AsyncClient  # no credentials: pass API keys
    registry: httpx.AsyncClient  # internal token
    training_app: FastAPI
    apps: dict[str, FastAPI]  # by host name; drop one to make it unreachable

    def blob(self, key: str) -> Path:
        return self.home / "training" / "blobs" / key

    async def onboard(self, tenant: str) -> dict[str, str]:
        """Create ``tenant`` and its keys; ``{"integrator": key, ...}`` as Authorization."""
        r = await self.gateway.post("/admin/tenants", json={"id": tenant}, headers=ADMIN)
        assert r.status_code == 201, r.text
        keys = {}
        for role in ("integrator", "sre"):
            r = await self.gateway.post(
                "/admin/keys", json={"tenant": tenant, "role": role}, headers=ADMIN
            )
            assert r.status_code == 201, r.text
            keys[role] = r.json()["key"]
        return keys

    async def upload(
        self, key: str, rows: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = await self.gateway.post(
            "/v1/files",
            headers={**auth(key), **extra},
            files={"file": ("train.jsonl", data, "application/octet-stream")},
            data={"purpose": "fine-tune"},
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def failed_job(self, key: str, file_id: str) -> dict[str, Any]:
        """A job on ``file_id`` that prepared its dataset, then failed without Ray."""
        r = await self.gateway.post(
            "/v1/fine_tuning/jobs",
            headers=auth(key),
            json={"model": "tiny-llama", "training_file": file_id, "task": "sentiment"},
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        for _ in range(600):
            job = await self.gateway.get(f"/v1/fine_tuning/jobs/{job_id}", headers=auth(key))
            body = dict(job.json())
            if body["status"] in ("succeeded", "failed", "cancelled"):
                assert body["error"]["code"] == "ray_unavailable", body
                assert body["dataset_id"], body
                return body
            await asyncio.sleep(0.1)
        raise TimeoutError(f"job {job_id} never finished")

    async def push_version(
        self, tenant: str, name: str, archive: Path, lineage: dict[str, Any]
    ) -> dict[str, Any]:
        meta = {"base_model": "tiny-llama", "lineage": lineage}
        with archive.open("rb") as fh:
            r = await self.registry.post(
                f"/v1/adapters/{name}/versions",
                headers={"X-Tenant-Id": tenant},
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": json.dumps(meta)},
            )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def audit(self) -> list[dict[str, Any]]:
        r = await self.gateway.get("/admin/audit", params={"limit": 100}, headers=ADMIN)
        assert r.status_code == 200, r.text
        return list(r.json()["data"])

    async def verify_audit(self) -> dict[str, Any]:
        r = await self.gateway.get("/admin/audit/verify", headers=ADMIN)
        assert r.status_code == 200, r.text
        return dict(r.json())


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def data_fleet(
    home: Path, model_dir: Path, databases: dict[str, str] | None = None
) -> AsyncIterator[DataFleet]:
    """Gateway + registry + training in-process, wired by host name like the real fleet;
    ``databases`` gives a service a SQL URL (Postgres) instead of its default SQLite."""
    db = databases or {}
    apps: dict[str, FastAPI] = {}
    apps["registry"] = create_registry(
        RegistrySettings(
            home=home / "registry",
            internal_token=TOKEN,
            seed_models_dir=model_dir.parent,
            database_url=db.get("registry"),
        )
    )
    apps["training"] = create_training(
        TrainingSettings(
            home=home / "training-home",
            data_dir=home / "training",
            internal_token=TOKEN,
            registry_url="http://registry",
            monitor_poll_s=0.1,
            database_url=db.get("training"),
        ),
        registry_transport=HostRouter(apps),
        backend=UnreachableRay(),
    )
    apps["gateway"] = create_gateway(
        GatewaySettings(
            home=home / "gateway",
            internal_token=TOKEN,
            admin_key=ADMIN_KEY,
            database_url=db.get("gateway"),
            **{
                "registry_url": "http://registry",
                "training_url": "http://training",
                "inference_urls": ["http://inference"],
            },
        ),
        upstream_transport=HostRouter(apps),
    )
    async with AsyncExitStack() as stack:
        for name in ("registry", "training", "gateway"):
            await stack.enter_async_context(
                LifespanManager(apps[name], startup_timeout=120, shutdown_timeout=60)
            )
        gw = await stack.enter_async_context(
            httpx.AsyncClient(transport=HostRouter(apps), base_url="http://gateway", timeout=120)
        )
        reg = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=HostRouter(apps),
                base_url="http://registry",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=120,
            )
        )
        yield DataFleet(home, gw, reg, apps["training"], apps)


@asynccontextmanager
async def with_replica(fl: DataFleet, model_dir: Path) -> AsyncIterator[FastAPI]:
    """An inference replica at http://inference for the gateway's ``/v1/models``: the real
    app, reading the registry, with a scripted engine in place of vLLM."""
    from collections import Counter

    from transformers import AutoTokenizer

    from tests.security.test_quota_replica_cancel import ScriptedEngine

    settings = replica_settings(fl.home / "inference", model_dir, TOKEN)
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(str(model_dir)), Counter())
    app = create_inference(
        settings,
        engine,  # type: ignore[arg-type]
        registry_transport=HostRouter(fl.apps),
    )
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        fl.apps["inference"] = app
        try:
            yield app
        finally:
            fl.apps.pop("inference", None)


async def model_ids(fl: DataFleet, key: str) -> set[str]:
    """What ``GET /v1/models`` lists for the key's tenant, through the gateway (waits for
    the replica to be ready)."""
    for _ in range(300):
        r = await fl.gateway.get("/v1/models", headers=auth(key))
        if r.status_code == 200:
            return {m["id"] for m in r.json()["data"]}
        await asyncio.sleep(0.05)
    raise AssertionError(f"/v1/models never answered: {r.status_code} {r.text}")


def reviews(n: int, seed: int) -> list[dict[str, Any]]:
    return [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in samples.sentiment_examples(n, seed=seed)
    ]


def with_subject(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows plus one review that names the subject by e-mail and customer id."""
    mention = f"Review: {EMAIL} (customer {CUSTOMER_ID}) says the fan is superb.\nSentiment:"
    return [*rows, {"prompt": mention, "completion": " positive"}]
