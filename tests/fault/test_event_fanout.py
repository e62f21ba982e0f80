"""Alias moves and deletions reach every replica and every gateway (issue 16, item 3).

A registry, 2 inference replicas and 2 gateways run as processes on loopback. The registry
has **no** ``notify_urls``: every replica and gateway learns of changes by following the
registry's change feed (``GET /v1/internal/events``, ``shared.events_follower``). The replicas
are the real inference app with ``DigestEngine`` in place of vLLM (two vLLM engines do not fit
this 2-core box): every answer is the digest of the adapter weights that served it.

Under a steady load through both gateways, ``production`` moves from v1 to v2: within 1 s of
the move no answer comes from v1 (the gateways' resolve TTL is 300 s, so only the feed can do
it) and no request fails. Then the adapter is deleted and both replicas unload it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.adapters import make_adapter, pack
from tests.support.digest_engine import weights_digest
from tests.support.procs import ServiceProcess, service

TOKEN = "fanout-test-token"
ADMIN_KEY = "tf-admin-fanout-key"
INTERNAL = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "acme"}
WORKERS_PER_GATEWAY = 3
BEFORE_S, AFTER_S = 3.0, 4.0
MAX_STALE_S = 1.0


@dataclass
class Fleet:
    registry: ServiceProcess
    replicas: list[ServiceProcess]
    gateways: list[ServiceProcess]


@pytest.fixture
def fleet(tmp_path: Path, model_dir: Path) -> Iterator[Fleet]:
    common = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN, "TUNEFLEET_LOG_LEVEL": "WARNING"}
    for name in ("reg", "i0", "i1", "g0", "g1"):
        (tmp_path / name).mkdir()
    with ExitStack() as stack:
        reg = stack.enter_context(
            service(
                "registry",
                "services.registry",
                tmp_path / "reg",
                common | {"TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)},
                "TUNEFLEET_REGISTRY_PORT",
            )
        )
        reg.wait_ready(120)
        replicas = [
            stack.enter_context(
                service(
                    name,
                    "tests.support.digest_replica",
                    tmp_path / name,
                    common
                    | {
                        "TUNEFLEET_INFERENCE_REPLICA_ID": name,
                        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
                        "TUNEFLEET_INFERENCE_REGISTRY_URL": reg.url,
                        "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
                        "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
                        "TUNEFLEET_INFERENCE_DRAIN_TIMEOUT_S": "2",
                    },
                    "TUNEFLEET_INFERENCE_PORT",
                )
            )
            for name in ("i0", "i1")
        ]
        for r in replicas:
            r.wait_ready(180)
        gw_env = common | {
            "TUNEFLEET_GATEWAY_REGISTRY_URL": reg.url,
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([r.url for r in replicas]),
            "TUNEFLEET_GATEWAY_TRAINING_URL": reg.url + "/no-training",
            "TUNEFLEET_GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateways.db'}",
            "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
            "TUNEFLEET_GATEWAY_KEY_HASH_SECRET": "fanout-key-hash-secret",
            "TUNEFLEET_GATEWAY_RESOLVE_TTL_S": "300",
            "TUNEFLEET_GATEWAY_DEFAULT_RPM": "1000000",
            "TUNEFLEET_GATEWAY_DEFAULT_TPM": "100000000",
        }
        gateways = []
        for name in ("g0", "g1"):  # one after the other: they share one database
            gw = stack.enter_context(
                service(name, "gateway", tmp_path / name, gw_env, "TUNEFLEET_GATEWAY_PORT")
            )
            gw.wait_ready(120)
            gateways.append(gw)
        yield Fleet(reg, replicas, gateways)


def _setup(fleet: Fleet, tmp_path: Path, model_dir: Path) -> tuple[str, dict[int, str]]:
    """Tenant key (through g0), v1 and v2 pushed, production -> v1; the key and digests."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    g0 = fleet.gateways[0].url
    assert httpx.post(f"{g0}/admin/tenants", json={"id": "acme"}, headers=admin).is_success
    r = httpx.post(f"{g0}/admin/keys", json={"tenant": "acme", "role": "app"}, headers=admin)
    assert r.status_code == 201, r.text
    key = str(r.json()["key"])
    digests = {}
    for version, seed in ((1, 1), (2, 2)):
        adapter = make_adapter(model_dir, tmp_path / f"v{version}", r=4, seed=seed)
        digests[version] = weights_digest(adapter)
        with pack(adapter, tmp_path / f"v{version}.tar.gz").open("rb") as fh:
            r = httpx.post(
                f"{fleet.registry.url}/v1/adapters/a/versions",
                headers=INTERNAL,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model":"tiny-llama"}'},
                timeout=60,
            )
        assert r.status_code == 201 and r.json()["version"] == version, r.text
    _move(fleet, 1)
    return key, digests


