"""Training on a 2-node Ray cluster on loopback, every part a real process (issue 17).

* head: ``ray start --head --num-cpus=0`` (token auth on; no training can run here);
* worker node: ``ray start --address …`` in its own mount namespace with a private tmpfs on
  ``/tmp`` (tests/support/ray_nodes.py): what either node writes under ``/tmp`` the other
  cannot see, so a dataset or checkpoint handed over by a local path fails;
* the registry and the training service as processes; the service joins the cluster with
  ``RAY_ADDRESS`` and the token, checkpoints go to ``TUNEFLEET_TRAINING_STORAGE_PATH``
  outside ``/tmp`` (the "shared filesystem" both nodes mount).

(1) A LoRA job's Train workers run on the worker node; its raylet is SIGKILLed after the
first checkpoint and a new worker node is started: the job resumes from its last
checkpoint, succeeds, is evaluated and registered.
(2) The training service gets SIGTERM during a job and is started again: the job finishes
and is registered (the runner, a Ray job on the head, keeps going and retries its reports).

Runs ~6-10 min on 2 busy cores: part of ``make reliability`` (scripts/reliability.sh), not
``make test``. Prints ``RESULT ray_multinode_*`` lines (RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.datasets import samples
from tests.fault.procs import start_at, wait_port_free
from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service
from tests.support.ray_nodes import RayNodes

pytestmark = [pytest.mark.slow]
TOKEN = "multinode-token"
H = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Fleet:
    nodes: RayNodes
    shared: Path  # outside /tmp: the storage every node sees
    home: Path
    env: dict[str, str]
    port: int
    registry: ServiceProcess
    training: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_training(self) -> ServiceProcess:
        self.training = start_at(
            "training",
            "services.training",
            self.home,
            self.env,
            "TUNEFLEET_TRAINING_PORT",
            self.port,
        )
        self.training.wait_ready(timeout=180)
        return self.training

    def get(self, path: str, **kw: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", headers=H, timeout=60, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, rows: list[dict[str, Any]], name: str) -> str:
        body = "".join(
            json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows
        )
        r = httpx.post(
            f"{self.url}/v1/files",
            headers=H,
            files={"file": (name, body.encode())},
            data={"purpose": "fine-tune"},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def create_job(self, **body: Any) -> str:
        body.setdefault("model", "tiny-llama")
        r = httpx.post(f"{self.url}/v1/fine_tuning/jobs", headers=H, json=body, timeout=120)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/fine_tuning/jobs/{job_id}"))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        data = self.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})["data"]
        return list(reversed(data))  # oldest first

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")["data"])

    def wait(self, pred: Any, what: str, timeout: float = 600.0, poll: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = pred()
            except httpx.TransportError:
                got = None
            if got:
                return got
            time.sleep(poll)
        raise TimeoutError(f"timed out waiting for {what}")

    def wait_job(self, job_id: str, timeout: float = 900.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in TERMINAL else None

        return dict(self.wait(done, f"job {job_id} to end", timeout))


@pytest.fixture(scope="module")
def fleet(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    shared = Path(tempfile.mkdtemp(prefix="tf-2node-", dir="/var/tmp"))
    nodes = RayNodes(shared)
    tmp = tmp_path_factory.mktemp("multinode")
    reg_home, home = tmp / "registry", tmp / "training"
    reg_home.mkdir()
    home.mkdir()
    try:
        t0 = time.perf_counter()
        nodes.start_head()
        t_head = time.perf_counter() - t0
        nodes.start_worker(cpus=2)
        t_worker = time.perf_counter() - t0 - t_head
        print(f"\n[2-node] head up in {t_head:.1f}s, worker node joined in {t_worker:.1f}s")
        reg_env = {
            "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
            "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
        }
        with service(
            "registry", "services.registry", reg_home, reg_env, "TUNEFLEET_REGISTRY_PORT"
        ) as reg:
            reg.wait_ready()
            env = {
                **nodes.env(),
                "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
                "TUNEFLEET_TRAINING_REGISTRY_URL": reg.url,
                "TUNEFLEET_TRAINING_STORAGE_PATH": str(shared / "ray-runs"),
                "TUNEFLEET_TRAINING_MONITOR_POLL_S": "0.5",
                "TF_RAY_LOG_TO_DRIVER": "0",
            }
            fl = Fleet(nodes, shared, home, env, free_port(), reg)
            fl.start_training()
            try:
                yield fl
            finally:
                if fl.training is not None:
                    fl.training.stop()
    finally:
        _keep_logs(nodes, shared, home)
        leftovers = nodes.stop()
        shutil.rmtree(shared, ignore_errors=True)
        assert not leftovers, f"Ray processes left behind: {leftovers}"


def _keep_logs(nodes: RayNodes, shared: Path, home: Path) -> None:
    """Copy the head's Ray logs, the nodes' and the services' logs to
    ``$TUNEFLEET_KEEP_LOGS/multinode-<time>`` (scripts/reliability.sh sets it): the resume
    after a raylet kill has hung intermittently, and its logs went with the temp dirs."""
    keep = os.environ.get("TUNEFLEET_KEEP_LOGS")
    if not keep:
        return
    dest = Path(keep) / f"multinode-{time.strftime('%Y%m%dT%H%M%S')}"
    wanted = ("*.log", "*.out", "*.err")
    sources = [(shared, "shared"), (home, "training")]
    if nodes.temp_dir is not None:
        sources.append(((nodes.temp_dir / "session_latest" / "logs").resolve(), "head"))
    for src, name in sources:
        for pattern in wanted:
            for f in src.rglob(pattern) if src.is_dir() else []:
                target = dest / name / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy2(f, target)
    print(f"\n[2-node] logs kept in {dest}")


def _metrics(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if "step" in (e.get("data") or {})]


def _running(fleet: Fleet, job_id: str) -> None:
    job = fleet.job(job_id)
    assert job["status"] not in TERMINAL, job  # fail now, not at a wait's timeout


def _train_workers_on(fleet: Fleet, job_id: str, timeout: float = 600.0) -> set[str]:
    """The nodes the job's Ray Train workers run on (waits until both are alive)."""

    def workers() -> set[str] | None:
        _running(fleet, job_id)
        found = fleet.nodes.actors("RayTrainWorker")
        return {a["node_id"] for a in found} if len(found) >= 2 else None

    return set(fleet.wait(workers, "2 Ray Train workers", timeout))


