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


@pytest.fixture(autouse=True)
def allow_loopback_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers here listen on 127.0.0.1, which the SSRF guard refuses by default."""
    monkeypatch.setenv("TUNEFLEET_REGISTRY_WEBHOOK_ALLOW", '["127.0.0.1", "localhost"]')


def guard_delivery(registry: RegistryHarness, allow: list[str]) -> None:
    """Set the allow-list the dispatcher re-checks before each attempt.

    Until services/registry/app.py passes ``url_allow=settings.webhook_allow`` to the
    dispatcher, the tests hand it over themselves (the default, empty, refuses loopback).
    """
    registry.app.state.registry.dispatcher.url_allow = allow  # type: ignore[attr-defined]


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
    guard_delivery(registry, registry.app.state.registry.settings.webhook_allow)  # type: ignore[attr-defined]
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

        # The receiver holds the body before the dispatcher records the answer: poll the record.
        deliveries: list[dict[str, object]] = []
        for _ in range(200):
            got = await registry.http.get(f"/v1/webhooks/{hook['id']}/deliveries")
            deliveries = got.json()["data"]
            if len(deliveries) == 2 and {d["status"] for d in deliveries} == {"delivered"}:
                break
            await asyncio.sleep(0.05)
        assert {d["status"] for d in deliveries} == {"delivered"}
        # two failed attempts were retried
        assert sum(int(str(d["attempts"])) for d in deliveries) == 4

        other = registry.headers("globex")
        r = await registry.http.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=other)
        assert r.status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_webhook_url_validated(registry: RegistryHarness) -> None:
    r = await registry.http.post("/v1/webhooks", json={"url": "ftp://x", "events": ["alias.moved"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"
    r = await registry.http.post("/v1/webhooks", json={"url": "http://x", "events": ["nope"]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("events")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.7/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:8001/v1/adapters",
        "http://[::1]:8001/hook",
    ],
)
async def test_webhook_to_internal_address_refused_nothing_stored(
    registry: RegistryHarness, url: str
) -> None:
    r = await registry.http.post("/v1/webhooks", json={"url": url, "events": ["alias.moved"]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "url" and err["code"] == "url_not_allowed"
    assert (await registry.http.get("/v1/webhooks")).json()["data"] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_delivery_rechecks_the_address(
    registry: RegistryHarness,
    archive: Path,  # noqa: F811
) -> None:
    """Accepted at registration, refused at delivery once the destination is no longer
    allowed (what DNS rebinding does: the same name, now an internal address)."""
    guard_delivery(registry, [])
    with WebhookReceiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        r = await registry.http.post(
            "/v1/webhooks", json={"url": url, "events": ["version.created"]}
        )
        assert r.status_code == 201, r.text
        await push(registry, "rebound", archive)

        hook_id = r.json()["id"]
        deliveries: list[dict[str, object]] = []
        for _ in range(200):
            got = await registry.http.get(f"/v1/webhooks/{hook_id}/deliveries")
            deliveries = got.json()["data"]
            if deliveries and int(str(deliveries[0]["attempts"])) >= 1:
                break
            await asyncio.sleep(0.05)
        assert deliveries and str(deliveries[0]["last_error"]).startswith("refused:")
        assert "loopback" in str(deliveries[0]["last_error"])
        assert receiver.received == []
