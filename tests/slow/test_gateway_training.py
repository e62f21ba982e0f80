"""Files and fine-tuning through the gateway, against the real training service (in-process,
real registry; Ray replaced by an unreachable backend, so a job gets through validation and
data preparation and then fails with ``ray_unavailable``): upload limits, idempotency and the
jobs quota. The SDK path that trains and serves is tests/e2e/test_sdk_fine_tune.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.training.app import create_app as create_training
from services.training.settings import TrainingSettings
from shared.datasets import samples
from tests.slow.test_gateway import auth, onboard
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
    st.settings.max_training_file_bytes = 2048  # POST /v1/files has its own limit
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
