"""The training service over real loopback HTTP with a real registry, without Ray: files,
datasets, PII redaction, job validation, bad input per kind, tenant isolation, restarts.

Ray is replaced by a backend that reports it unreachable, so a job on a valid file gets as
far as its prepared dataset and then fails with ``ray_unavailable`` (tests/slow runs the
real Ray path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.datasets import samples
from tests.support.training import TrainingStack, training_stack


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingStack]:
    with training_stack(tmp_path_factory.mktemp("training"), model_dir, ray=False) as st:
        yield st


@pytest.fixture(scope="module")
def sentiment_file(stack: TrainingStack) -> dict:
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in samples.sentiment_examples(40, seed=1)
    ]
    r = stack.upload(rows)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_health_ready_metrics(stack: TrainingStack) -> None:
    assert stack.http.get("/healthz").json()["service"] == "training"
    assert stack.http.get("/readyz").status_code == 200
    stack.http.get("/v1/files", headers=stack.headers())
    text = stack.http.get("/metrics").text
    assert 'tunefleet_training_http_requests_total{method="GET",route="/v1/files"' in text
    assert 'tunefleet_training_jobs{status="running"}' in text
    assert 'tunefleet_training_jobs_finished_total{status="failed"}' in text


def test_upload_reports_preparation(stack: TrainingStack, sentiment_file: dict) -> None:
    f = sentiment_file
    assert f["id"].startswith("file-") and f["object"] == "file"
    assert f["purpose"] == "fine-tune" and f["status"] == "processed"
    report = f["prep_report"]
    assert report["format"] == "prompt_completion" and report["rows_in"] == 40
    got = stack.http.get(f"/v1/files/{f['id']}", headers=stack.headers()).json()
    assert got["prep_report"] == report
    content = stack.http.get(f"/v1/files/{f['id']}/content", headers=stack.headers())
    assert content.status_code == 200 and content.content.count(b"\n") == 40


def test_list_files_paginates(stack: TrainingStack) -> None:
    ids = []
    for i in range(3):
        r = stack.upload([{"prompt": f"q{i} {j}", "completion": "a"} for j in range(3)])
        ids.append(r.json()["id"])
    page1 = stack.http.get("/v1/files", params={"limit": 2}, headers=stack.headers()).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [f["id"] for f in page1["data"]] == ids[::-1][:2]  # newest first
    page2 = stack.http.get(
        "/v1/files", params={"limit": 2, "after": page1["data"][-1]["id"]}, headers=stack.headers()
    ).json()
    assert page2["data"][0]["id"] == ids[0]


def test_mapped_crm_export(stack: TrainingStack) -> None:
    csv = (
        b"Id,Subject,Description,Type\n"
        b"500A,Refund please,I was charged twice for March,Billing\n"
        b"500B,App crash,The app crashes on start,Technical\n"
        b"500C,Invoice wrong,Invoice shows the wrong VAT,Billing\n"
        b"500D,Login loop,I cannot sign in after the update,Technical\n"
    )
    mapping = json.dumps({"Subject": "text", "Description": "text", "Type": "label"})
    r = stack.upload(csv, filename="cases.csv", mapping=mapping)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["status"] == "processed" and f["mapping"] == json.loads(mapping)
    assert f["prep_report"]["format"] == "csv" and f["prep_report"]["rows_out"] == 4


def test_invalid_file_fails_job_naming_the_line(stack: TrainingStack) -> None:
    rows = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n'
    f = stack.upload(rows).json()
    assert f["status"] == "error" and "line 2" in f["status_details"]
    job = stack.create_job(training_file=f["id"], task="generation").json()
    assert job["status"] == "validating_files"
    job = stack.wait_job(job["id"], timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    assert "line 2" in job["error"]["message"] and job["error"]["param"] == "training_file"
    assert job["fine_tuned_model"] is None and job["dataset_id"] is None
    levels = [e["level"] for e in stack.events(job["id"])]
    assert "error" in levels


def test_pii_never_reaches_the_prepared_dataset(stack: TrainingStack) -> None:
    secrets_ = ["jane.doe@example.com", "+44 20 7946 0958", "4111 1111 1111 1111"]
    rows = [
        {"prompt": f"Contact {secrets_[i % 3]}. {r['prompt']}", "completion": r["completion"]}
        for i, r in enumerate(samples.sentiment_examples(12, seed=5))
    ]
    f = stack.upload(rows).json()
    assert sum(f["prep_report"]["pii_redacted"].values()) >= 12
    job = stack.wait_job(stack.create_job(training_file=f["id"], task="sentiment").json()["id"])
    # the data was prepared, then Ray (unreachable here) refused the submission
    assert job["status"] == "failed" and job["error"]["code"] == "ray_unavailable"
    ds = job["dataset_id"]
    assert ds and ds.startswith("ds-")
    store = stack.store()
    stored = b"".join(
        store.get(f"datasets/{ds}/{split}.jsonl", tenant="acme")
        for split in ("train", "validation", "test")
    )
    assert stored.count(b"\n") == f["prep_report"]["rows_out"] >= 10
    for s in secrets_:
        assert s.encode() not in stored
        assert s.replace(" ", "").encode() not in stored
    events = stack.events(job["id"])
    prep = [e for e in events if (e.get("data") or {}).get("prep_report")]
    assert prep and prep[0]["data"]["dataset_id"] == ds
    # the dataset shows on the file, and deleting the file purges it
    got = stack.http.get(f"/v1/files/{f['id']}", headers=stack.headers()).json()
    assert got["datasets"] == [ds]
    r = stack.http.delete(f"/v1/files/{f['id']}", headers=stack.headers())
    assert r.status_code == 200 and r.json()["datasets_deleted"] == [ds]
    assert not store.exists(f"datasets/{ds}")
    assert stack.http.get(f"/v1/files/{f['id']}", headers=stack.headers()).status_code == 404


def _error(r) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_bad_uploads(stack: TrainingStack) -> None:
    before = len(
        stack.http.get("/v1/files", params={"limit": 100}, headers=stack.headers()).json()["data"]
    )
    r = stack.upload([{"prompt": "a", "completion": "b"}], purpose="assistants")
    assert r.status_code == 400 and _error(r)["param"] == "purpose"
    r = stack.http.post("/v1/files", headers=stack.headers(), data={"purpose": "fine-tune"})
    assert r.status_code == 400 and _error(r)["param"] == "file"
    r = stack.upload(b"x" * ((4 << 20) + 1))
    assert r.status_code == 413 and _error(r)["code"] == "file_too_large"
    assert "4194304 bytes (4 MiB)" in _error(r)["message"]  # the limit, named
    staging = list(stack.home.rglob("staging"))
    assert staging and not [p for d in staging for p in d.iterdir()]  # nothing left behind
    r = stack.upload(b"a,b\n1,2\n", filename="x.csv", mapping="{not json")
    assert r.status_code == 400 and _error(r)["param"] == "mapping"
    r = stack.upload(b"a,b\n1,2\n", filename="x.csv", mapping='{"a": "nonsense"}')
    err = _error(r)
    assert r.status_code == 400 and err["param"] == "mapping" and "nonsense" in err["message"]
    after = stack.http.get("/v1/files", params={"limit": 100}, headers=stack.headers()).json()
    assert len(after["data"]) == before  # nothing stored


def test_bad_job_requests_name_the_field(stack: TrainingStack, sentiment_file: dict) -> None:
    fid = sentiment_file["id"]
    cases = [
        ({"task": "sentiment"}, "training_file"),  # missing field
        (
            {"training_file": fid, "hyperparameters": {"n_epochs": "lots"}},
            "hyperparameters.n_epochs",
        ),
        (
            {"training_file": fid, "hyperparameters": {"batch_size": 0}},
            "hyperparameters.batch_size",
        ),
        (
            {"training_file": fid, "hyperparameters": {"learning_rate_multiplier": -1}},
            "hyperparameters.learning_rate_multiplier",
        ),
        ({"training_file": fid, "hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        (
            {"training_file": fid, "hyperparameters": {"precision": "fp16"}},
            "hyperparameters.precision",
        ),
        ({"training_file": fid, "training_method": "magic"}, "training_method"),
        ({"training_file": fid, "task": "poetry"}, "task"),
        ({"training_file": fid, "lora": {"r": 0}}, "lora.r"),
        ({"training_file": fid, "lora": {"target_modules": ["mlp"]}}, "lora.target_modules.0"),
        ({"training_file": fid, "resources": {"num_workers": 99}}, "resources.num_workers"),
        ({"training_file": fid, "suffix": "Not Valid!"}, "suffix"),
        ({"training_file": fid, "model": "no-such-model"}, "model"),
        ({"training_file": "file-missing"}, "training_file"),
        ({"training_file": fid, "validation_file": "file-missing"}, "validation_file"),
        ({"training_file": fid, "training_method": "full", "lora": {"r": 4}}, "lora"),
    ]
    before = len(
        stack.http.get(
            "/v1/fine_tuning/jobs", params={"limit": 100}, headers=stack.headers()
        ).json()["data"]
    )
    for body, param in cases:
        r = stack.create_job(**body)
        assert r.status_code in (400, 404), (body, r.text)
        assert _error(r)["param"] == param, (body, r.text)
    after = stack.http.get(
        "/v1/fine_tuning/jobs", params={"limit": 100}, headers=stack.headers()
    ).json()["data"]
    assert len(after) == before


def test_other_tenants_see_nothing(stack: TrainingStack, sentiment_file: dict) -> None:
    fid = sentiment_file["id"]
    job = stack.create_job(training_file=fid, task="sentiment").json()
    h = stack.headers("globex")
    for path in (
        f"/v1/files/{fid}",
        f"/v1/files/{fid}/content",
        f"/v1/fine_tuning/jobs/{job['id']}",
        f"/v1/fine_tuning/jobs/{job['id']}/events",
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints",
    ):
        r = stack.http.get(path, headers=h)
        assert r.status_code == 404, (path, r.text)
    assert stack.http.delete(f"/v1/files/{fid}", headers=h).status_code == 404
    r = stack.http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=h)
    assert r.status_code == 404
    r = stack.create_job(tenant="globex", training_file=fid)
    assert r.status_code == 404 and _error(r)["param"] == "training_file"
    assert stack.http.get("/v1/files", headers=h).json()["data"] == []
    stack.wait_job(job["id"], timeout=60)


def test_requests_need_the_internal_token(stack: TrainingStack) -> None:
    import httpx

    r = httpx.get(f"{stack.training_url}/v1/files", headers=stack.headers())
    assert r.status_code == 401
    r = httpx.get(
        f"{stack.training_url}/internal/runner/jobs/ftjob-x/spec",
        headers={"Authorization": "Bearer nope"},
    )
    assert r.status_code == 401


def test_sweep_and_prune_blocks_are_validated(stack: TrainingStack, sentiment_file: dict) -> None:
    fid = sentiment_file["id"]
    cases = [
        ({"sweep": {"parameters": {"learning_rate": [-1.0]}}}, "sweep.parameters.learning_rate.0"),
        ({"sweep": {"parameters": {"nonsense": [1]}}}, "sweep.parameters.nonsense"),
        ({"sweep": {"parameters": {"r": [4, 8]}, "num_trials": 0}}, "sweep.num_trials"),
        ({"prune": {"max_quality_drop": -1}}, "prune.max_quality_drop"),
        ({"prune": {"max_quality_drop": 0.1}, "training_method": "full"}, "prune"),
    ]
    for extra, param in cases:
        r = stack.create_job(training_file=fid, task="sentiment", **extra)
        assert r.status_code == 400, (extra, r.text)
        assert _error(r)["param"] == param, (extra, r.text)
    body = {"parameters": {"learning_rate": [0.001, 0.002]}, "num_trials": 2}
    r = stack.create_job(
        training_file=fid, task="sentiment", sweep=body, prune={"max_quality_drop": 0.05}
    )
    assert r.status_code == 200, r.text
    job = stack.wait_job(r.json()["id"], timeout=60)
    assert job["sweep"] == body and job["prune"] == {"max_quality_drop": 0.05}


def test_model_selection_checks_its_input_before_it_needs_ray(stack: TrainingStack) -> None:
    """Bad input is named before any model is loaded; the scoring itself runs as Ray tasks
    (``tests/slow/test_training_service.py``), so without Ray a good request is a clear 503."""
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in samples.sentiment_examples(12, seed=9)
    ]
    fid = stack.upload(rows).json()["id"]
    for body, param in (
        ({"validation_file": fid, "task": "sentiment", "models": ["nope"]}, "models"),
        ({"validation_file": "file-x", "task": "sentiment"}, "validation_file"),
        ({"validation_file": fid, "task": "poetry"}, "task"),
        ({"validation_file": fid, "task": "sentiment", "few_shot": 12}, "validation_file"),
    ):
        r = stack.http.post("/v1/fine_tuning/model_selection", headers=stack.headers(), json=body)
        assert r.status_code in (400, 404) and _error(r)["param"] == param, r.text
    r = stack.http.post(
        "/v1/fine_tuning/model_selection",
        headers=stack.headers(),
        json={"validation_file": fid, "task": "sentiment"},
    )
    assert r.status_code == 503 and _error(r)["code"] == "ray_unavailable", r.text
    assert r.headers["Retry-After"]


def test_jobs_survive_a_restart_and_cancel_is_idempotent(
    stack: TrainingStack, sentiment_file: dict
) -> None:
    job = stack.wait_job(
        stack.create_job(
            training_file=sentiment_file["id"],
            task="sentiment",
            seed=3,
            hyperparameters={"n_epochs": 2, "batch_size": 8},
        ).json()["id"]
    )
    stack.restart_training()
    again = stack.job(job["id"])
    assert again == job
    assert again["seed"] == 3 and again["hyperparameters"]["n_epochs"] == 2
    assert again["hyperparameters"]["batch_size"] == 8
    for _ in range(2):  # a terminal job stays as it is
        r = stack.http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=stack.headers())
        assert r.status_code == 200 and r.json()["status"] == "failed"


async def test_typed_client(stack: TrainingStack) -> None:
    from shared.clients.training import TrainingClient
    from shared.errors import InvalidRequest, NotFound
    from tests.support.training import TOKEN

    async with TrainingClient(stack.training_url, TOKEN) as client:
        f = await client.upload_file("acme", "c.jsonl", b'{"prompt": "a", "completion": "b"}\n')
        assert f.status == "processed" and (await client.get_file("acme", f.id)).id == f.id
        assert await client.file_content("acme", f.id) == b'{"prompt": "a", "completion": "b"}\n'
        with pytest.raises(NotFound):
            await client.get_file("globex", f.id)
        with pytest.raises(InvalidRequest) as exc:
            await client.create_job(
                "acme",
                {"model": "tiny-llama", "training_file": f.id, "hyperparameters": {"n_epochs": 0}},
            )
        assert exc.value.param == "hyperparameters.n_epochs"
        assert (await client.delete_file("acme", f.id)).deleted is True
        jobs = await client.list_jobs("acme", limit=100)
        assert all(j.object == "fine_tuning.job" for j in jobs.data)


def test_idempotency_key_returns_the_first_result(
    stack: TrainingStack, sentiment_file: dict
) -> None:
    rows = [{"prompt": "idem q", "completion": "a"}]
    h = {**stack.headers(), "Idempotency-Key": "upload-1"}
    first = stack.http.post(
        "/v1/files",
        headers=h,
        files={"file": ("a.jsonl", json.dumps(rows[0]) + "\n")},
        data={"purpose": "fine-tune"},
    ).json()
    again = stack.http.post(
        "/v1/files",
        headers=h,
        files={"file": ("a.jsonl", json.dumps(rows[0]) + "\n")},
        data={"purpose": "fine-tune"},
    ).json()
    assert again["id"] == first["id"]
    h = {**stack.headers(), "Idempotency-Key": "job-1"}
    body = {"model": "tiny-llama", "training_file": sentiment_file["id"], "task": "sentiment"}
    j1 = stack.http.post("/v1/fine_tuning/jobs", headers=h, json=body).json()
    j2 = stack.http.post("/v1/fine_tuning/jobs", headers=h, json=body).json()
    assert j1["id"] == j2["id"]
    other = stack.http.post(
        "/v1/fine_tuning/jobs", headers={**h, "X-Tenant-Id": "globex"}, json=body
    )
    assert other.status_code == 404  # keys are per tenant; globex cannot see acme's file
    stack.wait_job(j1["id"], timeout=60)


def test_blobs_are_encrypted_at_rest_when_keys_are_set(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import os

    monkeypatch.setenv("TUNEFLEET_DATA_KEYS", base64.b64encode(os.urandom(32)).decode())
    with training_stack(tmp_path, model_dir, ray=False) as st:
        secret = b"Review: the quiet fan is superb. Sentiment:"
        f = st.upload([{"prompt": secret.decode(), "completion": " positive"}]).json()
        raw = (st.settings.data_root() / "blobs" / "files" / f["id"]).read_bytes()
        assert raw.startswith(b"TFE3") and secret not in raw
        content = st.http.get(f"/v1/files/{f['id']}/content", headers=st.headers()).content
        assert secret in content


def test_openai_sdk_reads_files_and_jobs(stack: TrainingStack, sentiment_file: dict) -> None:
    """The internal API has the OpenAI shapes the gateway passes through unchanged."""
    import io

    from openai import OpenAI

    from tests.support.training import TOKEN

    client = OpenAI(
        base_url=f"{stack.training_url}/v1",
        api_key=TOKEN,
        default_headers={"X-Tenant-Id": "acme"},
        max_retries=0,
    )
    up = client.files.create(
        file=("sdk.jsonl", io.BytesIO(b'{"prompt": "sdk q", "completion": "a"}\n')),
        purpose="fine-tune",
    )
    assert up.id.startswith("file-") and up.status == "processed"
    assert client.files.retrieve(up.id).filename == "sdk.jsonl"
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=sentiment_file["id"],
        seed=1,
        hyperparameters={"n_epochs": 1},
        extra_body={"task": "sentiment"},
    )
    assert job.id.startswith("ftjob-") and job.status == "validating_files"
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.data[0].id == job.id
    events = client.fine_tuning.jobs.list_events(job.id)
    assert events.data[-1].message.startswith("Created fine-tuning job")
    assert client.fine_tuning.jobs.cancel(job.id).status in ("cancelled", "failed")
    assert client.files.delete(up.id).deleted is True