def _move(fleet: Fleet, version: int) -> None:
    r = httpx.put(
        f"{fleet.registry.url}/v1/adapters/a/aliases/production",
        json={"version": version},
        headers=INTERNAL,
    )
    assert r.status_code == 200, r.text


@dataclass
class Answer:
    sent: float
    received: float
    gateway: int
    status: int
    text: str


async def _load(
    fleet: Fleet, key: str, stop: asyncio.Event, answers: list[Answer], gateway: int
) -> None:
    body = {"model": "a", "prompt": "Hi", "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=fleet.gateways[gateway].url, timeout=30) as http:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = await http.post("/v1/completions", json=body, headers=headers)
                status, text = (
                    r.status_code,
                    (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text),
                )
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            answers.append(Answer(sent, time.monotonic(), gateway, status, text))


async def _run_load(fleet: Fleet, key: str) -> tuple[list[Answer], float, float]:
    answers: list[Answer] = []
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(_load(fleet, key, stop, answers, g))
        for g in (0, 1)
        for _ in range(WORKERS_PER_GATEWAY)
    ]
    await asyncio.sleep(BEFORE_S)
    moved = time.monotonic()  # before the PUT is sent: the strict reference
    await asyncio.to_thread(_move, fleet, 2)
    move_call_s = time.monotonic() - moved
    await asyncio.sleep(AFTER_S)
    stop.set()
    await asyncio.gather(*workers)
    return answers, moved, move_call_s


def test_alias_move_reaches_every_gateway_and_replica_under_load(
    fleet: Fleet, tmp_path: Path, model_dir: Path
) -> None:
    key, digests = _setup(fleet, tmp_path, model_dir)
    answers, moved, move_call_s = asyncio.run(_run_load(fleet, key))

    failed = [a for a in answers if a.status != 200]
    old = [a for a in answers if a.status == 200 and a.text == digests[1]]
    new = [a for a in answers if a.status == 200 and a.text == digests[2]]
    assert not failed, failed[:5]
    assert len(old) + len(new) == len(answers), {a.text for a in answers}
    stale = max((a.received - moved for a in old), default=0.0)
    first_new = {
        g: min((a.received - moved for a in new if a.gateway == g), default=float("inf"))
        for g in (0, 1)
    }
    report = {
        "requests": len(answers),
        "rate_per_s": round(len(answers) / (BEFORE_S + AFTER_S), 1),
        "failed": len(failed),
        "move_call_s": round(move_call_s, 3),
        "last_old_answer_after_move_s": round(stale, 3),
        "first_new_answer_per_gateway_s": {g: round(t, 3) for g, t in first_new.items()},
        "old_answers_sent_after_move": sum(a.sent > moved for a in old),
    }
    print("\nFANOUT", json.dumps(report))
    (tmp_path / "fanout.json").write_text(json.dumps(report))
    assert stale <= MAX_STALE_S, report
    assert all(a.text == digests[2] for a in answers if a.sent > moved + MAX_STALE_S)
    assert {a.gateway for a in old} == {0, 1} and {a.gateway for a in new} == {0, 1}

    # a deletion reaches both replicas: each unloads the adapter's weights
    r = httpx.delete(f"{fleet.registry.url}/v1/adapters/a/aliases/production", headers=INTERNAL)
    assert r.status_code in (200, 204), r.text
    r = httpx.delete(f"{fleet.registry.url}/v1/adapters/a", headers=INTERNAL)
    assert r.status_code == 200, r.text
    deleted = time.monotonic()
    pending = set(range(len(fleet.replicas)))
    while pending and time.monotonic() - deleted < 5:
        for i in list(pending):
            r = httpx.get(f"{fleet.replicas[i].url}/admin/adapters", headers=INTERNAL)
            if r.status_code == 200 and not r.json()["data"]:
                pending.discard(i)
        time.sleep(0.05)
    assert not pending, "a replica still holds the deleted adapter"
    print("FANOUT delete reached both replicas in", round(time.monotonic() - deleted, 3), "s")
