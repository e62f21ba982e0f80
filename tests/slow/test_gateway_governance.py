"""The gateway's governance features end to end (in-process apps, real vLLM, real registry):
idempotent creates, quotas, model resolution with alias webhooks, streamed usage, body limits,
integrations, feedback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.slow.test_gateway import auth, make_key, onboard, push_and_promote, sdk
from tests.support.adapters import make_adapter, pack
from tests.support.fleet import ADMIN_KEY, Fleet, fleet

pytestmark = [pytest.mark.slow]
ADMIN = auth(ADMIN_KEY)


@pytest.fixture(scope="module")
def archives(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gw-gov")
    return [
        pack(make_adapter(model_dir, root / f"a{i}", seed=10 + i), root / f"a{i}.tar.gz")
        for i in range(2)
    ]


@pytest.fixture
async def f(tmp_path: Path, model_dir: Path, vllm_engine: object) -> AsyncIterator[Fleet]:
    async with fleet(tmp_path, model_dir, vllm_engine) as fl:
        yield fl


async def test_idempotency_key_replays_and_conflicts(f: Fleet, archives: list[Path]) -> None:
    keys = await onboard(f, "acme")
    h = {**auth(keys["integrator"]), "Idempotency-Key": "create-1"}
    first = await f.gateway.post("/v1/adapters", json={"name": "idem"}, headers=h)
    again = await f.gateway.post("/v1/adapters", json={"name": "idem"}, headers=h)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = await f.gateway.post("/v1/adapters", json={"name": "idem2"}, headers=h)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    listed = await f.gateway.get("/v1/adapters", headers=auth(keys["integrator"]))
    assert [a["name"] for a in listed.json()["data"]] == ["idem"]
    # multipart: each attempt has its own random boundary, still the same request
    h2 = {**auth(keys["integrator"]), "Idempotency-Key": "push-1"}
    answers = []
    for _ in range(2):
        with archives[0].open("rb") as fh:
            answers.append(
                await f.gateway.post(
                    "/v1/adapters/idem/versions",
                    headers=h2,
                    files={"file": ("a.tar.gz", fh)},
                    data={"metadata": '{"base_model": "tiny-llama"}'},
                )
            )
    assert [r.status_code for r in answers] == [201, 201], answers[0].text
    assert answers[0].json() == answers[1].json()
    versions = await f.gateway.get("/v1/adapters/idem/versions", headers=h)
    assert len(versions.json()["data"]) == 1
    # the same key in another tenant is another key
    globex = await onboard(f, "globex")
    r = await f.gateway.post(
        "/v1/adapters",
        json={"name": "idem"},
        headers={**auth(globex["integrator"]), "Idempotency-Key": "create-1"},
    )
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    # admin creates: a retried key creation returns the same key record, not a second key;
    # the secret itself is shown once and never stored for replays (issue 18, item 7)
    ha = {**ADMIN, "Idempotency-Key": "key-1"}
    k1 = await f.gateway.post("/admin/keys", json={"tenant": "acme", "role": "app"}, headers=ha)
    k2 = await f.gateway.post("/admin/keys", json={"tenant": "acme", "role": "app"}, headers=ha)
    assert k1.status_code == k2.status_code == 201 and k1.json()["id"] == k2.json()["id"]
    assert k1.json()["key"] and k2.json()["key"] is None
    # an error answer is replayed too (nothing was created the first time either)
    hb = {**ADMIN, "Idempotency-Key": "dup-tenant"}
    d1 = await f.gateway.post("/admin/tenants", json={"id": "acme"}, headers=hb)
    d2 = await f.gateway.post("/admin/tenants", json={"id": "acme"}, headers=hb)
    assert d1.status_code == d2.status_code == 409
    r = await f.gateway.post(
        "/v1/adapters", json={"name": "x"}, headers={**h, "Idempotency-Key": "x" * 300}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"


async def test_quotas_tokens_adapters_and_admin(f: Fleet, archives: list[Path]) -> None:
    keys = await onboard(f, "quota")
    r = await f.gateway.put("/admin/quotas", json={"tenant": "quota", "tpm": 5}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["effective"]["tpm"] == 5, r.text
    body = {"model": "tiny-llama", "prompt": "Order status please", "max_tokens": 4}
    ok = await f.gateway.post("/v1/completions", json=body, headers=auth(keys["app"]))
    assert ok.status_code == 200 and ok.json()["usage"]["total_tokens"] > 5
    over = await f.gateway.post("/v1/completions", json=body, headers=auth(keys["app"]))
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    assert over.json()["error"]["code"] == "tokens_rate_limit_exceeded"
    # per-key rpm: the key's own limit binds before the tenant's
    other_app = await make_key(f, "quota", "app")
    key_id = next(
        k["id"]
        for k in (await f.gateway.get("/admin/keys?tenant=quota", headers=ADMIN)).json()["data"]
        if other_app.startswith(f"tf-{k['id'][4:]}")
    )
    await f.gateway.put("/admin/quotas", json={"tenant": "quota"}, headers=ADMIN)
    r = await f.gateway.put("/admin/quotas", json={"key_id": key_id, "rpm": 1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    codes = [
        (await f.gateway.post("/v1/completions", json=body, headers=auth(other_app))).status_code
        for _ in range(2)
    ]
    assert codes == [200, 429]
    # max adapters: a new adapter past the limit is refused, a new version is not
    await f.gateway.put("/admin/quotas", json={"tenant": "quota", "max_adapters": 1}, headers=ADMIN)
    integ = auth(keys["integrator"])
    assert (
        await f.gateway.post("/v1/adapters", json={"name": "one"}, headers=integ)
    ).status_code == 201
    r = await f.gateway.post("/v1/adapters", json={"name": "two"}, headers=integ)
    assert r.status_code == 429 and r.json()["error"]["code"] == "adapter_quota_exceeded"
    assert "retry-after" in r.headers
    with archives[0].open("rb") as fh:
        r = await f.gateway.post(
            "/v1/adapters/one/versions",
            headers=integ,
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    # reading and changing quotas: sre reads, only admin writes; bad bodies name the field
    listed = await f.gateway.get("/admin/quotas?tenant=quota", headers=auth(keys["sre"]))
    assert listed.status_code == 200
    scopes = {(q["scope"], q["subject"]) for q in listed.json()["data"]}
    assert scopes == {("tenant", "quota"), ("key", key_id)}
    assert listed.json()["defaults"]["max_jobs"] >= 1
    r = await f.gateway.put("/admin/quotas", json={"tenant": "quota"}, headers=auth(keys["sre"]))
    assert r.status_code == 403
    r = await f.gateway.get("/admin/quotas", headers=auth(keys["app"]))
    assert r.status_code == 403
    r = await f.gateway.put("/admin/quotas", json={"tenant": "quota", "rpm": 0}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "rpm"
    r = await f.gateway.put(
        "/admin/quotas", json={"tenant": "quota", "key_id": key_id}, headers=ADMIN
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "tenant"
    r = await f.gateway.put("/admin/quotas", json={"tenant": "nobody"}, headers=ADMIN)
    assert r.status_code == 404
    r = await f.gateway.put("/admin/quotas", json={"key_id": "key_nope"}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["param"] == "key_id"
    audit = (await f.gateway.get("/admin/audit?tenant=quota", headers=ADMIN)).json()["data"]
    assert any(e["action"] == "quota.set" for e in audit)


async def test_alias_webhook_reroutes_and_stream_usage(f: Fleet, archives: list[Path]) -> None:
    keys = await onboard(f, "acme")
    await push_and_promote(f, keys["integrator"], "router", archives[0])
    st = f.gateway_app.state.gateway
    client = sdk(f, keys["app"])
    msg = [{"role": "user", "content": "Invoice wrong"}]
    await asyncio.sleep(0.5)  # let the promotion's own webhook land first
    await client.chat.completions.create(model="router", messages=msg, max_tokens=2)
    assert st.resolver.cached("acme", "router").version == 1
    # a new version moves production: the registry's signed webhook drops the gateway's cache
    with archives[1].open("rb") as fh:
        r = await f.gateway.post(
            "/v1/adapters/router/versions",
            headers=auth(keys["integrator"]),
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 201
    r = await f.gateway.put(
        "/v1/adapters/router/aliases/production",
        json={"version": 2},
        headers=auth(keys["integrator"]),
    )
    assert r.status_code == 200
    for _ in range(100):
        if st.resolver.cached("acme", "router") is None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the alias webhook never reached the gateway")
    raw = await client.chat.completions.with_raw_response.create(
        model="router", messages=msg, max_tokens=2
    )
    assert raw.headers["x-tunefleet-adapter-version"] == "acme/router@v2"
    assert st.resolver.cached("acme", "router").ref == "acme/router@v2"
    # resolved once: the replica served the ref the gateway forwarded and holds no alias answer
    # of its own (nothing there could serve a moved alias stale)
    replica = f.inference_app.state.server.resolver
    assert all(res.alias is None for res in replica._cache.values()), replica._cache
    assert ("acme", "router@v2") in replica._cache
    r = await f.gateway.post("/internal/registry-events", json={"type": "alias.moved"})
    assert r.status_code == 401
    # streamed answers are accounted from the final usage chunk, which the client did not
    # ask for and does not see
    await st.usage.flush()
    before = await _tokens(f, "acme", "tiny-llama")
    stream = await client.chat.completions.create(
        model="tiny-llama", messages=msg, max_tokens=5, temperature=0, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    after = await _tokens(f, "acme", "tiny-llama")
    assert after["requests"] == before["requests"] + 1
    assert after["completion_tokens"] > before["completion_tokens"]
    stream = await client.chat.completions.create(
        model="tiny-llama",
        messages=msg,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def _tokens(f: Fleet, tenant: str, model: str) -> dict[str, int]:
    r = await f.gateway.get(f"/admin/usage?tenant={tenant}", headers=ADMIN)
    rows = [u for u in r.json()["data"] if u["model"] == model]
    return {
        "requests": sum(u["requests"] for u in rows),
        "completion_tokens": sum(u["completion_tokens"] for u in rows),
    }


async def test_body_limits(f: Fleet, archives: list[Path]) -> None:
    keys = await onboard(f, "acme")
    st = f.gateway_app.state.gateway
    st.settings.max_body_bytes = 2048
    st.settings.max_upload_bytes = 4096
    big = {"model": "tiny-llama", "prompt": "x" * 5000, "max_tokens": 1}
    r = await f.gateway.post("/v1/completions", json=big, headers=auth(keys["app"]))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    with archives[0].open("rb") as fh:
        r = await f.gateway.post(
            "/v1/adapters/big/versions",
            headers=auth(keys["integrator"]),
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 413
    r = await f.gateway.get("/v1/adapters", headers=auth(keys["integrator"]))
    assert r.json()["data"] == []  # nothing stored


TICKETS = [
    {"Id": "500A", "Subject": "Server down", "Description": "Production outage, all users"},
    {"Id": "500B", "Subject": "Typo", "Description": "Small typo on the help page"},
]
SPEC: dict[str, Any] = {
    "name": "sf-priority",
    "system": "salesforce",
    "task": "classification",
    "model": "tiny-llama",
    "input_mapping": {"subject": "$.Subject", "body": "$.Description"},
    "template": "Ticket: {subject}\n{body}\nPriority:",
    "output": {"field": "Priority__c", "labels": ["High", "Low"]},
}


async def test_integrations_invoke_test_and_isolation(f: Fleet) -> None:
    acme = await onboard(f, "acme")
    globex = await onboard(f, "globex")
    integ = auth(acme["integrator"])
    r = await f.gateway.post("/v1/integrations", json=SPEC, headers=integ)
    assert r.status_code == 201, r.text
    assert r.json()["system"] == "salesforce"
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/invoke",
        json={"record": TICKETS[0]},
        headers=auth(acme["app"]),
    )
    assert r.status_code == 200, r.text
    (one,) = r.json()["data"]
    assert set(one) == {"Id", "Priority__c"} and one["Id"] == "500A"
    assert one["Priority__c"] in ("High", "Low")
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/invoke", json={"records": TICKETS}, headers=auth(acme["app"])
    )
    assert [d["Id"] for d in r.json()["data"]] == ["500A", "500B"]
    # test: a pass/fail table against expected values; nothing stored
    audit_before = len(
        (await f.gateway.get("/admin/audit?limit=100", headers=ADMIN)).json()["data"]
    )
    samples = [
        {"record": TICKETS[0], "expected": one["Priority__c"]},
        {"record": TICKETS[1], "expected": "Neither"},
    ]
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/test", json={"samples": samples}, headers=integ
    )
    assert r.status_code == 200, r.text
    table = r.json()
    assert [row["pass"] for row in table["results"]] == [True, False]
    assert table["accuracy"] == 0.5 and table["total"] == 2 and table["results"][0]["id"] == "500A"
    audit_after = len((await f.gateway.get("/admin/audit?limit=100", headers=ADMIN)).json()["data"])
    assert audit_after == audit_before
    listed = await f.gateway.get("/v1/integrations", headers=integ)
    assert [i["name"] for i in listed.json()["data"]] == ["sf-priority"]
    # isolation and roles
    for method, path in (
        ("GET", "/v1/integrations/sf-priority"),
        ("POST", "/v1/integrations/sf-priority/invoke"),
        ("DELETE", "/v1/integrations/sf-priority"),
    ):
        r = await f.gateway.request(
            method, path, json={"record": TICKETS[0]}, headers=auth(globex["integrator"])
        )
        assert r.status_code == 404, (method, path)
    assert (await f.gateway.get("/v1/integrations", headers=auth(globex["integrator"]))).json()[
        "data"
    ] == []
    r = await f.gateway.post(
        "/v1/integrations", json={**SPEC, "name": "x"}, headers=auth(acme["app"])
    )
    assert r.status_code == 403
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/invoke",
        json={"record": TICKETS[0]},
        headers=auth(acme["sre"]),
    )
    assert r.status_code == 403
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/test", json={"samples": samples}, headers=auth(acme["app"])
    )
    assert r.status_code == 403
    # deletion
    r = await f.gateway.delete("/v1/integrations/sf-priority", headers=integ)
    assert r.status_code == 200
    assert (await f.gateway.get("/v1/integrations/sf-priority", headers=integ)).status_code == 404


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"system": "oracle"}, "system"),
        ({"task": "poetry"}, "task"),
        ({"name": "Bad Name"}, "name"),
        ({"model": "Not A Model"}, "model"),
        ({"template": "{subject} {missing}"}, "template"),
        ({"template": "{subject"}, "template"),
        ({"input_mapping": {"subject": "$.[[["}}, "input_mapping.subject"),
        ({"input_mapping": {"not-ident": "$.Subject"}, "template": "x"}, "input_mapping"),
        ({"output": {"field": "Priority__c"}}, "output.labels"),
        ({"output": {"labels": ["a"]}}, "output.field"),
    ],
)
async def test_integration_bad_definitions(f: Fleet, change: dict[str, Any], param: str) -> None:
    keys = await onboard(f, "acme")
    r = await f.gateway.post(
        "/v1/integrations", json={**SPEC, **change}, headers=auth(keys["integrator"])
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (await f.gateway.get("/v1/integrations", headers=auth(keys["integrator"]))).json()[
        "data"
    ] == []


async def test_integration_bad_records(f: Fleet) -> None:
    keys = await onboard(f, "acme")
    integ = auth(keys["integrator"])
    assert (await f.gateway.post("/v1/integrations", json=SPEC, headers=integ)).status_code == 201
    r = await f.gateway.post("/v1/integrations", json=SPEC, headers=integ)
    assert r.status_code == 409 and r.json()["error"]["param"] == "name"
    path = "/v1/integrations/sf-priority/invoke"
    cases = [
        ({"records": [TICKETS[0], {"Id": "1", "Subject": "x"}]}, "records[1].body"),
        ({"record": "text"}, "records[0]"),
        ({"records": []}, "records"),
        ({}, "record"),
        ({"record": TICKETS[0], "records": TICKETS}, "record"),
    ]
    for body, param in cases:
        r = await f.gateway.post(path, json=body, headers=integ)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = await f.gateway.post(
        "/v1/integrations/sf-priority/test",
        json={"samples": [{"record": TICKETS[0]}]},
        headers=integ,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "samples[0].expected"
    await f.gateway_app.state.gateway.usage.flush()
    r = await f.gateway.get("/admin/usage?tenant=acme", headers=ADMIN)
    assert r.json()["data"] == []  # a bad batch calls the model for no record


async def test_feedback_accuracy_metric(f: Fleet, archives: list[Path]) -> None:
    keys = await onboard(f, "acme")
    globex = await onboard(f, "globex")
    await push_and_promote(f, keys["integrator"], "support-router", archives[0])
    body = {
        "model": "support-router",
        "messages": [{"role": "user", "content": "Refund please"}],
        "max_tokens": 3,
        "choices_allowed": ["billing", "tech"],
    }
    answers = []
    for _ in range(2):
        r = await f.gateway.post("/v1/chat/completions", json=body, headers=auth(keys["app"]))
        assert r.status_code == 200, r.text
        answers.append((r.headers["x-request-id"], r.json()))
    (rid, first), (_, second) = answers
    predicted = first["choices"][0]["message"]["content"]
    # the second answer is sampled on its own (temperature 1): "wrong" is wrong for it
    wrong = "tech" if second["choices"][0]["message"]["content"] == "billing" else "billing"
    fb = await f.gateway.post(
        "/v1/feedback", json={"request_id": rid, "correct": predicted}, headers=auth(keys["app"])
    )
    assert fb.status_code == 200 and fb.json()["match"] is True
    assert fb.json()["adapter"] == "support-router@v1"
    fb = await f.gateway.post(  # by the completion id works too
        "/v1/feedback",
        json={"request_id": second["id"], "correct": wrong},
        headers=auth(keys["app"]),
    )
    assert fb.json()["match"] is False and fb.json()["accuracy"] == 0.5
    metrics = (await f.gateway.get("/metrics")).text
    labels = 'adapter="support-router@v1",tenant="acme"'
    assert f"tunefleet_gateway_feedback_accuracy{{{labels}}} 0.5" in metrics
    assert (
        'tunefleet_gateway_feedback_total{adapter="support-router@v1",outcome="wrong",'
        'tenant="acme"} 1.0' in metrics
    )
    r = await f.gateway.post(
        "/v1/feedback", json={"request_id": rid, "correct": "x"}, headers=auth(globex["app"])
    )
    assert r.status_code == 404  # another tenant's request is unknown
    r = await f.gateway.post("/v1/feedback", json={"correct": "x"}, headers=auth(keys["app"]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "request_id"
    r = await f.gateway.post(
        "/v1/feedback", json={"request_id": rid, "correct": "x"}, headers=auth(keys["sre"])
    )
    assert r.status_code == 403
    assert json.loads(fb.text)["count"] == 2
