"""Gateway storage on real SQLite and Postgres: migrations to head, idempotency records
(claim, replay, conflict, in progress, expiry, 5xx forgotten), quota rows and buckets."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, update

from gateway.app import MIGRATIONS, VERSION_TABLE
from gateway.domain import idempotency
from gateway.domain.quotas import Limits, QuotaBook, RateLimiter, StreamGate
from gateway.storage.tables import IdempotencyRow, QuotaRow
from shared.db import Database, run_migrations
from shared.errors import Conflict, RateLimited


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    run_migrations(db_url, MIGRATIONS, VERSION_TABLE)
    database = Database(db_url)
    yield database
    database.dispose()


def test_migrations_reach_head(db: Database) -> None:
    with db.session() as s:
        tables = set(inspect(s.get_bind()).get_table_names())
    assert {"tenants", "api_keys", "audit_log", "usage"} <= tables
    assert {"idempotency_keys", "quotas", "integrations"} <= tables


def test_idempotency_records(db: Database) -> None:
    fp = idempotency.fingerprint("POST", "/v1/adapters", "application/json", b'{"name":"a"}')
    with db.session(write=True) as s:
        assert idempotency.begin(s, "acme", "k1", fp, 60) is None
    with db.session(write=True) as s, pytest.raises(Conflict) as busy:
        idempotency.begin(s, "acme", "k1", fp, 60)
    assert busy.value.code == "idempotency_key_in_progress"
    with db.session(write=True) as s:
        idempotency.finish(s, "acme", "k1", 201, "application/json", b'{"id":"a"}')
    with db.session(write=True) as s:
        stored = idempotency.begin(s, "acme", "k1", fp, 60)
    assert stored == idempotency.Stored(201, "application/json", b'{"id":"a"}')
    other = idempotency.fingerprint("POST", "/v1/adapters", "application/json", b'{"name":"b"}')
    with db.session(write=True) as s, pytest.raises(Conflict) as reused:
        idempotency.begin(s, "acme", "k1", other, 60)
    assert reused.value.param == "Idempotency-Key"
    with db.session(write=True) as s:  # another tenant, same key: independent
        assert idempotency.begin(s, "globex", "k1", other, 60) is None
        idempotency.finish(s, "globex", "k1", 503, "application/json", b"{}")
    with db.session(write=True) as s:  # a 5xx is not kept: the retry really runs
        assert idempotency.begin(s, "globex", "k1", other, 60) is None
    with db.session(write=True) as s:
        s.execute(update(IdempotencyRow).values(expires_at=int(time.time()) - 1))
    with db.session(write=True) as s:  # expired: the key is free again
        assert idempotency.begin(s, "acme", "k1", other, 60) is None
        idempotency.abandon(s, "acme", "k1")
    with db.session(write=True) as s:
        assert idempotency.purge_expired(s) >= 1


def test_multipart_fingerprint_ignores_the_boundary() -> None:
    def body(boundary: str) -> tuple[str, bytes]:
        return (
            f"multipart/form-data; boundary={boundary}",
            f"--{boundary}\r\nContent-Disposition: form-data; name=file\r\n\r\nabc\r\n"
            f"--{boundary}--\r\n".encode(),
        )

    a = idempotency.fingerprint("POST", "/v1/files", *body("aaaa1111"))
    b = idempotency.fingerprint("POST", "/v1/files", *body("bbbb2222"))
    assert a == b
    ct, raw = body("aaaa1111")
    assert a != idempotency.fingerprint("POST", "/v1/files", ct, raw.replace(b"abc", b"abd"))


def test_quota_rows_and_buckets(db: Database) -> None:
    with db.session(write=True) as s:
        s.add(QuotaRow(scope="tenant", subject="acme", tpm=100, max_jobs=1))
        s.add(QuotaRow(scope="key", subject="key_1", rpm=2))
    book = QuotaBook(db)
    book.load_if_stale()
    defaults = Limits(rpm=600, tpm=1000, max_streams=4, max_adapters=5, max_jobs=2)
    assert book.tenant("acme", defaults) == Limits(600, 100, 4, 5, 1)
    assert book.tenant("acme", defaults, legacy_rpm=7).rpm == 7
    assert book.tenant("other", defaults) == defaults
    assert book.key("key_1").rpm == 2 and book.key("key_1").tpm is None
    rate = RateLimiter()
    rate.take("rpm:k", 2)
    rate.take("rpm:k", 2)
    with pytest.raises(RateLimited) as err:
        rate.take("rpm:k", 2)
    assert int(err.value.headers["Retry-After"]) >= 1
    rate.check_positive("tpm:k", 60)
    rate.charge("tpm:k", 60, 90)  # one answer larger than the budget: in debt, capped
    with pytest.raises(RateLimited) as debt:
        rate.check_positive("tpm:k", 60)
    assert debt.value.code == "tokens_rate_limit_exceeded"
    assert 25 <= int(debt.value.headers["Retry-After"]) <= 61
    gate = StreamGate()
    with gate.hold([("tenant:a", 1)]), pytest.raises(RateLimited), gate.hold([("tenant:a", 1)]):
        pass
    with gate.hold([("tenant:a", 1)]):
        assert gate.open["tenant:a"] == 1
    assert gate.open["tenant:a"] == 0
