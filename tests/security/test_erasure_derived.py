"""Issue 18 item 8: erasure reaches every derived copy and reports each.

The real gateway, training service and registry in-process (``data_fleet``); jobs prepare
their dataset and fail without Ray, and the copies a run would leave (Ray checkpoints, a
killed runner's work dir, a merged model) are laid out where the service's settings put
them (``tests/support/job_copies``). The interleavings are forced, not timed:

* a preparation whose source file is erased while it runs (a tokenizer that erases the
  file the first time the pipeline uses it) must not commit its dataset;
* an erasure interrupted after its rows went (its two phases run by hand, the second not)
  is finished by the next erasure request, which reports it.

The crash itself (kill -9 of a real training process inside erasure) is
``tests/fault/test_erasure_crash.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select

from services.training.deps import TrainingState
from services.training.domain import erasure, files
from services.training.storage.tables import CheckpointRow, DatasetRow, ErasureRow, JobRow
from shared.errors import NotFound
from tests.security.data_fleet import (
    ADMIN,
    EMAIL,
    DataFleet,
    auth,
    data_fleet,
    reviews,
    with_subject,
)
from tests.support.job_copies import JobCopies, lay_out
from tests.support.models import model_archive, upload_model


@pytest.fixture
async def fl(tmp_path: Path, model_dir: Path) -> AsyncIterator[DataFleet]:
    async with data_fleet(tmp_path, model_dir) as f:
        yield f


def training(fl: DataFleet) -> TrainingState:
    state: TrainingState = fl.training_app.state.training
    return state


def copies_of(fl: DataFleet, job_id: str, payload: bytes) -> JobCopies:
    st = training(fl)
    return lay_out(
        data_root=st.settings.data_root(),
        storage=Path(st.settings.ray_storage()),
        runner_work=st.settings.runner_work_root(),
        job_id=job_id,
        payload=payload,
    )


async def as_merged_model(fl: DataFleet, job_id: str, model: str, weights: Path) -> None:
    """The job as a succeeded ``full`` job whose result was registered as a tenant base
    (``weights``: a real model dir, what the registry's catalog describes)."""
    packed = model_archive(weights)
    r = await upload_model(fl.registry, model, packed, headers={"X-Tenant-Id": "acme"})
    assert r.status_code == 201, r.text
    with training(fl).db.session(write=True) as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        row.fine_tuned_model = model
        row.result = {"registered_as": "base_model"}
        s.add(CheckpointRow(job_id=job_id, step=10, metrics={}, path="ray-runs/ckpt"))


ACME = {"X-Tenant-Id": "acme"}


async def catalog_ids(fl: DataFleet) -> set[str]:
    r = await fl.registry.get("/v1/base-models", headers=ACME)
    return {m["id"] for m in r.json()["data"]}


async def test_erasure_deletes_and_reports_every_derived_copy(
    fl: DataFleet, model_dir: Path
) -> None:
    acme = await fl.onboard("acme")
    key = acme["integrator"]
    mentioned = await fl.upload(key, with_subject(reviews(30, 1)))
    clean = await fl.upload(key, reviews(30, 2))
    job = await fl.failed_job(key, mentioned["id"])
    other = await fl.failed_job(key, clean["id"])
    subject_bytes = EMAIL.encode()
    erased = copies_of(fl, job["id"], subject_bytes)
    kept = copies_of(fl, other["id"], b"someone else")
    model = f"support-{job['id'][-10:]}"
    other_model = f"support-{other['id'][-10:]}"
    await as_merged_model(fl, job["id"], model, model_dir)
    await as_merged_model(fl, other["id"], other_model, model_dir)
    # copies the training service fetched back from the registry to train on each model
    bases = training(fl).settings.data_root() / "bases"
    fetched = {m: bases / f"{m}-{'0' * 64}" for m in (model, other_model)}
    for d in fetched.values():
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"weights fitted to the data")

    r = await fl.gateway.post("/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    report = r.json()
    mine = [{"id": job["id"], "tenant": "acme"}]
    assert report["checkpoints"] == mine
    assert report["runner_dirs"] == mine
    assert report["models"] == [{"id": model, "tenant": "acme"}]
    assert report["models_error"] is None
    assert model not in await catalog_ids(fl) and other_model in await catalog_ids(fl)
    assert report["counts"] == {
        "files": 1,
        "datasets": 1,
        "jobs": 1,
        "checkpoints": 1,
        "runner_dirs": 1,
        "models": 1,
        "adapter_versions": 0,
        "adapter_versions_deleted": 0,
        "replays_forgotten": 0,
    }
    assert len(report["erasures"]) == 1
    for path in erased.all():
        assert not path.exists(), path
    for path in kept.all():
        assert path.exists(), path
    assert not fetched[model].exists() and fetched[other_model].exists()
    with training(fl).db.session() as s:
        ckpts = {c.job_id for c in s.scalars(select(CheckpointRow))}
        done = s.get(ErasureRow, report["erasures"][0])
        assert done is not None and done.status == "done"
    assert ckpts == {other["id"]}  # the erased job's checkpoint paths went with its run
    entry = next(e for e in await fl.audit() if e["action"] == "data.erasure")
    assert entry["details"]["derived"] == {"checkpoints": 1, "runner_dirs": 1, "models": 1}
    # a rerun finds nothing left
    again = await fl.gateway.post(
        "/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN
    )
    assert again.status_code == 200
    assert again.json()["counts"]["files"] == 0 and again.json()["checkpoints"] == []


async def test_erasure_goes_on_when_ray_cannot_stop_a_running_job(fl: DataFleet) -> None:
    """A job still running on the data is cancelled; Ray being unreachable (the test's
    backend) must not keep the data on disk: the job ends cancelled, the copies go."""
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], with_subject(reviews(20, 4)))
    job = await fl.failed_job(acme["integrator"], f["id"])
    copies = copies_of(fl, job["id"], EMAIL.encode())
    with training(fl).db.session(write=True) as s:
        row = s.get(JobRow, job["id"])
        assert row is not None
        row.status, row.ray_job_id, row.error = "running", f"tf-{job['id']}", None
    r = await fl.gateway.post("/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["jobs_cancelled"] == [job["id"]]
    assert not any(p.exists() for p in copies.all()) and not fl.blob(f"files/{f['id']}").exists()
    after = await fl.gateway.get(
        f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(acme["integrator"])
    )
    assert after.json()["status"] == "cancelled"
    assert erasure.pending_ids(training(fl).db) == []


async def test_tenant_erasure_deletes_its_merged_models(fl: DataFleet, model_dir: Path) -> None:
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], reviews(20, 3))
    job = await fl.failed_job(acme["integrator"], f["id"])
    copies = copies_of(fl, job["id"], b"acme rows")
    await as_merged_model(fl, job["id"], "full-acme", model_dir)
    r = await fl.gateway.post("/admin/erasure", json={"tenant": "acme"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["models"] == [{"id": "full-acme", "tenant": "acme"}]
    assert not any(p.exists() for p in copies.all())
    assert await catalog_ids(fl) == {"tiny-llama"}  # the fleet's own model stays
    fleet_model = await fl.registry.delete("/v1/base-models/tiny-llama", headers=ACME)
    assert fleet_model.status_code == 404  # not a tenant's to delete


async def test_a_preparation_racing_an_erasure_commits_nothing(
    fl: DataFleet, model_dir: Path
) -> None:
    await race_preparation_against_erasure(fl, model_dir)


async def test_a_preparation_racing_an_erasure_on_postgres(
    tmp_path: Path, model_dir: Path, postgres: Any
) -> None:
    urls = {name: postgres.create_database() for name in ("registry", "training", "gateway")}
    async with data_fleet(tmp_path / "pg", model_dir, urls) as pg:
        await race_preparation_against_erasure(pg, model_dir)


async def race_preparation_against_erasure(fl: DataFleet, model_dir: Path) -> None:
    """The file is erased while its dataset is being prepared (after the preparation read
    the file row, before it commits): the erasure answered, so no dataset may appear."""
    from transformers import AutoTokenizer

    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], with_subject(reviews(30, 5)))
    st = training(fl)
    erased_meanwhile: list[Any] = []

    class ErasingTokenizer:
        """The real tokenizer; the first time the pipeline uses it, the file is erased."""

        def __init__(self) -> None:
            self.inner = AutoTokenizer.from_pretrained(model_dir)

        def __getattr__(self, name: str) -> Any:
            if not erased_meanwhile:
                erased_meanwhile.append(erasure.erase_files(st.db, st.store, [f["id"]]))
            return getattr(self.inner, name)

        def __call__(self, *a: Any, **kw: Any) -> Any:
            return self.__getattr__("__call__")(*a, **kw)

    def prepare() -> None:
        files.prepare_dataset(
            st.db,
            st.store,
            tenant="acme",
            training_file=f["id"],
            validation_file=None,
            task="sentiment",
            base_model="tiny-llama",
            seed=7,
            tokenizer=ErasingTokenizer(),
            max_len=128,
        )

    with pytest.raises(NotFound) as exc:
        await anyio.to_thread.run_sync(prepare)
    assert exc.value.code == "file_not_found"
    assert erased_meanwhile and [i for _, i in erased_meanwhile[0].files] == [f["id"]]
    with st.db.session() as s:
        assert list(s.scalars(select(DatasetRow))) == []
    assert not any((fl.home / "training" / "blobs" / "datasets").glob("*/*.jsonl"))
    gone = await fl.gateway.get(f"/v1/files/{f['id']}", headers=auth(acme["integrator"]))
    assert gone.status_code == 404


