"""Files and fine-tuning through the gateway with the official openai SDK, against the real
training service (in-process, real registry; Ray replaced by an unreachable backend, so a job
gets through validation and data preparation and then fails with ``ray_unavailable``)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from services.training import samples
from services.training.app import create_app as create_training
from services.training.settings import TrainingSettings
from tests.slow.test_gateway import auth, onboard, sdk
from tests.support.fleet import ADMIN_KEY, TOKEN, Fleet, fleet
from tests.support.training import UnreachableRay

pytestmark = [pytest.mark.slow]
ADMIN = auth(ADMIN_KEY)


@pytest.fixture
async def f(tmp_path: Path, model_dir: Path, vllm_engine: object) -> AsyncIterator[Fleet]:
    def training(transport: httpx.AsyncBaseTransport) -> dict[str, FastAPI]:
        settings = TrainingSettings(
            home=tmp_path / "training",
            internal_token=TOKEN,
            registry_url="http://registry",
            monitor_poll_s=0.2,
        )
        return {
            "training": create_training(
                settings, registry_transport=transport, backend=UnreachableRay()
            )
        }

    async with fleet(tmp_path, model_dir, vllm_engine, extra_apps=training) as fl:
        yield fl


def _jsonl(n: int) -> bytes:
    rows = samples.sentiment_examples(n, seed=3)
    return "".join(
        json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows
    ).encode()


async def test_files_and_jobs_with_the_openai_sdk(f: Fleet) -> None:
    acme = await onboard(f, "acme")
    globex = await onboard(f, "globex")
    client = sdk(f, acme["integrator"])
    data = _jsonl(30)
    uploaded = await client.files.create(
        file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune"
    )
    assert uploaded.id.startswith("file-") and uploaded.purpose == "fine-tune"
    assert [x.id async for x in client.files.list()] == [uploaded.id]
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    content = await client.files.content(uploaded.id)
    assert content.content.count(b"\n") == 30
    job = await client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, extra_body={"task": "sentiment"}
    )
    assert job.id.startswith("ftjob-")
    assert [j.id async for j in client.fine_tuning.jobs.list()] == [job.id]
    for _ in range(300):
        job = await client.fine_tuning.jobs.retrieve(job.id)
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        await asyncio.sleep(0.2)
    assert job.status == "failed" and job.error and job.error.code == "ray_unavailable"
    events = [e async for e in client.fine_tuning.jobs.list_events(job.id)]
    assert events and all(e.object == "fine_tuning.job.event" for e in events)
    checkpoints = [c async for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert checkpoints == []
    cancelled = await client.fine_tuning.jobs.cancel(job.id)  # idempotent on a finished job
    assert cancelled.id == job.id
    # another tenant sees none of it: 404, never 403
    other = sdk(f, globex["integrator"])
    with pytest.raises(openai.NotFoundError):
        await other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.delete(uploaded.id)
    assert [x.id async for x in other.files.list()] == []
    # roles: app and sre keys may not touch training data
    for role in ("app", "sre"):
        with pytest.raises(openai.PermissionDeniedError):
            await sdk(f, acme[role]).files.list()
        with pytest.raises(openai.PermissionDeniedError):
            await sdk(f, acme[role]).fine_tuning.jobs.create(
                model="tiny-llama", training_file=uploaded.id
            )
    # audited: the upload, the content read, the job, the cancel
    entries = (await f.gateway.get("/admin/audit?tenant=acme", headers=ADMIN)).json()["data"]
    actions = {e["action"] for e in entries}
    assert {
        "post /v1/files",
        "file.content.read",
        "post /v1/fine_tuning/jobs",
        "post /v1/fine_tuning/jobs/{job_id}/cancel",
    } <= actions
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_upload_limit_idempotency_and_job_quota(f: Fleet) -> None:
    acme = await onboard(f, "acme")
    h = auth(acme["integrator"])
    st = f.gateway_app.state.gateway
    data = _jsonl(20)
    key = {**h, "Idempotency-Key": "upload-1"}
    first, again = [
        await f.gateway.post(
            "/v1/files",
            headers=key,
            files={"file": ("train.jsonl", data, "application/octet-stream")},
            data={"purpose": "fine-tune"},
        )
        for _ in range(2)
    ]
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["id"] == again.json()["id"]
    assert len((await f.gateway.get("/v1/files", headers=h)).json()["data"]) == 1
    st.settings.max_upload_bytes = 2048
    r = await f.gateway.post(
        "/v1/files",
        headers=h,
        files={"file": ("big.jsonl", _jsonl(200), "application/octet-stream")},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert len((await f.gateway.get("/v1/files", headers=h)).json()["data"]) == 1
    # a tenant at its concurrent-jobs limit gets a 429 before the training service is asked
    await f.gateway.put("/admin/quotas", json={"tenant": "acme", "max_jobs": 1}, headers=ADMIN)
    file_id = first.json()["id"]
    job = await f.gateway.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": file_id, "task": "sentiment"},
        headers=h,
    )
    assert job.status_code == 200, job.text
    second = await f.gateway.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": file_id, "task": "sentiment"},
        headers=h,
    )
    status = (await f.gateway.get(f"/v1/fine_tuning/jobs/{job.json()['id']}", headers=h)).json()
    if status["status"] in ("validating_files", "queued", "running"):  # still active: refused
        assert second.status_code == 429 and second.json()["error"]["code"] == "job_quota_exceeded"
    # bad input reaches the training service and comes back naming the field
    await f.gateway.put("/admin/quotas", json={"tenant": "acme"}, headers=ADMIN)
    r = await f.gateway.post(
        "/v1/fine_tuning/jobs",
        json={"model": "tiny-llama", "training_file": "file-nope"},
        headers=h,
    )
    assert r.status_code in (400, 404) and r.json()["error"]["param"] == "training_file"
