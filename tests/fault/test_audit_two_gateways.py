"""Two gateway processes on one Postgres keep one audit chain (issue 18, item 6).

Both gateways append audited admin actions (API-key creations) at once while both are asked
``GET /admin/audit/verify`` meanwhile. Appends are serialized by the chain's advisory lock
(``gateway.domain.audit.lock_chain``), so every verify answers valid, including those made
in the middle of the load, and no two rows chain from the same one (a fork). Before the
lock, two gateways read the same last row and both chained from it: verify reported the
chain invalid at the first fork.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service

TOKEN = "audit-race-token"
BOOTSTRAP = "tf-bootstrap-audit-race"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}
CREATES = 30  # per gateway
IN_FLIGHT = 8  # per gateway


def gateway_env(url: str) -> dict[str, str]:
    closed = f"http://127.0.0.1:{free_port()}"
    return {
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_ADMIN_KEY": BOOTSTRAP,
        "TUNEFLEET_GATEWAY_DATABASE_URL": url,
        "TUNEFLEET_GATEWAY_KEY_HASH_SECRET": "shared-key-hash-secret",
        "TUNEFLEET_GATEWAY_REGISTRY_URL": closed,
        "TUNEFLEET_GATEWAY_TRAINING_URL": closed,
        "TUNEFLEET_GATEWAY_INFERENCE_URLS": f'["{closed}"]',
    }


async def hammer(urls: list[str]) -> tuple[list[int], list[dict[str, Any]]]:
    """``CREATES`` key creations per gateway, ``IN_FLIGHT`` at once, with verifies between."""
    statuses: list[int] = []
    verifies: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(f"{urls[0]}/admin/tenants", json={"id": "acme"}, headers=ADMIN)
        assert r.status_code == 201, r.text

        async def create(url: str, sem: asyncio.Semaphore) -> None:
            async with sem:
                body = {"tenant": "acme", "role": "app"}
                r = await http.post(f"{url}/admin/keys", json=body, headers=ADMIN)
                statuses.append(r.status_code)

        async def verify_meanwhile(url: str, done: asyncio.Event) -> None:
            while not done.is_set():
                r = await http.get(f"{url}/admin/audit/verify", headers=ADMIN)
                verifies.append(r.json())
                await asyncio.sleep(0.05)

        done = asyncio.Event()
        watchers = [asyncio.create_task(verify_meanwhile(u, done)) for u in urls]
        sems = {u: asyncio.Semaphore(IN_FLIGHT) for u in urls}
        await asyncio.gather(*(create(u, sems[u]) for _ in range(CREATES) for u in urls))
        done.set()
        await asyncio.gather(*watchers)
        for u in urls:
            verifies.append((await http.get(f"{u}/admin/audit/verify", headers=ADMIN)).json())
    return statuses, verifies


def forks(pg_url: str) -> tuple[int, int]:
    """(rows, prev hashes that more than one row chains from)."""
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM audit_log").fetchone()
        shared = conn.execute(
            "SELECT count(*) FROM (SELECT prev_hash FROM audit_log GROUP BY prev_hash"
            " HAVING count(*) > 1) AS f"
        ).fetchone()
    assert rows is not None and shared is not None
    return int(rows[0]), int(shared[0])


def test_two_gateways_keep_one_valid_chain(tmp_path: Path, postgres: Any) -> None:
    url = postgres.create_database()
    with ExitStack() as stack:
        gws: list[ServiceProcess] = []
        for name in ("gw1", "gw2"):  # one after the other: the first runs the migrations
            (tmp_path / name).mkdir()
            gw = stack.enter_context(
                service(
                    name, "gateway", tmp_path / name, gateway_env(url), "TUNEFLEET_GATEWAY_PORT"
                )
            )
            gw.wait_ready(120, probe="/healthz")
            gws.append(gw)
        statuses, verifies = asyncio.run(hammer([g.url for g in gws]))
    rows, forked = forks(url)
    invalid = [v for v in verifies if not v.get("valid")]
    print(
        json.dumps(
            {
                "creates": len(statuses),
                "created": statuses.count(201),
                "audit_rows": rows,
                "forked_prev_hashes": forked,
                "verifies": len(verifies),
                "invalid_verifies": len(invalid),
                "first_invalid": invalid[:1],
            }
        )
    )
    assert statuses.count(201) == 2 * CREATES, sorted(set(statuses))
    assert forked == 0
    assert not invalid, invalid[:3]
    assert verifies[-1]["checked"] == rows == 2 * CREATES + 2  # + bootstrap key, tenant
