"""Retention end to end: set through the gateway's ``/admin/retention/{tenant}`` (audited),
stored by the training service, enforced by its purge task, driven here with a FAKE CLOCK
(the purger's injected ``now``; nothing sleeps). Files older than the tenant's retention go
with their datasets and blobs; newer ones stay; a tenant without retention keeps all.

Uploads happen at the real time ``t0``; the "newer" file is dated 20 days later in the
training database, as if uploaded then, so one clock drives both ages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.training.domain.retention import DAY_S, RetentionPurger
from services.training.storage.tables import FileRow
from tests.security.data_fleet import ADMIN, DataFleet, auth, data_fleet, reviews


@pytest.fixture
async def fl(tmp_path: Path, model_dir: Path) -> AsyncIterator[DataFleet]:
    async with data_fleet(tmp_path, model_dir) as f:
        yield f


class FakeClock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, days: float) -> None:
        self.t += days * DAY_S


def purger_of(fl: DataFleet) -> RetentionPurger:
    purger: RetentionPurger = fl.training_app.state.retention
    return purger


def redate(fl: DataFleet, file_id: str, created_at: int) -> None:
    with fl.training_app.state.training.db.session(write=True) as s:
        row = s.get(FileRow, file_id)
        assert row is not None
        row.created_at = created_at


async def test_purge_removes_only_files_past_the_tenants_retention(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    globex = await fl.onboard("globex")
    old = await fl.upload(acme["integrator"], reviews(20, 1))
    new = await fl.upload(acme["integrator"], reviews(20, 2))
    forever = await fl.upload(globex["integrator"], reviews(20, 3))
    job = await fl.failed_job(acme["integrator"], old["id"])  # a dataset derived from `old`
    t0 = old["created_at"]
    redate(fl, new["id"], t0 + 20 * DAY_S)
    r = await fl.gateway.put("/admin/retention/acme", json={"days": 30}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["days"] == 30, r.text
    got = await fl.gateway.get("/admin/retention/acme", headers=ADMIN)
    assert got.json()["days"] == 30
    assert (await fl.gateway.get("/admin/retention/globex", headers=ADMIN)).json()["days"] is None

    clock = FakeClock(t0)
    purger = purger_of(fl)
    purger.now = clock
    clock.advance(29)
    assert (await purger.run_once()).files == []  # nothing is 30 days old yet

    clock.advance(2)  # day 31: `old` expired, `new` is 11 days old
    purged = await purger.run_once()
    assert purged.files == [old["id"]] and purged.datasets == [job["dataset_id"]]
    key = acme["integrator"]
    assert (await fl.gateway.get(f"/v1/files/{old['id']}", headers=auth(key))).status_code == 404
    assert not fl.blob(f"files/{old['id']}").exists()
    assert not fl.blob(f"datasets/{job['dataset_id']}").exists()
    kept = await fl.gateway.get(f"/v1/files/{new['id']}/content", headers=auth(key))
    assert kept.status_code == 200
    after = await fl.gateway.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(key))
    assert after.json()["training_file"] == "erased"

    clock.advance(20)  # day 51: `new` is 31 days old
    assert (await purger.run_once()).files == [new["id"]]
    clock.advance(10_000)  # globex set no retention: keeps everything, however old
    assert (await purger.run_once()).files == []
    theirs = await fl.gateway.get(
        f"/v1/files/{forever['id']}/content", headers=auth(globex["integrator"])
    )
    assert theirs.status_code == 200 and fl.blob(f"files/{forever['id']}").exists()

    # audited, chain intact
    entries = [e for e in await fl.audit() if e["action"] == "tenant.retention"]
    assert entries and entries[0]["details"] == {"days": 30} and entries[0]["tenant"] == "acme"
    assert (await fl.verify_audit())["valid"] is True


async def test_clearing_retention_keeps_everything(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], reviews(10, 4))
    assert (
        await fl.gateway.put("/admin/retention/acme", json={"days": 1}, headers=ADMIN)
    ).is_success
    r = await fl.gateway.put("/admin/retention/acme", json={"days": None}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["days"] is None
    clock = FakeClock(f["created_at"])
    purger = purger_of(fl)
    purger.now = clock
    clock.advance(365)
    assert (await purger.run_once()).files == []
    kept = await fl.gateway.get(f"/v1/files/{f['id']}", headers=auth(acme["integrator"]))
    assert kept.status_code == 200


@pytest.mark.parametrize(
    ("tenant", "body", "status", "param"),
    [
        ("acme", {"days": 0}, 400, "days"),
        ("acme", {"days": "a week"}, 400, "days"),
        ("acme", {}, 400, "days"),
        ("nobody", {"days": 30}, 404, "tenant"),
    ],
)
async def test_bad_retention_requests_name_the_field(
    fl: DataFleet, tenant: str, body: dict[str, object], status: int, param: str
) -> None:
    await fl.onboard("acme")
    r = await fl.gateway.put(f"/admin/retention/{tenant}", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    got = await fl.gateway.get("/admin/retention/acme", headers=ADMIN)
    assert got.json()["days"] is None  # nothing stored


async def test_only_admins_set_retention(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    r = await fl.gateway.put(
        "/admin/retention/acme", json={"days": 7}, headers=auth(acme["integrator"])
    )
    assert r.status_code == 403
    r = await fl.gateway.put("/admin/retention/acme", json={"days": 7}, headers=auth(acme["sre"]))
    assert r.status_code == 403
    assert (await fl.gateway.get("/admin/retention/acme", headers=auth(acme["sre"]))).is_success


async def test_purge_on_postgres(tmp_path: Path, model_dir: Path, postgres: Any) -> None:
    urls = {name: postgres.create_database() for name in ("registry", "training", "gateway")}
    async with data_fleet(tmp_path, model_dir, urls) as pg:
        acme = await pg.onboard("acme")
        f = await pg.upload(acme["integrator"], reviews(10, 5))
        r = await pg.gateway.put("/admin/retention/acme", json={"days": 7}, headers=ADMIN)
        assert r.status_code == 200, r.text
        clock = FakeClock(f["created_at"])
        purger = purger_of(pg)
        purger.now = clock
        clock.advance(6)
        assert (await purger.run_once()).files == []
        clock.advance(2)
        assert (await purger.run_once()).files == [f["id"]]
        assert not pg.blob(f"files/{f['id']}").exists()


def test_purge_keeps_what_a_running_job_reads(tmp_path: Path) -> None:
    """Domain level (no lifecycle to move the job on): a file an active job trains on is
    kept past its retention until the job ends; the next pass takes it."""
    from services.training.app import MIGRATIONS, VERSION_TABLE
    from services.training.domain.files import file_key
    from services.training.domain.retention import purge_expired, set_retention
    from services.training.storage.files import BlobStore
    from services.training.storage.tables import JobRow
    from shared.db import Database, run_migrations

    url = f"sqlite:///{tmp_path / 'training.db'}"
    run_migrations(url, MIGRATIONS, VERSION_TABLE)
    db, store = Database(url), BlobStore(tmp_path / "blobs")
    t0 = 1_700_000_000
    with db.session(write=True) as s:
        s.add(
            FileRow(
                id="file-1", tenant="acme", filename="a.jsonl", purpose="fine-tune", bytes=1,
                sha256="0" * 64, status="processed", created_at=t0,
            )
        )  # fmt: skip
        s.add(
            JobRow(
                id="ftjob-1", tenant="acme", status="running", model="tiny-llama",
                training_file="file-1", seed=0, request={}, runner_token_sha256="0" * 64,
            )
        )  # fmt: skip
    store.put(file_key("file-1"), b'{"prompt": "a", "completion": "b"}\n', tenant="acme")
    set_retention(db, "acme", 1)
    clock = FakeClock(t0)
    clock.advance(3)
    assert purge_expired(db, store, clock).files == []
    with db.session(write=True) as s:
        job = s.get(JobRow, "ftjob-1")
        assert job is not None
        job.status = "succeeded"
    assert purge_expired(db, store, clock).files == ["file-1"]
    assert not store.exists(file_key("file-1"))
    with db.session() as s:
        job = s.get(JobRow, "ftjob-1")
        assert job is not None and job.training_file == "erased"
    db.dispose()
