"""Adapters a fine-tuning job publishes count against ``max_adapters`` (issue 18, item 4's
remainder).

The gateway sent the tenant's ``max_adapters`` with adapter creates and pushes only; a job's
result was pushed by the training service with no limit, so a tenant at its limit could get
any number of new adapters by starting jobs. Now the gateway sends the limit with the job's
create (``X-Tunefleet-Max-Adapters``), the job keeps it (``training_jobs.max_adapters``,
migration 0006) and the push of its result carries it: a *new* adapter beyond the limit is
refused by the registry (the count and insert are atomic there, ``shared.countlimit``) and the
job fails ``registry_push_failed`` saying why; a new version of an existing adapter is not a
new adapter.

Real registry app (SQLite and Postgres), the training service's own ``finish`` (what the
runner's result report calls) with the real registry client, and the real training app for
the route.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from services.training.app import MIGRATIONS, VERSION_TABLE
from services.training.domain import jobs, results
from services.training.storage.tables import JobRow
from shared.clients.registry import RegistryClient
from shared.countlimit import MAX_ADAPTERS_HEADER
from shared.db import Database, run_migrations
from shared.schemas.training import JobCreate, RunnerResult
from tests.conftest import TOKEN, RegistryHarness
from tests.support.adapters import make_adapter, pack

LIMIT = 2


async def test_a_job_cannot_publish_an_adapter_beyond_the_tenants_limit(
    registry: RegistryHarness, db_url: str, tmp_path: Path, model_dir: Path
) -> None:
    run_migrations(db_url, MIGRATIONS, VERSION_TABLE)
    db = Database(db_url)
    client = RegistryClient(
        "http://registry",
        TOKEN,
        transport=httpx.ASGITransport(app=registry.app),  # type: ignore[arg-type]
    )
    archive = pack(make_adapter(model_dir, tmp_path / "ad"), tmp_path / "a.tar.gz")
    limit = {MAX_ADAPTERS_HEADER: str(LIMIT)}
    for name in ("a0", "a1"):
        r = await registry.http.post("/v1/adapters", json={"name": name}, headers=limit)
        assert r.status_code == 201, r.text

    async def run_job(tenant: str, suffix: str) -> JobRow:
        body = JobCreate(model="tiny-llama", training_file="file-1", suffix=suffix)
        row, _ = jobs.create_job(db, tenant, body, 1, max_adapters=LIMIT)
        report = RunnerResult(trained_tokens=10, result={})
        await results.finish(db, client, row.id, report, archive, models_root=tmp_path)
        with db.session() as s:
            done = s.get(JobRow, row.id)
        assert done is not None
        return done

    over = await run_job("acme", "a2")  # a third adapter
    assert over.status == "failed", over.result
    assert over.error is not None and over.error["code"] == "registry_push_failed"
    assert "max_adapters" in over.error["message"]
    names = {a["name"] for a in (await registry.http.get("/v1/adapters")).json()["data"]}
    assert names == {"a0", "a1"}

    # a new version of an adapter the tenant has is not a new adapter; another tenant has
    # its own count
    assert (await run_job("acme", "a1")).fine_tuned_model == "a1@v1"
    assert (await run_job("globex", "a2")).status == "succeeded"
    await client.aclose()
    db.dispose()


class Training(httpx.AsyncBaseTransport):
    """http://training answering the gateway's job list and create; records the create."""

    def __init__(self) -> None:
        self.created: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "training":
            raise httpx.ConnectError(f"nothing at {request.url.host}", request=request)
        if request.method == "GET":
            return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})
        self.created.append(request)
        return httpx.Response(200, json={"id": "ftjob-1", "object": "fine_tuning.job"})


async def test_the_gateway_sends_the_adapter_limit_with_a_job_and_training_keeps_it(
    tmp_path: Path, model_dir: Path
) -> None:
    from asgi_lifespan import LifespanManager

    from gateway.app import create_app as create_gateway
    from gateway.settings import GatewaySettings
    from tests.security.test_durable_writes import _registry, _training
    from tests.security.test_operator_scope import BOOTSTRAP

    upstream = Training()
    gateway = create_gateway(
        GatewaySettings(
            home=tmp_path / "gw",
            internal_token=TOKEN,
            admin_key=BOOTSTRAP,
            training_url="http://training",
            default_max_adapters=7,
        ),
        upstream_transport=upstream,
    )
    async with (
        LifespanManager(gateway, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw") as gw,
    ):
        r = await gw.post(
            "/v1/fine_tuning/jobs",
            headers={"Authorization": f"Bearer {BOOTSTRAP}"},
            json={"model": "tiny-llama", "training_file": "file-1"},
        )
    assert r.status_code == 200, r.text
    assert upstream.created[0].headers[MAX_ADAPTERS_HEADER] == "7"

    # the training service keeps it with the job
    registry = _registry(tmp_path / "reg", model_dir)
    training = _training(tmp_path / "tr", registry)
    async with (
        LifespanManager(registry, startup_timeout=60, shutdown_timeout=60),
        LifespanManager(training, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=training),
            base_url="http://training",
            headers={"Authorization": "Bearer durable-token", "X-Tenant-Id": "acme"},
        ) as tr,
    ):
        rows = b"".join(b'{"text": "row %d", "label": "positive"}\n' % i for i in range(20))
        f = await tr.post(
            "/v1/files",
            files={"file": ("t.jsonl", rows, "application/octet-stream")},
            data={"purpose": "fine-tune"},
        )
        assert f.status_code in (200, 201), f.text
        job = await tr.post(
            "/v1/fine_tuning/jobs",
            headers={MAX_ADAPTERS_HEADER: "7"},
            json={"model": "tiny-llama", "training_file": f.json()["id"], "task": "sentiment"},
        )
        assert job.status_code == 200, job.text
        with training.state.training.db.session() as s:
            row = s.get(JobRow, job.json()["id"])
        assert row is not None and row.max_adapters == 7
