"""The training service end to end on a real Ray head and a real registry (loopback HTTP).

One module-wide stack; each job is shared by the assertions about it to keep CI time down:
(1) LoRA sentiment on 2 Ray workers → base ≈ chance, tuned ≥ 0.9 held-out accuracy, the
adapter registered as ``suffix@v1`` (auto-promoted), events and checkpoints listed;
(2) a LoRA translation job raises chrF and survives a training-service restart in the
middle of its run (state reconciled from SQL + Ray; the runner retries its reports);
(3) two short 1-worker jobs: the second reuses the warm runner the first started (no
actor start, imports and base model kept); a job cancelled on it stops;
(4) cancel stops the Ray job and gives every CPU back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.datasets import samples
from tests.support.ray_cluster import finished_tasks, start_test_ray, stop_test_ray
from tests.support.training import TrainingStack, training_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingStack]:
    start_test_ray(tmp_path_factory.mktemp("ray"))
    try:
        with training_stack(tmp_path_factory.mktemp("training"), model_dir) as st:
            yield st
    finally:
        leftovers = stop_test_ray()
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def _upload(stack: TrainingStack, rows: list[dict], name: str) -> str:
    r = stack.upload(
        [{"prompt": x["prompt"], "completion": x["completion"]} for x in rows], filename=name
    )
    assert r.status_code == 200 and r.json()["status"] == "processed", r.text
    return str(r.json()["id"])


def _wait_event(stack: TrainingStack, job_id: str, pred, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in stack.events(job_id):
            if pred(e):
                return e
        job = stack.job(job_id)
        assert job["status"] not in ("failed", "cancelled", "succeeded"), job
        time.sleep(0.5)
    raise TimeoutError(f"no matching event for {job_id}")


def _is_metrics(e: dict) -> bool:
    return "step" in (e.get("data") or {})


def test_model_selection_scores_each_candidate_on_a_ray_worker(stack: TrainingStack) -> None:
    """``POST /v1/fine_tuning/model_selection`` ranks the catalog on a tenant's file; the
    models are loaded and scored by Ray tasks (other processes), not by the API process
    (issue 17 item 3). First in the file: no warm runner holds a CPU yet."""
    fid = _upload(stack, samples.sentiment_examples(12, seed=9), "select.jsonl")
    url = "/v1/fine_tuning/model_selection"
    body = {"validation_file": fid, "task": "sentiment", "few_shot": 2, "max_examples": 8}
    r = stack.http.post(url, headers=stack.headers(), json=body)
    assert r.status_code == 200, r.text
    ranked = r.json()["data"]
    assert ranked[0]["model"] == "tiny-llama" and ranked[0]["rank"] == 1
    assert 0 <= ranked[0]["accuracy"] <= 1 and ranked[0]["n"] == 8
    tasks = finished_tasks("score_candidate")
    assert tasks and all(t.state == "FINISHED" for t in tasks), tasks
    assert all(t.worker_pid and t.worker_pid != os.getpid() for t in tasks), tasks
    r = stack.http.post(url, headers=stack.headers(), json={**body, "use_gpu": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "use_gpu", r.text


def test_lora_sentiment_job_end_to_end(stack: TrainingStack) -> None:
    train = _upload(stack, samples.sentiment_examples(300, seed=1), "reviews.jsonl")
    valid = _upload(stack, samples.sentiment_examples(60, seed=2), "held-out.jsonl")
    t0 = time.perf_counter()
    r = stack.create_job(
        training_file=train,
        validation_file=valid,
        task="sentiment",
        training_method="lora",
        suffix="review-sentiment",
        seed=7,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        resources={"num_workers": 2},
        hyperparameters={"batch_size": 16, "max_steps": 75, "max_len": 128},
        auto_promote={"alias": "production"},
    )
    assert r.status_code == 200, r.text
    job = stack.wait_job(r.json()["id"])
    elapsed = time.perf_counter() - t0
    result = job["result"]
    print(f"\n[sentiment job] {elapsed:.1f}s base={result['base']} tuned={result['tuned']}")
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "review-sentiment@v1"
    assert result["base"]["accuracy"] < 0.6
    assert result["tuned"]["accuracy"] >= 0.9
    assert job["trained_tokens"] > 0 and job["hyperparameters"]["batch_size"] == 16
    assert result["promotion"]["moved"] is True

    events = stack.events(job["id"])
    metrics = [e for e in events if _is_metrics(e)]
    assert metrics and all(e["object"] == "fine_tuning.job.event" for e in events)
    assert {"step", "train_loss", "tokens_per_second"} <= set(metrics[0]["data"])
    assert any("valid_loss" in e["data"] for e in metrics)
    assert max(e["data"]["step"] for e in metrics) == 75
    assert any(e["data"] and "prep_report" in e["data"] for e in events)
    ckpts = stack.http.get(
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=stack.headers()
    ).json()["data"]
    assert ckpts and ckpts[0]["object"] == "fine_tuning.job.checkpoint"
    assert ckpts[0]["step_number"] == 75  # newest first

    reg = httpx.Client(
        base_url=stack.registry_url, headers=dict(stack.http.headers) | stack.headers()
    )
    version = reg.get("/v1/adapters/review-sentiment/versions/1").json()
    assert version["lineage"]["job_id"] == job["id"]
    assert version["lineage"]["dataset_id"] == job["dataset_id"]
    assert version["lineage"]["metrics"]["tuned_accuracy"] >= 0.9
    assert reg.get("/v1/adapters/review-sentiment").json()["aliases"] == {"production": 1}


def test_translation_job_survives_a_service_restart(stack: TrainingStack) -> None:
    train = _upload(stack, samples.translation_pairs(200, seed=1), "pairs.jsonl")
    valid = _upload(stack, samples.translation_pairs(40, seed=2), "pairs-held-out.jsonl")
    r = stack.create_job(
        training_file=train,
        validation_file=valid,
        task="translation",
        training_method="lora",
        suffix="en-de",
        seed=11,
        lora={"r": 16, "alpha": 32, "dropout": 0.0},
        hyperparameters={
            "batch_size": 16,
            "max_steps": 80,
            "max_len": 96,
        },
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    _wait_event(stack, job_id, _is_metrics)  # training is under way on Ray
    stack.restart_training()
    assert stack.job(job_id)["status"] == "running"  # reconciled, not failed
    job = stack.wait_job(job_id)
    result = job["result"]
    print(f"\n[translation job] base={result['base']} tuned={result['tuned']}")
    assert job["status"] == "succeeded", job
    assert result["tuned"]["chrf"] > result["base"]["chrf"]
    assert job["fine_tuned_model"] == "en-de@v1"
    restarts = [e for e in stack.events(job_id) if "Step" in e["message"]]
    assert max(e["data"]["step"] for e in restarts) == 80  # reports kept flowing


def _start_gap(events: list[dict]) -> int:
    """Seconds from the runner's last event before training (base evaluated, or started)
    to its first step report (whole seconds): the Train run's start-up."""
    before = [
        e["created_at"]
        for e in events
        if e["message"].startswith(("Fine-tuning started", "Evaluated the base model"))
    ]
    steps = [e["created_at"] for e in events if _is_metrics(e)]
    return min(steps) - max(before)


