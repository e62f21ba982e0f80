"""Integration templates cannot allocate gigabytes, and integration calls go through the
tenant's PII guard (issue 18, item 11).

Templates with format specs, conversions, attribute or index access are refused when
created (400 naming ``template``); one stored before the check existed is refused when
invoked instead of being rendered. A tenant whose PII policy is ``block`` gets 400
``pii_detected`` from ``/invoke`` and ``/test`` for a record with an e-mail address, before
any model call (the inference replica is not even running here).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway.domain.templates import render
from gateway.storage.tables import IntegrationRow
from shared.errors import InvalidRequest
from tests.security.test_operator_scope import BOOTSTRAP, gateway_app

ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


def spec(template: str) -> dict[str, object]:
    return {
        "name": "router",
        "system": "salesforce",
        "task": "classification",
        "model": "support-router",
        "input_mapping": {"subject": "$.Subject"},
        "template": template,
        "output": {"field": "Type", "labels": ["billing", "outage"]},
    }


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, str]]]:
    app = gateway_app(tmp_path)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
    ):
        assert (await http.post("/admin/tenants", json={"id": "acme"}, headers=ADMIN)).is_success
        r = await http.post(
            "/admin/keys", json={"tenant": "acme", "role": "integrator"}, headers=ADMIN
        )
        yield app, http, {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.mark.parametrize(
    "template",
    [
        "Ticket: {subject:>2000000000}",
        "Ticket: {subject:{subject}}",
        "Ticket: {subject!r}",
        "Ticket: {subject.__class__}",
        "Ticket: {subject[0]}",
        "Ticket: {subject:,}",
    ],
)
async def test_format_specs_are_refused_at_creation(
    gw: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], template: str
) -> None:
    _, http, key = gw
    r = await http.post("/v1/integrations", json=spec(template), headers=key)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "template"


async def test_plain_templates_still_work(
    gw: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    _, http, key = gw
    r = await http.post(
        "/v1/integrations", json=spec("Ticket {{#}}: {subject}\nType:"), headers=key
    )
    assert r.status_code == 201, r.text
    assert render("Ticket {{#}}: {subject}\nType:", {"subject": "{x:>9}"}) == (
        "Ticket {#}: {x:>9}\nType:"  # values are inserted as they are, never re-formatted
    )
    with pytest.raises(InvalidRequest):
        render("{subject:>2000000000}", {"subject": "x"})


async def test_a_stored_bad_template_is_refused_not_rendered(
    gw: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    app, http, key = gw
    with app.state.gateway.db.session(write=True) as s:  # as if created before the check
        s.add(
            IntegrationRow(
                tenant="acme",
                name="old",
                system="salesforce",
                task="classification",
                model="support-router",
                input_mapping={"subject": "$.Subject"},
                template="{subject:>2000000000}",
                output={"field": "Type", "labels": ["billing"]},
            )
        )
    t0 = time.perf_counter()
    r = await http.post(
        "/v1/integrations/old/invoke", json={"record": {"Subject": "x"}}, headers=key
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "template", r.text
    assert time.perf_counter() - t0 < 2


async def test_integration_calls_go_through_the_pii_guard(
    gw: tuple[FastAPI, httpx.AsyncClient, dict[str, str]],
) -> None:
    _, http, key = gw
    r = await http.patch("/admin/tenants/acme", json={"pii_mode": "block"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (await http.post("/v1/integrations", json=spec("{subject}"), headers=key)).is_success
    record = {"Id": "500x", "Subject": "Refund to alice.smith@example.com please"}
    r = await http.post("/v1/integrations/router/invoke", json={"record": record}, headers=key)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "pii_detected"
    r = await http.post(
        "/v1/integrations/router/test",
        json={"samples": [{"record": record, "expected": "billing"}]},
        headers=key,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "pii_detected", r.text
    # a clean record passes the guard and reaches the model call (no replica here: 503)
    clean = {"Id": "500y", "Subject": "My invoice is wrong"}
    r = await http.post("/v1/integrations/router/invoke", json={"record": clean}, headers=key)
    assert r.status_code == 503, r.text
