"""kill -9 of the training service inside an erasure, restart, rerun: nothing survives
(issue 18 item 8).

A real training process (and a registry for the tokenizer) on a fixed port. Two files name
a data subject, one does not; a job prepares a dataset on each (then waits: Ray is pointed
where nothing listens), and each job's derived copies are laid out where a run leaves them
(Ray checkpoints, a killed runner's work dir, a merged model; ``tests/support/job_copies``).
The service runs with the test-only fault ``TUNEFLEET_TEST_FAULT=
erase_after_first_file``: the erasure kills the process (SIGKILL) right after the first
file's rows were unlinked, before any blob went. The test checks the crash left exactly
that window (an erasure row ``pending``, a file without its row whose bytes are still on
disk), restarts the service without the fault, waits for it to finish the pending erasure
on start, reruns the erasure, and scans every byte under the service's home (blobs, Ray
storage, runner work dirs, model dirs, the SQLite database and its WAL) for the subject
and every path for the erased ids. The other file and its job's copies must all be there.

No encryption at rest here, so the byte scan sees plaintext (tests/security covers the
sealed store).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shared.datasets.samples import sentiment_examples
from tests.fault.procs import kill_hard, start_at, wait_port_free
from tests.support.job_copies import JobCopies, lay_out
from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service

pytestmark = [pytest.mark.slow]
TOKEN = "erasure-crash-token"
INTERNAL = {"Authorization": f"Bearer {TOKEN}"}
H = {**INTERNAL, "X-Tenant-Id": "acme"}
EMAIL = "Dana.Crash@example.org"
FAULT = {"TUNEFLEET_TEST_FAULT": "erase_after_first_file"}


def rows(n: int, seed: int, subject: bool) -> bytes:
    out = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in sentiment_examples(n, seed=seed)
    ]
    if subject:
        out.append({"prompt": f"Review: {EMAIL} says it broke.\nSentiment:", "completion": " no"})
    return b"".join(json.dumps(r).encode() + b"\n" for r in out)


@contextmanager
def training_env(model_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    reg_home, home = tmp_path / "registry", tmp_path / "training"
    reg_home.mkdir()
    home.mkdir()
    reg_env = {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
    }
    with service(
        "registry", "services.registry", reg_home, reg_env, "TUNEFLEET_REGISTRY_PORT"
    ) as r:
        yield (
            home,
            {
                "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
                "TUNEFLEET_TRAINING_REGISTRY_URL": r.url,
                "TUNEFLEET_TRAINING_RAY_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing there
                "TUNEFLEET_DATA_KEYS": "",
            },
        )


def prepared_job(url: str, data: bytes, name: str) -> tuple[str, dict[str, str]]:
    """Upload ``data``; a job on it that prepared its dataset (then waits for Ray)."""
    up = httpx.post(
        f"{url}/v1/files",
        headers=H,
        files={"file": (name, data)},
        data={"purpose": "fine-tune"},
        timeout=120,
    )
    assert up.status_code == 200, up.text
    body = {"model": "tiny-llama", "training_file": up.json()["id"], "task": "sentiment"}
    r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=H, json=body, timeout=120)
    assert r.status_code == 200, r.text
    for _ in range(600):
        job = httpx.get(f"{url}/v1/fine_tuning/jobs/{r.json()['id']}", headers=H, timeout=30)
        if job.json()["dataset_id"]:
            return up.json()["id"], job.json()
        time.sleep(0.1)
    raise TimeoutError("the job never prepared its dataset")


def erase(url: str) -> httpx.Response:
    body = {"subject": {"email": EMAIL.upper()}}
    return httpx.post(f"{url}/internal/erasure", headers=INTERNAL, json=body, timeout=120)


def db_rows(home: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(home / "training" / "training.db") as db:
        return db.execute(sql).fetchall()


def leftovers(home: Path, needles: list[str]) -> list[str]:
    """Every file under ``home`` holding the subject, and every path naming an erased id."""
    found = []
    for path in home.rglob("*"):
        if any(n in str(path.relative_to(home)) for n in needles):
            found.append(f"path {path.relative_to(home)}")
        elif path.is_file() and EMAIL.lower().encode() in path.read_bytes().lower():
            found.append(f"subject bytes in {path.relative_to(home)}")
    return sorted(found)


def test_kill_9_inside_erasure_then_rerun_leaves_nothing(model_dir: Path, tmp_path: Path) -> None:
    with training_env(model_dir, tmp_path) as (home, env):
        port = free_port()

        def start(extra: dict[str, str]) -> ServiceProcess:
            proc = start_at(
                "training",
                "services.training",
                home,
                {**env, **extra},
                "TUNEFLEET_TRAINING_PORT",
                port,
            )
            proc.wait_ready(120)
            return proc

        # the fault is armed from the start: it fires only inside an erasure
        proc = start(FAULT)
        erased_files, erased_jobs, copies = [], [], []
        for seed in (1, 2):
            file_id, job = prepared_job(proc.url, rows(40, seed, subject=True), f"s{seed}.jsonl")
            erased_files.append(file_id)
            erased_jobs.append(job)
        kept_file, kept_job = prepared_job(proc.url, rows(40, 3, subject=False), "clean.jsonl")
        data_root = home / "training"
        where = {
            "data_root": data_root,
            "storage": data_root / "ray-runs",
            "runner_work": data_root / "runner-work",
        }
        for job in erased_jobs:
            copies.append(lay_out(**where, job_id=job["id"], payload=EMAIL.encode()))
        kept: JobCopies = lay_out(**where, job_id=kept_job["id"], payload=b"other people")
        assert len(leftovers(home, [])) >= 2 * 3 + 2  # the subject is on disk to begin with

        # 1. killed inside the erasure
        t0 = time.monotonic()
        with pytest.raises(httpx.TransportError):
            erase(proc.url)
        assert proc.proc.wait(30) == -9, "the fault hook did not kill the service"
        wait_port_free(proc.url)
        pending = db_rows(home, "SELECT id, status, plan FROM training_erasures")
        assert [(r[0], r[1]) for r in pending] == [(pending[0][0], "pending")]
        plan = json.loads(str(pending[0][2]))
        (first,) = plan["files"]  # one file's rows went, then the kill
        left = {r[0] for r in db_rows(home, "SELECT id FROM training_files")}
        assert first not in left and set(erased_files) - {first} <= left
        assert (data_root / "blobs" / "files" / first).exists()  # no row, bytes still there

        # 2. restarted: the pending erasure is finished on start
        proc = start({})
        deadline = time.monotonic() + 60
        while db_rows(home, "SELECT 1 FROM training_erasures WHERE status = 'pending'"):
            assert time.monotonic() < deadline, "the pending erasure was never finished"
            time.sleep(0.2)
        finished_s = time.monotonic() - t0

        # 3. rerun: nothing more to erase, nothing pending, nothing of the subject anywhere
        again = erase(proc.url)
        assert again.status_code == 200, again.text
        assert again.json()["counts"]["files"] == 0 and again.json()["erasures"]
        ids = erased_files + [j["id"] for j in erased_jobs] + [j["dataset_id"] for j in erased_jobs]
        kill_hard(proc)  # its jobs wait for a Ray that is not there; the WAL is scanned too
        found = leftovers(home, ids)
        assert found == [], found
        assert all(p.exists() for p in kept.all())
        assert (data_root / "blobs" / "files" / kept_file).exists()
        assert (data_root / "blobs" / "datasets" / kept_job["dataset_id"]).exists()
        assert not any(p.exists() for c in copies for p in c.all())
        statuses = [r[0] for r in db_rows(home, "SELECT status FROM training_erasures")]
    stats = {
        "erasures": statuses,
        "files_erased": len(erased_files),
        "jobs_with_copies": len(erased_jobs),
        "finished_after_kill_s": round(finished_s, 2),
        "leftovers": len(found),
    }
    print("RESULT erasure_crash " + json.dumps(stats))
