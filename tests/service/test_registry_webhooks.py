"""Webhooks: signed deliveries to a real local HTTP receiver, retried with backoff, recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shared import signing
from tests.conftest import RegistryHarness
from tests.service.test_registry_api import adapter_dir, archive, push  # noqa: F401 (fixtures)
from tests.support.receiver import WebhookReceiver


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_alias_move_and_version_events_are_signed_and_retried(
    registry: RegistryHarness,
    archive: Path,  # noqa: F811
) -> None:
    with WebhookReceiver(fail_first=2) as receiver:
        r = await registry.http.post(
            "/v1/webhooks", json={"url": receiver.url, "events": ["alias.moved", "version.created"]}
        )
        assert r.status_code == 201
        hook = r.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_")
        listed = (await registry.http.get("/v1/webhooks")).json()["data"]
        assert listed[0]["secret"] is None  # shown once only

        await push(registry, "hooked", archive)
        await registry.http.put("/v1/adapters/hooked/aliases/production", json={"version": 1})
        await wait_for(lambda: len(receiver.received) >= 2)

        events = {}
        for headers, body in receiver.received:
            assert signing.verify(secret, body, headers["x-tunefleet-signature"])
            assert not signing.verify("wrong-secret", body, headers["x-tunefleet-signature"])
            payload = json.loads(body)
            events[payload["type"]] = payload
        assert events["alias.moved"]["data"]["ref"] == "acme/hooked@v1"
        assert events["alias.moved"]["tenant"] == "acme"
        assert events["version.created"]["data"]["version"] == 1

        deliveries = (await registry.http.get(f"/v1/webhooks/{hook['id']}/deliveries")).json()[
            "data"
        ]
        assert {d["status"] for d in deliveries} == {"delivered"}
        assert sum(d["attempts"] for d in deliveries) == 4  # two failed attempts were retried

        other = registry.headers("globex")
        r = await registry.http.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=other)
        assert r.status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_webhook_url_validated(registry: RegistryHarness) -> None:
    r = await registry.http.post("/v1/webhooks", json={"url": "ftp://x", "events": ["alias.moved"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"
    r = await registry.http.post("/v1/webhooks", json={"url": "http://x", "events": ["nope"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("events")
