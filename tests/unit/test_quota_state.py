"""The shared (SQL) quota and feedback state on SQLite and Postgres, with a clock the test
moves: the same answers as the in-memory state, two "gateways" (two ``SqlQuotaState`` on one
database) sharing their buckets and streams, leases of a crashed gateway expiring, feedback
across gateways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import MIGRATIONS, VERSION_TABLE
from gateway.domain.erasure import forget_replays
from gateway.domain.feedback import FeedbackBook, Prediction, SqlPredictions
from gateway.domain.quota_sql import SqlQuotaState
from gateway.domain.quota_state import MemoryQuotaState, QuotaState
from gateway.settings import GatewaySettings
from shared.db import Database, run_migrations
from shared.errors import NotFound, RateLimited


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    run_migrations(db_url, MIGRATIONS, VERSION_TABLE)
    database = Database(db_url)
    yield database
    database.dispose()


@pytest.fixture(params=["memory", "sql"])
def state(request: pytest.FixtureRequest, db: Database) -> QuotaState:
    if request.param == "memory":
        return MemoryQuotaState()
    return SqlQuotaState(db, clock=Clock())


async def test_rpm_tpm_and_streams_answer_alike(state: QuotaState) -> None:
    rpm, tpm = [("rpm:tenant:a", 2)], [("tpm:tenant:a", 60)]
    await state.admit(rpm, tpm)
    await state.admit(rpm, tpm)
    with pytest.raises(RateLimited) as err:
        await state.admit(rpm, tpm)
    assert int(err.value.headers["Retry-After"]) >= 1
    taken = await state.reserve(tpm, 100)  # capped at one minute's budget
    assert taken == {"tpm:tenant:a": 60.0}
    with pytest.raises(RateLimited) as tokens:
        await state.reserve(tpm, 1)
    assert tokens.value.code == "tokens_rate_limit_exceeded"
    state.charge([("tpm:tenant:a", 60, -60.0)])  # the answer used nothing: all given back
    if isinstance(state, SqlQuotaState):
        await state.flush()
    assert await state.reserve(tpm, 10) == {"tpm:tenant:a": 10.0}
    async with state.streams([("tenant:a", 1)]):
        with pytest.raises(RateLimited) as busy:
            async with state.streams([("tenant:a", 1)]):
                pass
        assert busy.value.code == "too_many_streams"
    async with state.streams([("tenant:a", 1)]):  # given back
        pass


async def test_two_gateways_share_buckets_and_streams(db: Database) -> None:
    clock = Clock()
    a, b = SqlQuotaState(db, clock=clock), SqlQuotaState(db, clock=clock)
    rpm = [("rpm:tenant:a", 3), ("rpm:key:k", 10)]
    await a.admit(rpm, [])
    await b.admit(rpm, [])
    await a.admit(rpm, [])
    with pytest.raises(RateLimited):
        await b.admit(rpm, [])
    clock.t += 20  # a third of a minute: one request back
    await b.admit(rpm, [])
    with pytest.raises(RateLimited):
        await a.admit(rpm, [])
    # all or none: the key's bucket (refilled to 10 at +20 s, then 1 taken) was not spent by
    # the refused requests
    for _ in range(9):
        await a.admit([("rpm:key:k", 10)], [])
    with pytest.raises(RateLimited):
        await a.admit([("rpm:key:k", 10)], [])

    # tpm debt charged through one gateway refuses on the other
    b.charge([("tpm:tenant:a", 60, 90.0)])
    await b.flush()
    with pytest.raises(RateLimited) as debt:
        await a.reserve([("tpm:tenant:a", 60)], 1)
    assert debt.value.code == "tokens_rate_limit_exceeded"
    assert 25 <= int(debt.value.headers["Retry-After"]) <= 61

    async with a.streams([("tenant:a", 2)]), b.streams([("tenant:a", 2)]):
        with pytest.raises(RateLimited):
            async with b.streams([("tenant:a", 2)]):
                pass


async def test_a_crashed_gateways_streams_expire(db: Database) -> None:
    clock = Clock()
    crashed, alive = SqlQuotaState(db, clock=clock, lease_s=30), SqlQuotaState(db, clock=clock)
    slot = crashed.streams([("tenant:a", 1)])
    await slot.__aenter__()  # never left: the process died
    with pytest.raises(RateLimited):
        async with alive.streams([("tenant:a", 1)]):
            pass
    clock.t += 31
    async with alive.streams([("tenant:a", 1)]):
        pass
    clock.t += 200
    assert alive.purge() == {"leases": 1, "buckets": 0}
    del slot


async def test_feedback_reaches_another_gateway(db: Database) -> None:
    kept = SqlPredictions(db, ttl_s=3600)
    a = FeedbackBook(CollectorRegistry(), store=kept)
    b = FeedbackBook(CollectorRegistry(), store=SqlPredictions(db, ttl_s=3600))
    await a.remember(["req-1", "cmpl-1"], Prediction("acme", "router@v1", "Billing " * 500))
    with pytest.raises(NotFound):  # written with the next batch (every flush_s)
        await b.record("acme", "cmpl-1", "billing")
    await kept.flush()
    out = await b.record("acme", "cmpl-1", "billing " * 500)  # a long answer matches too
    assert (out["match"], out["count"], out["accuracy"]) == (True, 1, 1.0)
    out = await a.record("acme", "req-1", "outage")
    assert (out["match"], out["count"], out["accuracy"]) == (False, 2, 0.5)
    with pytest.raises(NotFound):
        await b.record("globex", "req-1", "billing")  # another tenant's id is unknown
    assert kept.purge() == 0  # none expired
    with db.session(write=True) as s:  # erasing the tenant forgets its answers too
        forget_replays(s, tenant="acme", file_ids=[])
    with pytest.raises(NotFound):
        await b.record("acme", "cmpl-1", "billing")


def test_state_store_defaults_to_the_database_on_postgres(tmp_path: Path) -> None:
    assert not GatewaySettings(home=tmp_path).shared_state()
    pg = GatewaySettings(home=tmp_path, database_url="postgresql://u@h/db")
    assert pg.shared_state()
    assert not GatewaySettings(
        home=tmp_path, database_url="postgresql://u@h/db", state_store="memory"
    ).shared_state()
    assert GatewaySettings(home=tmp_path, state_store="database").shared_state()