async def test_an_interrupted_erasure_is_finished_and_reported_by_the_next(
    fl: DataFleet,
) -> None:
    """Phase 1 (rows) ran, phase 2 (blobs, copies) did not, as after a crash between them:
    the data is unreachable but still on disk, and the erasure is pending, not done."""
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], with_subject(reviews(20, 6)))
    job = await fl.failed_job(acme["integrator"], f["id"])
    copies = copies_of(fl, job["id"], EMAIL.encode())
    st = training(fl)
    erasure_id = erasure.open_erasure(st.db, [f["id"]], outputs=True)
    erasure.unlink_rows(st.db, erasure_id)
    assert fl.blob(f"files/{f['id']}").exists() and copies.run.exists()
    assert erasure.pending_ids(st.db) == [erasure_id]

    # the same subject again: the scan finds no row, the pending erasure is finished
    r = await fl.gateway.post("/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["erasures"][0] == erasure_id
    assert [x["id"] for x in report["files"]] == [f["id"]]
    assert [x["id"] for x in report["datasets"]] == [job["dataset_id"]]
    assert report["checkpoints"] == [{"id": job["id"], "tenant": "acme"}]
    assert not fl.blob(f"files/{f['id']}").exists()
    assert not fl.blob(f"datasets/{job['dataset_id']}").exists()
    assert not any(p.exists() for p in copies.all())
    assert erasure.pending_ids(st.db) == []
    with st.db.session() as s:
        row = s.get(ErasureRow, erasure_id)
        assert row is not None and row.status == "done"
        assert json.dumps(row.plan).lower().find(EMAIL.lower()) == -1  # ids, never the subject