def test_lora_job_runs_on_the_worker_node_and_resumes_after_its_raylet_dies(
    fleet: Fleet,
) -> None:
    train = fleet.upload(samples.sentiment_examples(300, seed=1), "reviews.jsonl")
    valid = fleet.upload(samples.sentiment_examples(60, seed=2), "held-out.jsonl")
    t0 = time.perf_counter()
    job_id = fleet.create_job(
        training_file=train,
        validation_file=valid,
        task="sentiment",
        training_method="lora",
        suffix="two-node",
        seed=7,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        resources={"num_workers": 2},
        hyperparameters={
            "batch_size": 8,
            "max_steps": 60,
            "max_len": 96,
            "checkpoint_every": 15,
        },
    )
    worker, head = fleet.nodes.nodes[-1], fleet.nodes.nodes[0]
    on = _train_workers_on(fleet, job_id)
    assert on == {worker.node_id} and head.node_id not in on, (on, worker.node_id)

    def first_checkpoint() -> list[dict[str, Any]]:
        _running(fleet, job_id)
        return fleet.checkpoints(job_id)

    ckpts = fleet.wait(first_checkpoint, "a checkpoint", timeout=600, poll=0.5)
    t_ckpt = time.perf_counter() - t0
    saved = max(c["step_number"] for c in fleet.checkpoints(job_id))
    t_kill = time.perf_counter()
    fleet.nodes.kill_raylet(worker)
    t_dead = time.perf_counter() - t_kill
    steps_before = [m["step"] for m in _metrics(fleet.events(job_id))]
    new_worker = fleet.nodes.start_worker(cpus=2)
    t_rejoin = time.perf_counter() - t_kill

    def resumed() -> dict[str, Any] | None:
        job = fleet.job(job_id)
        assert job["status"] not in ("failed", "cancelled"), job
        after = [m for m in _metrics(fleet.events(job_id)) if m.get("resumed_from")]
        return after[0] if after else None

    first_after = fleet.wait(resumed, "a report after the resume", timeout=600)
    t_resumed = time.perf_counter() - t_kill
    job = fleet.wait_job(job_id)
    elapsed = time.perf_counter() - t0
    metrics = _metrics(fleet.events(job_id))
    result = job.get("result") or {}
    print(
        f"\n[2-node] first checkpoint at step {ckpts[0]['step_number']} after {t_ckpt:.1f}s; "
        f"raylet killed with step {saved} saved, steps reported before: {steps_before}; "
        f"node gone {t_dead:.1f}s, new worker node joined {t_rejoin:.1f}s after the kill, "
        f"first report resumed from step {first_after['resumed_from']} "
        f"{t_resumed:.1f}s after the kill; job {job['status']} in {elapsed:.1f}s; "
        f"base={result.get('base')} tuned={result.get('tuned')}"
    )
    print(
        f"RESULT ray_multinode_raylet_kill resumed_from={first_after['resumed_from']} "
        f"saved_step={saved} kill_to_rejoin_s={t_rejoin:.1f} kill_to_resumed_report_s="
        f"{t_resumed:.1f} job_s={elapsed:.1f} status={job['status']} "
        f"tuned_accuracy={result.get('tuned', {}).get('accuracy')}"
    )
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "two-node@v1"
    assert first_after["resumed_from"] >= saved and first_after["resumed_from"] % 15 == 0
    assert first_after["resumed_from"] < 60
    assert max(m["step"] for m in metrics) == 60
    assert result["tuned"]["accuracy"] > result["base"]["accuracy"]
    assert new_worker.proc.poll() is None  # the new node did the rest
    reg = httpx.get(f"{fleet.registry.url}/v1/adapters/two-node/versions/1", headers=H)
    assert reg.status_code == 200 and reg.json()["lineage"]["job_id"] == job_id, reg.text


