"""No blocking call on the gateway's event loop (issue 19, item 3).

The gateway runs as a real process (``python -m gateway``) in asyncio debug mode
(``PYTHONASYNCIODEBUG=1``) with ``TUNEFLEET_GATEWAY_SLOW_CALLBACK_MS=50``: every event-loop
callback that holds the loop longer than 50 ms is logged as ``Executing <...> took N
seconds``, and ``shared.loopwatch`` logs the loop thread's stack at each such stall
(``event_loop_blocked``). Concurrent clients drive every kind of route (admin reads and
writes, the audit chain walk, quotas, integrations, registry pass-through, idempotent
creates, routes whose downstream is down). A registry process answers the registry routes;
training and inference are absent (their routes answer 503 fast).

What fails the test: a slow callback whose stall the loop thread spent in a blocking call
(database, file, sleep: ``BLOCKING``). On the shared 2-core box (load 8-10 from other
work) the loop also stalls > 50 ms for reasons that are not the gateway's code: the OS
runs other processes, the GIL is with a worker thread, a GC pass, or asyncio debug mode's
own stack capture (``linecache.checkcache``); those are printed, counted, and fail only
with ``TUNEFLEET_STRICT_LOOP=1`` (for a machine with cores to spare).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import registry_and_gateway

TOKEN = "loop-test-token"
BOOTSTRAP = "tf-bootstrap-loop-test"
SLOW_MS = 50
SLOW = re.compile(r"Executing (.{0,300}?) took (\d+\.\d+) seconds")
# Frames that mean the loop thread itself waited on I/O or slept.
BLOCKING = re.compile(
    r"sqlalchemy/engine/|sqlalchemy/orm/session\.py|sqlalchemy/pool/|/sqlite3/|psycopg"
    r"|/shared/db\.py|/shared/blobstore\.py|in (read_bytes|write_bytes|read_text)$"
)
CLIENTS = 16
ROUNDS = 6


def _slow_callbacks(log: str) -> list[str]:
    found = []
    for line in log.splitlines():
        m = SLOW.search(line)
        if m and float(m.group(2)) * 1000 > SLOW_MS:
            found.append(f"{float(m.group(2)) * 1000:.0f} ms: {m.group(1)[:200]}")
    return found


def _blocked_stacks(log: str) -> list[str]:
    """``event_loop_blocked`` reports whose loop-thread stack is in a blocking call."""
    found = []
    for line in log.splitlines():
        if '"event_loop_blocked"' not in line:
            continue
        entry = json.loads(line)
        frames = [f.strip() for f in entry.get("stack", "").splitlines() if "File " in f]
        if any(BLOCKING.search(f) for f in frames):
            found.append(f"{entry['stalled_ms']} ms:\n  " + "\n  ".join(frames[-8:]))
    return found


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


INTEGRATION = {
    "system": "generic",
    "task": "classification",
    "model": "router@production",
    "input_mapping": {"text": "$.text"},
    "template": "Route: {text}",
    "output": {"field": "queue", "labels": ["billing", "tech"]},
}


async def _client_round(
    http: httpx.AsyncClient, admin: dict[str, str], app: dict[str, str], n: int, r: int
) -> list[int]:
    """One client's requests across the routes; returns the statuses."""
    tenant = f"t{n}"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", f"/admin/tenants/{tenant}", {"json": {"pii_mode": "mask" if r % 2 else "off"}}),
        ("POST", "/admin/keys", {"json": {"tenant": tenant, "role": "app", "name": f"k{r}"}}),
        ("GET", "/admin/tenants", {}),
        ("GET", "/admin/keys", {"params": {"tenant": tenant}}),
        ("GET", "/admin/usage", {}),
        ("GET", "/admin/audit", {"params": {"limit": 100}}),
        ("GET", "/admin/audit/verify", {}),
        ("PUT", "/admin/quotas", {"json": {"tenant": tenant, "rpm": 1000 + r}}),
        ("GET", "/admin/quotas", {}),
        ("GET", f"/admin/retention/{tenant}", {}),
        ("GET", "/v1/base-models", {"headers": app}),
        ("GET", "/v1/adapters", {"headers": app}),
        ("GET", "/v1/files", {"headers": app}),
        (
            "POST",
            "/v1/integrations",
            {
                "headers": app | {"Idempotency-Key": f"i{n}-{r}"},
                "json": INTEGRATION | {"name": f"i{n}-{r}"},
            },
        ),
        ("GET", "/v1/integrations", {"headers": app}),
        ("GET", f"/v1/integrations/i{n}-{r}", {"headers": app}),
        ("DELETE", f"/v1/integrations/i{n}-{r}", {"headers": app}),
        ("POST", "/v1/feedback", {"headers": app, "json": {"request_id": "nope", "correct": "x"}}),
    ]
    statuses = []
    for method, path, kw in calls:
        headers = kw.pop("headers", admin)
        resp = await http.request(method, path, headers=headers, **kw)
        statuses.append(resp.status_code)
    return statuses


