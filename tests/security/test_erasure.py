"""Right to erasure end to end: the real gateway, training service and registry in-process
(ASGI, real SQLite, blobs encrypted at rest), Ray replaced by an unreachable backend (a job
gets its prepared dataset, then fails with ``ray_unavailable``: enough lineage to erase).

A data subject who appears in one of two files: that file, its datasets and blobs go, the
other stays, in every tenant; jobs keep their rows with ``training_file: "erased"``; the
report names the adapter versions trained on the data (pushed straight to the registry
with lineage, instead of training one); the audit chain verifies and holds only an HMAC of
the subject. A tenant's erasure leaves other tenants alone. Bad input names its field.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.data_fleet import (
    ADMIN,
    CUSTOMER_ID,
    EMAIL,
    TOKEN,
    DataFleet,
    HostRouter,
    auth,
    data_fleet,
    model_ids,
    reviews,
    with_replica,
    with_subject,
)
from tests.support.adapters import make_adapter, pack


@pytest.fixture
async def fl(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DataFleet]:
    # encrypted at rest: the subject scan must read through the cipher
    monkeypatch.setenv("TUNEFLEET_DATA_KEYS", base64.b64encode(os.urandom(32)).decode())
    async with data_fleet(tmp_path, model_dir) as f:
        yield f


@pytest.fixture(scope="module")
def archive(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("erasure-adapter")
    return pack(make_adapter(model_dir, root / "a", r=4, seed=7), root / "a.tar.gz")


async def test_erasing_a_subject_removes_their_files_and_datasets_only(
    fl: DataFleet, archive: Path, model_dir: Path
) -> None:
    acme = await fl.onboard("acme")
    globex = await fl.onboard("globex")
    mentioned = await fl.upload(
        acme["integrator"], with_subject(reviews(30, 1)), idempotency_key="upload-1"
    )
    clean = await fl.upload(acme["integrator"], reviews(30, 2))
    elsewhere = await fl.upload(globex["integrator"], with_subject(reviews(20, 3)))
    assert fl.blob(f"files/{mentioned['id']}").read_bytes().startswith(b"TFE3")  # sealed, in chunks
    job = await fl.failed_job(acme["integrator"], mentioned["id"])
    clean_job = await fl.failed_job(acme["integrator"], clean["id"])
    dataset = job["dataset_id"]
    assert fl.blob(f"datasets/{dataset}/train.jsonl").exists()
    trained = await fl.push_version(
        "acme", "support-router", archive, {"job_id": job["id"], "dataset_id": dataset}
    )
    unrelated = await fl.push_version("acme", "other-router", archive, {"job_id": clean_job["id"]})
    r = await fl.registry.put(
        "/v1/adapters/support-router/aliases/production",
        json={"version": 1},
        headers={"X-Tenant-Id": "acme"},
    )
    assert r.status_code == 200, r.text
    async with with_replica(fl, model_dir):
        listed = await model_ids(fl, acme["integrator"])
        assert {"support-router@v1", "support-router", "other-router@v1"} <= listed

        r = await fl.gateway.post(
            "/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        report = r.json()
        # the version trained on the data is deleted (its alias with it), the other stays
        listed = await model_ids(fl, acme["integrator"])
        assert not {"support-router@v1", "support-router"} & listed, listed
        assert "other-router@v1" in listed
    gone = await fl.registry.get(
        "/v1/adapters/support-router/versions/1", headers={"X-Tenant-Id": "acme"}
    )
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "version_not_found"
    kept_version = await fl.registry.get(
        "/v1/adapters/other-router/versions/1", headers={"X-Tenant-Id": "acme"}
    )
    assert kept_version.status_code == 200
    affected = report["adapter_versions"][0]
    assert affected["deleted"] is True and affected["aliases_deleted"] == ["production"]
    assert report["deletion_error"] is None and report["counts"]["adapter_versions_deleted"] == 1
    # deleted through the registry's delete: replicas and gateways hear adapter.deleted
    feed = await fl.registry.get("/v1/internal/events", params={"after": 0, "limit": 100})
    deleted = [e["data"] for e in feed.json()["data"] if e["type"] == "adapter.deleted"]
    assert deleted == [{"adapter": "support-router", "versions": [1]}]
    assert report["object"] == "erasure.report" and report["scope"] == "subject"
    assert {f["id"] for f in report["files"]} == {mentioned["id"], elsewhere["id"]}
    assert {(d["id"], d["tenant"]) for d in report["datasets"]} == {(dataset, "acme")}
    assert [j["id"] for j in report["jobs"]] == [job["id"]]
    assert report["replays_forgotten"] == 1  # the gateway's stored answer to the upload
    refs = [v["ref"] for v in report["adapter_versions"]]
    assert refs == [trained["ref"]] and unrelated["ref"] not in refs
    assert report["adapter_versions"][0]["matched"] == [
        f"dataset_id:{dataset}",
        f"job_id:{job['id']}",
    ]

    key = acme["integrator"]
    for path in (f"/v1/files/{mentioned['id']}", f"/v1/files/{mentioned['id']}/content"):
        assert (await fl.gateway.get(path, headers=auth(key))).status_code == 404
    gone = await fl.gateway.get(f"/v1/files/{elsewhere['id']}", headers=auth(globex["integrator"]))
    assert gone.status_code == 404
    assert not fl.blob(f"files/{mentioned['id']}").exists()
    assert not fl.blob(f"files/{elsewhere['id']}").exists()
    assert not fl.blob(f"datasets/{dataset}").exists()
    kept = await fl.gateway.get(f"/v1/files/{clean['id']}/content", headers=auth(key))
    assert kept.status_code == 200 and kept.content.count(b"\n") == 30
    assert fl.blob(f"datasets/{clean_job['dataset_id']}/train.jsonl").exists()
    # the job is history: it stays, its training file reads "erased"
    after = await fl.gateway.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(key))
    assert after.status_code == 200 and after.json()["training_file"] == "erased"
    # a retry of the erased upload's key runs again instead of replaying erased metadata
    retry = await fl.upload(key, reviews(5, 12), idempotency_key="upload-1")
    assert retry["id"] != mentioned["id"]

    # audited, chain intact, the subject only as an HMAC
    entry = next(e for e in await fl.audit() if e["action"] == "data.erasure")
    assert entry["outcome"] == "ok" and entry["target"] == "subject"
    assert entry["details"]["files"] == 2 and entry["details"]["adapter_versions"] == refs
    assert entry["details"]["adapter_versions_deleted"] == refs
    assert entry["details"]["subject_email_hmac"] == report["subject_hmac"]
    assert EMAIL.lower() not in json.dumps(await fl.audit()).lower()
    assert (await fl.verify_audit())["valid"] is True

    # nothing left to find: a second request erases nothing
    again = await fl.gateway.post(
        "/admin/erasure", json={"subject": {"email": EMAIL.upper()}}, headers=ADMIN
    )
    assert again.status_code == 200 and again.json()["files"] == []
    assert again.json()["subject_hmac"] == report["subject_hmac"]  # same subject, same HMAC


async def test_versions_are_deleted_by_the_rerun_after_a_crash(
    fl: DataFleet, archive: Path, model_dir: Path
) -> None:
    """Two crashes before the versions were deleted: the training service killed inside an
    erasure (rows unlinked, finished when it starts again), and the gateway gone right after
    training answered. The training service carries both erasures' ids until the gateway
    settles them, so the rerun (which finds no data left) still deletes both versions; the
    next rerun finds nothing to do."""
    from services.training.domain import erasure

    acme = await fl.onboard("acme")
    key = acme["integrator"]
    first = await fl.upload(key, with_subject(reviews(20, 21)))
    second = await fl.upload(key, with_subject(reviews(20, 22)))
    clean = await fl.upload(key, reviews(20, 23))
    jobs = [await fl.failed_job(key, f["id"]) for f in (first, second, clean)]
    v1 = await fl.push_version("acme", "r1", archive, {"job_id": jobs[0]["id"]})
    v2 = await fl.push_version("acme", "r2", archive, {"dataset_id": jobs[1]["dataset_id"]})
    v3 = await fl.push_version("acme", "r3", archive, {"job_id": jobs[2]["id"]})
    st = fl.training_app.state.training

    # 1. training killed inside an erasure of the first file, then restarted: the pending
    # erasure is finished on start (what Erasures.start runs)
    crashed = erasure.open_erasure(st.db, [first["id"]], outputs=True, versions=True)
    erasure.unlink_rows(st.db, crashed)
    await st.erasures.resume()
    assert erasure.pending_ids(st.db) == []
    # 2. an erasure reaches training (the second file goes), then the gateway dies before
    # it looks up and deletes the versions
    body = {"subject": {"email": EMAIL}}
    async with httpx.AsyncClient(
        transport=HostRouter(fl.apps), base_url="http://training", headers=auth(TOKEN)
    ) as training:
        r = await training.post("/internal/erasure", json=body)
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["files"]] == [second["id"]]
    assert r.json()["unsettled"]["erasures"] == [crashed]
    for v in (v1, v2):
        ok = await fl.registry.get(
            f"/v1/adapters/{v['adapter']}/versions/1", headers={"X-Tenant-Id": "acme"}
        )
        assert ok.status_code == 200  # not deleted yet

    # 3. the rerun: no data left to erase, both versions deleted
    async with with_replica(fl, model_dir):
        r = await fl.gateway.post("/admin/erasure", json=body, headers=ADMIN)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["files"] == []
        assert [(v["ref"], v["deleted"]) for v in report["adapter_versions"]] == [
            (v1["ref"], True),
            (v2["ref"], True),
        ]
        listed = await model_ids(fl, key)
        assert "r1@v1" not in listed and "r2@v1" not in listed and "r3@v1" in listed
    for v in (v1, v2):
        gone = await fl.registry.get(
            f"/v1/adapters/{v['adapter']}/versions/1", headers={"X-Tenant-Id": "acme"}
        )
        assert gone.status_code == 404
    kept = await fl.registry.get("/v1/adapters/r3/versions/1", headers={"X-Tenant-Id": "acme"})
    assert kept.status_code == 200 and v3["ref"] == kept.json()["ref"]
    assert erasure.unsettled(st.db).erasures == []

    # 4. and again: nothing to delete, nothing carried
    r = await fl.gateway.post("/admin/erasure", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["adapter_versions"] == [] and r.json()["deletion_error"] is None
    assert r.json()["counts"]["adapter_versions_deleted"] == 0
    assert (await fl.verify_audit())["valid"] is True
    print(
        "RESULT erasure_rerun "
        + json.dumps({"deleted_on_rerun": report["counts"]["adapter_versions_deleted"]})
    )


async def test_erasing_a_subject_by_id_matches_whole_tokens(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    hit = await fl.upload(acme["integrator"], with_subject(reviews(10, 4)))
    near = await fl.upload(
        acme["integrator"],
        [
            *reviews(10, 5),
            {"prompt": f"Review: {CUSTOMER_ID}7 is fine.\nSentiment:", "completion": " neutral"},
        ],
    )
    r = await fl.gateway.post(
        "/admin/erasure", json={"subject": {"id": CUSTOMER_ID.lower()}}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["files"]] == [hit["id"]]
    assert r.json()["adapter_versions"] == []
    kept = await fl.gateway.get(f"/v1/files/{near['id']}", headers=auth(acme["integrator"]))
    assert kept.status_code == 200


async def test_erasing_a_tenant_leaves_other_tenants_alone(fl: DataFleet, archive: Path) -> None:
    acme = await fl.onboard("acme")
    globex = await fl.onboard("globex")
    a1 = await fl.upload(acme["integrator"], reviews(20, 6), idempotency_key="k1")
    a2 = await fl.upload(acme["integrator"], reviews(20, 7))
    g1 = await fl.upload(globex["integrator"], reviews(20, 8), idempotency_key="k1")
    trained = await fl.push_version("acme", "router", archive, {"training_file": a2["id"]})
    await fl.push_version("globex", "router", archive, {"training_file": g1["id"]})

    r = await fl.gateway.post("/admin/erasure", json={"tenant": "acme"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    report = r.json()
    assert {f["id"] for f in report["files"]} == {a1["id"], a2["id"]}
    assert [v["ref"] for v in report["adapter_versions"]] == [trained["ref"]]
    assert report["replays_forgotten"] == 1  # acme's; globex's stored answer stays
    replay = await fl.upload(globex["integrator"], reviews(20, 8), idempotency_key="k1")
    assert replay["id"] == g1["id"]
    listed = await fl.gateway.get("/v1/files", headers=auth(acme["integrator"]))
    assert listed.json()["data"] == []
    assert not fl.blob(f"files/{a1['id']}").exists() and not fl.blob(f"files/{a2['id']}").exists()
    other = await fl.gateway.get(
        f"/v1/files/{g1['id']}/content", headers=auth(globex["integrator"])
    )
    assert other.status_code == 200 and fl.blob(f"files/{g1['id']}").exists()
    entry = next(e for e in await fl.audit() if e["action"] == "data.erasure")
    assert entry["tenant"] == "acme" and entry["target"] == "tenant:acme"
    assert entry["details"]["scope"] == "tenant" and entry["outcome"] == "ok"
    assert (await fl.verify_audit())["valid"] is True


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "tenant"),
        ({"tenant": "acme", "subject": {"email": EMAIL}}, 400, "subject"),
        ({"subject": {}}, 400, "subject.email"),
        ({"subject": {"email": "not-an-address"}}, 400, "subject.email"),
        ({"subject": {"id": "42"}}, 400, "subject.id"),
        ({"tenant": "Not A Tenant"}, 400, "tenant"),
        ({"tenant": "nobody"}, 404, "tenant"),
    ],
)
async def test_bad_erasure_requests_name_the_field(
    fl: DataFleet, body: dict[str, Any], status: int, param: str
) -> None:
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], with_subject(reviews(10, 9)))
    r = await fl.gateway.post("/admin/erasure", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    # nothing was erased
    still = await fl.gateway.get(f"/v1/files/{f['id']}", headers=auth(acme["integrator"]))
    assert still.status_code == 200


async def test_only_admins_erase(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    for role in ("integrator", "sre"):
        r = await fl.gateway.post(
            "/admin/erasure", json={"tenant": "acme"}, headers=auth(acme[role])
        )
        assert r.status_code == 403, r.text
    # the internal calls refuse anything without the internal token
    r = await fl.registry.get(
        "/v1/lineage", params={"job": "ftjob-x"}, headers={"Authorization": ""}
    )
    assert r.status_code == 401


async def test_data_access_is_audited_and_the_chain_verifies(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    key = acme["integrator"]
    f = await fl.upload(key, reviews(10, 10))
    content = await fl.gateway.get(f"/v1/files/{f['id']}/content", headers=auth(key))
    assert content.status_code == 200
    reads = [e for e in await fl.audit() if e["action"] == "file.content.read"]
    assert len(reads) == 1 and reads[0]["tenant"] == "acme" and f["id"] in reads[0]["target"]
    assert reads[0]["outcome"] == "ok"
    assert (await fl.verify_audit())["valid"] is True


async def test_job_data_reads_are_audited(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    key = acme["integrator"]
    f = await fl.upload(key, reviews(20, 11))
    job = await fl.failed_job(key, f["id"])
    for path in (f"/v1/fine_tuning/jobs/{job['id']}/events", f"/v1/fine_tuning/jobs/{job['id']}"):
        assert (await fl.gateway.get(path, headers=auth(key))).status_code == 200
    targets = {e["target"] for e in await fl.audit() if e["tenant"] == "acme"}
    assert f"/v1/fine_tuning/jobs/{job['id']}/events" in targets
    assert (await fl.verify_audit())["valid"] is True


@pytest.mark.parametrize(
    ("email", "subject_id", "text", "hit"),
    [
        (EMAIL, None, b"contact: ALICE.SMITH@EXAMPLE.COM", True),
        (EMAIL, None, b"contact: alice.smith@example.org", False),
        (None, CUSTOMER_ID, b'{"customer": "cust-0042"}', True),
        (None, CUSTOMER_ID, b'{"customer": "CUST-00421"}', False),
        (None, CUSTOMER_ID, b'{"customer": "XCUST-0042"}', False),
        (None, CUSTOMER_ID, "Kunde CUST-0042, Zürich".encode(), True),
        (EMAIL, CUSTOMER_ID, b"id CUST-0042 only", True),
        (None, CUSTOMER_ID, b"ends a sentence: CUST-0042.", True),
        (None, CUSTOMER_ID, b"CUST-0042_old", False),
    ],
)
def test_subject_matcher(email: str | None, subject_id: str | None, text: bytes, hit: bool) -> None:
    from services.training.domain.erasure import subject_matcher

    assert subject_matcher(email, subject_id)(text) is hit


async def test_internal_calls_check_their_input(fl: DataFleet) -> None:
    r = await fl.registry.get("/v1/lineage")
    assert r.status_code == 400 and r.json()["error"]["param"] == "job"
    r = await fl.registry.get("/v1/lineage", params={"job": "x"}, headers={"X-Tenant-Id": "A B"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Tenant-Id"
    training = httpx.AsyncClient(
        transport=HostRouter(fl.apps), base_url="http://training", timeout=60
    )
    async with training:
        body = {"tenant": "acme", "subject": {"id": CUSTOMER_ID}}
        assert (await training.post("/internal/erasure", json=body)).status_code == 401
        token = {"Authorization": f"Bearer {TOKEN}"}
        r = await training.post("/internal/erasure", json=body, headers=token)
        assert r.status_code == 400 and r.json()["error"]["param"] == "subject"
        r = await training.put("/internal/retention/acme", json={"days": -1}, headers=token)
        assert r.status_code == 400 and r.json()["error"]["param"] == "days"


async def test_a_failed_erasure_is_audited_and_reported(fl: DataFleet) -> None:
    acme = await fl.onboard("acme")
    f = await fl.upload(acme["integrator"], with_subject(reviews(10, 13)))
    training = fl.apps.pop("training")  # the training service is down
    try:
        r = await fl.gateway.post(
            "/admin/erasure", json={"subject": {"id": CUSTOMER_ID}}, headers=ADMIN
        )
    finally:
        fl.apps["training"] = training
    assert r.status_code == 503, r.text
    entry = next(e for e in await fl.audit() if e["action"] == "data.erasure")
    assert entry["outcome"] == "503" and "subject_id_hmac" in entry["details"]
    assert CUSTOMER_ID.lower() not in json.dumps(entry).lower()
    still = await fl.gateway.get(f"/v1/files/{f['id']}", headers=auth(acme["integrator"]))
    assert still.status_code == 200
    # the registry down after the data is gone: the erasure stands, the report says so
    registry = fl.apps.pop("registry")
    try:
        r = await fl.gateway.post(
            "/admin/erasure", json={"subject": {"id": CUSTOMER_ID}}, headers=ADMIN
        )
    finally:
        fl.apps["registry"] = registry
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["files"]] == [f["id"]]
    assert r.json()["adapter_versions"] is None and "registry" in r.json()["lineage_error"]
    entry = next(e for e in await fl.audit() if e["action"] == "data.erasure")
    assert entry["outcome"] == "partial"
    assert (await fl.verify_audit())["valid"] is True


async def test_subject_erasure_on_postgres(
    tmp_path: Path, model_dir: Path, postgres: Any, archive: Path
) -> None:
    """The same erasure with every service on Postgres (lineage JSON, job updates, audit)."""
    urls = {name: postgres.create_database() for name in ("registry", "training", "gateway")}
    async with data_fleet(tmp_path, model_dir, urls) as pg:
        acme = await pg.onboard("acme")
        hit = await pg.upload(acme["integrator"], with_subject(reviews(20, 14)))
        kept = await pg.upload(acme["integrator"], reviews(20, 15))
        job = await pg.failed_job(acme["integrator"], hit["id"])
        v = await pg.push_version("acme", "router", archive, {"job_id": job["id"]})
        r = await pg.gateway.post(
            "/admin/erasure", json={"subject": {"email": EMAIL}}, headers=ADMIN
        )
        assert r.status_code == 200, r.text
        assert [f["id"] for f in r.json()["files"]] == [hit["id"]]
        assert [x["ref"] for x in r.json()["adapter_versions"]] == [v["ref"]]
        key = auth(acme["integrator"])
        assert (await pg.gateway.get(f"/v1/files/{kept['id']}", headers=key)).status_code == 200
        after = await pg.gateway.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=key)
        assert after.json()["training_file"] == "erased"
        assert (await pg.verify_audit())["valid"] is True