def test_job_finishes_across_a_training_service_sigterm_and_restart(fleet: Fleet) -> None:
    train = fleet.upload(samples.sentiment_examples(200, seed=5), "more-reviews.jsonl")
    t0 = time.perf_counter()
    job_id = fleet.create_job(
        training_file=train,
        task="sentiment",
        training_method="lora",
        suffix="two-node-restart",
        seed=3,
        resources={"num_workers": 2},
        hyperparameters={"batch_size": 8, "max_steps": 30, "max_len": 96, "checkpoint_every": 10},
    )

    def under_way() -> list[dict[str, Any]]:
        _running(fleet, job_id)
        return _metrics(fleet.events(job_id))

    fleet.wait(under_way, "training under way", timeout=600, poll=0.5)
    assert fleet.training is not None
    t_term = time.perf_counter()
    rc = fleet.training.stop()
    t_stopped = time.perf_counter() - t_term
    wait_port_free(fleet.url)
    time.sleep(5)  # the runner keeps training and retries its reports meanwhile
    fleet.start_training()
    t_back = time.perf_counter() - t_term
    assert fleet.job(job_id)["status"] == "running"  # reconciled with Ray, not failed
    job = fleet.wait_job(job_id)
    elapsed = time.perf_counter() - t0
    metrics = _metrics(fleet.events(job_id))
    print(
        f"\n[2-node] service SIGTERM exit {rc} in {t_stopped:.1f}s, back after {t_back:.1f}s; "
        f"job {job['status']} in {elapsed:.1f}s, last step {max(m['step'] for m in metrics)}"
    )
    print(
        f"RESULT ray_multinode_service_sigterm exit={rc} stop_s={t_stopped:.1f} "
        f"down_s={t_back:.1f} job_s={elapsed:.1f} status={job['status']}"
    )
    assert rc in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "two-node-restart@v1"
    assert max(m["step"] for m in metrics) == 30
    assert not any(m.get("resumed_from") for m in metrics)  # the run itself never stopped