async def _load(url: str) -> list[int]:
    admin = _bearer(BOOTSTRAP)
    # idle connections are dropped before the server's keep-alive timeout (5 s) closes them
    limits = httpx.Limits(keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        for n in range(CLIENTS):
            r = await http.post("/admin/tenants", json={"id": f"t{n}"}, headers=admin)
            assert r.status_code == 201, r.text
        r = await http.post("/admin/keys", json={"tenant": "t0", "role": "admin"}, headers=admin)
        key = _bearer(r.json()["key"])  # a tenant admin: integrator rights and more
        # A long audit chain, so that walking it (GET /admin/audit/verify) takes a while.
        for _ in range(10):
            await asyncio.gather(
                *(
                    http.patch(f"/admin/tenants/t{n}", json={"pii_mode": "off"}, headers=admin)
                    for n in range(CLIENTS)
                    for _ in range(5)
                )
            )
        statuses: list[int] = []
        for r_ in range(ROUNDS):
            rounds = await asyncio.gather(
                *(_client_round(http, admin, key, n, r_) for n in range(CLIENTS))
            )
            for s in rounds:
                statuses.extend(s)
        return statuses


def test_no_slow_callbacks_on_the_gateway_loop_under_load(tmp_path: Path, model_dir: Path) -> None:
    gw_env = {
        "PYTHONASYNCIODEBUG": "1",
        "TUNEFLEET_GATEWAY_SLOW_CALLBACK_MS": str(SLOW_MS),
        "TUNEFLEET_ADMIN_KEY": BOOTSTRAP,
    }
    with registry_and_gateway(tmp_path, model_dir, TOKEN, gw_env) as (_, gw):
        # The box is shared (load well above its cores): give the gateway's threads
        # the CPU first, so a callback is slow because of what it does on the loop, not
        # because the scheduler ran someone else's test meanwhile.
        for tid in os.listdir(f"/proc/{gw.proc.pid}/task"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(tid), -10)
        started = len(gw.log_text())  # startup (migrations, imports) is not under test
        t0 = time.monotonic()
        statuses = asyncio.run(_load(gw.url))
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        log = gw.log_text()
    assert re.search(r'"slow_callback_ms": 50(\.0)?[,}]', log[:started]), log[:2000]
    served = [s for s in statuses if s < 500]
    assert len(statuses) == CLIENTS * ROUNDS * 18
    assert set(statuses) <= {200, 201, 404, 503}, sorted(set(statuses))
    assert len(served) > len(statuses) * 0.7, sorted(set(statuses))
    slow = _slow_callbacks(log[started:])
    blocked = _blocked_stacks(log[started:])
    print(
        json.dumps(
            {
                "requests": len(statuses),
                "seconds": round(elapsed, 1),
                "slow_callbacks": len(slow),
                "blocking_stalls": len(blocked),
                "load_avg": os.getloadavg(),
            }
        )
    )
    assert slow or not blocked, "loopwatch saw stalls asyncio did not: debug mode is off?"
    assert not blocked, (
        f"the event loop was blocked > {SLOW_MS} ms in a blocking call:\n" + "\n".join(blocked)
    )
    if os.environ.get("TUNEFLEET_STRICT_LOOP") == "1":
        assert not slow, f"callbacks held the event loop > {SLOW_MS} ms:\n" + "\n".join(slow)
