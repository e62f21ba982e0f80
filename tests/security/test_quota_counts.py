"""``max_adapters`` and ``max_jobs`` hold under concurrency (issue 18, item 4).

The gateway used to count a tenant's adapters (or active jobs) and then forward the create:
N creates arriving together all counted ``limit - 1`` and all got in. The limit now travels
with the create (a header only the internal token can send) and the registry / training
service counts and inserts in one transaction under the tenant's lock
(``shared.countlimit``). N concurrent creates at ``limit - 1``: exactly one succeeds, the
others are 429 with the standard envelope; on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.training.app import MIGRATIONS, VERSION_TABLE
from services.training.domain import jobs
from services.training.storage.tables import JobRow
from shared.countlimit import MAX_ADAPTERS_HEADER, lock_key
from shared.db import Database, run_migrations
from shared.errors import RateLimited
from shared.schemas.training import JobCreate
from tests.conftest import RegistryHarness

N = 8  # concurrent creates
LIMIT = 3


async def test_concurrent_adapter_creates_at_the_limit_admit_one(
    registry: RegistryHarness,
) -> None:
    http, limit = registry.http, {MAX_ADAPTERS_HEADER: str(LIMIT)}
    for i in range(LIMIT - 1):
        r = await http.post("/v1/adapters", json={"name": f"a{i}"}, headers=limit)
        assert r.status_code == 201, r.text
    answers = await asyncio.gather(
        *(http.post("/v1/adapters", json={"name": f"b{i}"}, headers=limit) for i in range(N))
    )
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] + [429] * (N - 1), [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 429).json()["error"]
    assert refused["code"] == "adapter_quota_exceeded" and refused["type"] == "rate_limit_error"
    listed = (await http.get("/v1/adapters")).json()["data"]
    assert len(listed) == LIMIT
    # another tenant's count is its own; without the header (internal callers) no limit here
    other = registry.headers("globex") | limit
    assert (await http.post("/v1/adapters", json={"name": "a"}, headers=other)).status_code == 201
    assert (await http.post("/v1/adapters", json={"name": "c"})).status_code == 201


def test_concurrent_job_creates_at_the_limit_admit_one(db_url: str) -> None:
    run_migrations(db_url, MIGRATIONS, VERSION_TABLE)
    db = Database(db_url)
    body = JobCreate(model="tiny-llama", training_file="file-1")
    for _ in range(LIMIT - 1):
        jobs.create_job(db, "acme", body, 1, max_jobs=LIMIT)
    start = threading.Barrier(N)
    outcomes: list[str] = []

    def create() -> None:
        start.wait()
        try:
            jobs.create_job(db, "acme", body, 1, max_jobs=LIMIT)
            outcomes.append("created")
        except RateLimited as exc:
            assert exc.code == "job_quota_exceeded"
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["created"] + ["refused"] * (N - 1)
    with db.session() as s:
        listed, _ = jobs.list_jobs(s, "acme", None, 100)
    assert len(listed) == LIMIT
    # a finished job frees its place
    with db.session(write=True) as s:
        row = s.get(JobRow, listed[0].id)
        assert row is not None
        row.status = "succeeded"
    jobs.create_job(db, "acme", body, 1, max_jobs=LIMIT)
    with pytest.raises(RateLimited):
        jobs.create_job(db, "acme", body, 1, max_jobs=LIMIT)
    db.dispose()


def test_lock_keys_are_per_count_and_tenant() -> None:
    keys = {lock_key(w, t) for w in ("adapters", "jobs") for t in ("acme", "globex")}
    assert len(keys) == 4 and all(-(2**63) <= k < 2**63 for k in keys)
