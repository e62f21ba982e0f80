"""What shared quota state costs a gateway per request (issue 16, item 2).

Runs the quota work of one non-streamed completion (admit: rpm + tpm check; reserve the
tokens; settle; remember the prediction for feedback) ``--requests`` times, ``--concurrency``
at once, in one event loop, with each state store: ``memory`` (one gateway), ``database`` on
SQLite and ``database`` on a throwaway Postgres (Debian's binaries, as the tests start it).
Prints JSON: the gateway process's CPU per request (all its threads; the Postgres server's
own CPU is reported apart) and the wall time per request's quota work.

    .venv/bin/python benchmarks/quota_state_cost.py --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from gateway.app import MIGRATIONS, VERSION_TABLE  # noqa: E402
from gateway.domain.feedback import FeedbackBook, Prediction, SqlPredictions  # noqa: E402
from gateway.domain.keys import Principal  # noqa: E402
from gateway.domain.quota_sql import SqlQuotaState  # noqa: E402
from gateway.domain.quota_state import MemoryQuotaState, QuotaState  # noqa: E402
from gateway.domain.quotas import Limits, Quotas  # noqa: E402
from shared.db import Database, run_migrations  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402

LIMITS = Limits(rpm=10**9, tpm=10**9, max_streams=64, max_adapters=5, max_jobs=2)


async def measure(url: str, store: str, requests: int, concurrency: int) -> dict[str, Any]:
    run_migrations(url, MIGRATIONS, VERSION_TABLE)
    db = Database(url)
    shared = store == "database"
    state: QuotaState = SqlQuotaState(db) if shared else MemoryQuotaState()
    quotas = Quotas(db, lambda: LIMITS, state)
    book = FeedbackBook(CollectorRegistry(), store=SqlPredictions(db, 3600) if shared else None)
    await state.start()
    tenants = [Principal(key_id=f"key_{i}", tenant=f"t{i}", role="app") for i in range(8)]
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            who = tenants[i % len(tenants)]
            admission = await quotas.admission(who)
            await admission.reserve(300)
            admission.settle(120)
            await book.remember([f"req-{i}", f"cmpl-{i}"], Prediction(who.tenant, "base", "x"))

    await asyncio.gather(*(worker() for _ in range(4)))  # warm up connections and caches
    counter = iter(range(requests))
    proc = psutil.Process()
    cpu0, t0 = proc.cpu_times(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu1 = time.perf_counter() - t0, proc.cpu_times()
    await state.stop()
    db.dispose()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "cpu_ms_per_request": round(1000 * cpu / requests, 3),
        "wall_ms_per_request": round(1000 * wall / requests, 3),
        "requests_per_s": round(requests / wall, 1),
    }


def pg_cpu(cluster: PostgresCluster) -> float:
    total = 0.0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(cluster.data) in " ".join(p.info["cmdline"] or []) or (
                p.name().startswith("postgres") and p.ppid() != 1
            ):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tf-quota-cost-"))
    out: dict[str, Any] = {"requests": args.requests, "concurrency": args.concurrency}
    n, c = args.requests, args.concurrency
    out["memory"] = asyncio.run(measure(f"sqlite:///{base / 'mem.db'}", "memory", n, c))
    out["database_sqlite"] = asyncio.run(
        measure(f"sqlite:///{base / 'shared.db'}", "database", n, c)
    )
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="tf-pg-"))).start()
    try:
        before = pg_cpu(cluster)
        out["database_postgres"] = asyncio.run(measure(cluster.create_database(), "database", n, c))
        out["database_postgres"]["postgres_cpu_ms_per_request"] = round(
            1000 * (pg_cpu(cluster) - before) / n, 3
        )
    finally:
        cluster.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