def test_short_jobs_reuse_the_warm_runner_and_cancel(stack: TrainingStack) -> None:
    import ray

    from services.training.ray import warm

    train = _upload(stack, samples.sentiment_examples(40, seed=4), "short.jsonl")
    gaps, flags = [], []
    for _ in range(2):
        r = stack.create_job(
            training_file=train,
            task="sentiment",
            resources={"num_workers": 1},  # -> the warm runner (setting on by default)
            hyperparameters={"batch_size": 8, "max_steps": 4, "max_len": 96},
        )
        assert r.status_code == 200, r.text
        job = stack.wait_job(r.json()["id"])
        assert job["status"] == "succeeded", job
        events = stack.events(job["id"])
        gaps.append(_start_gap(events))
        flags.append({e["data"]["warm_start"] for e in events if _is_metrics(e)})
    print(f"\n[warm jobs] start gaps {gaps} s, warm_start {flags}")
    assert flags == [{False}, {True}]  # the second job found imports and base in memory
    assert gaps[1] < gaps[0]

    r = stack.create_job(
        training_file=train,
        task="sentiment",
        resources={"num_workers": 1},
        hyperparameters={"batch_size": 8, "max_steps": 5000, "max_len": 96},
    )
    job_id = r.json()["id"]
    assert _wait_event(stack, job_id, _is_metrics)["data"]["warm_start"] is True
    r = stack.http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=stack.headers())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the stopped Ray job took its report queue with it: the runner stops the run and is
    # free again (a busy runner refuses to exit), then gives its CPU back
    deadline = time.monotonic() + 60
    while warm.release_idle() == 0:
        assert time.monotonic() < deadline, "the warm runner still runs the cancelled job"
        time.sleep(1)
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)
    assert stack.job(job_id)["status"] == "cancelled"


def test_cancel_stops_ray_and_frees_resources(stack: TrainingStack) -> None:
    import ray

    train = _upload(stack, samples.sentiment_examples(100, seed=3), "more.jsonl")
    r = stack.create_job(
        training_file=train,
        task="sentiment",
        resources={"num_workers": 2},
        hyperparameters={"batch_size": 8, "max_steps": 5000},
    )
    job_id = r.json()["id"]
    _wait_event(stack, job_id, _is_metrics)
    assert ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]
    for _ in range(2):  # idempotent
        r = stack.http.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=stack.headers())
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.5)
    time.sleep(2)  # a late report from the dying runner must not revive the job
    job = stack.job(job_id)
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
