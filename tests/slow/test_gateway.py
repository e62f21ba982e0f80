"""The gateway end to end (in-process apps, real vLLM, real registry), driven by the official
openai SDK as a customer would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import text

from tests.support.adapters import make_adapter, pack
from tests.support.fleet import ADMIN_KEY, Fleet, fleet

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def archive(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gw-adapter")
    return pack(make_adapter(model_dir, root / "a", seed=5), root / "a.tar.gz")


@pytest.fixture
async def f(tmp_path: Path, model_dir: Path, vllm_engine: object) -> AsyncIterator[Fleet]:
    async with fleet(tmp_path, model_dir, vllm_engine) as fl:
        yield fl


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_key(f: Fleet, tenant: str, role: str) -> str:
    r = await f.gateway.post(
        "/admin/keys", json={"tenant": tenant, "role": role}, headers=auth(ADMIN_KEY)
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def onboard(f: Fleet, tenant: str) -> dict[str, str]:
    r = await f.gateway.post("/admin/tenants", json={"id": tenant}, headers=auth(ADMIN_KEY))
    assert r.status_code == 201, r.text
    return {role: await make_key(f, tenant, role) for role in ("app", "integrator", "sre")}


def sdk(f: Fleet, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=f.gateway_app)),
    )


async def push_and_promote(f: Fleet, key: str, name: str, archive: Path) -> None:
    with archive.open("rb") as fh:
        r = await f.gateway.post(
            f"/v1/adapters/{name}/versions",
            headers=auth(key),
            files={"file": ("a.tar.gz", fh)},
            data={"metadata": '{"base_model": "tiny-llama"}'},
        )
    assert r.status_code == 201, r.text
    r = await f.gateway.put(
        f"/v1/adapters/{name}/aliases/production", json={"version": 1}, headers=auth(key)
    )
    assert r.status_code == 200, r.text


async def test_openai_sdk_end_to_end(f: Fleet, archive: Path) -> None:
    keys = await onboard(f, "acme")
    await push_and_promote(f, keys["integrator"], "support-router", archive)
    client = sdk(f, keys["app"])
    ids = [m.id async for m in client.models.list()]
    assert "tiny-llama" in ids and "support-router" in ids
    chat = await client.chat.completions.create(
        model="support-router",
        messages=[{"role": "user", "content": "Invoice wrong"}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.choices[0].message.content and chat.usage and chat.usage.completion_tokens > 0
    raw = await client.chat.completions.with_raw_response.create(
        model="support-router", messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert raw.headers["x-tunefleet-adapter-version"] == "acme/support-router@v1"
    assert raw.headers["x-request-id"]
    stream = await client.chat.completions.create(
        model="support-router",
        messages=[{"role": "user", "content": "Invoice wrong"}],
        max_tokens=6,
        temperature=0,
        stream=True,
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == chat.choices[0].message.content
    done = await client.completions.create(
        model="tiny-llama",
        prompt="Order",
        max_tokens=4,
        extra_body={"choices_allowed": ["yes", "no"]},
    )
    assert done.choices[0].text in ("yes", "no")
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    # usage is accounted per tenant/key/model/day
    r = await f.gateway.get("/admin/usage?tenant=acme", headers=auth(ADMIN_KEY))
    by_model = {u["model"]: u for u in r.json()["data"]}
    assert by_model["support-router"]["requests"] >= 3
    assert by_model["support-router"]["completion_tokens"] >= chat.usage.completion_tokens
    r = await f.gateway.get("/admin/usage?from=yesterday", headers=auth(ADMIN_KEY))
    assert r.status_code == 400 and r.json()["error"]["param"] == "from"
    r = await f.gateway.get("/admin/usage", headers=auth(keys["app"]))
    assert r.status_code == 403


async def test_roles_tenants_and_revocation(f: Fleet, archive: Path) -> None:
    acme = await onboard(f, "acme")
    globex = await onboard(f, "globex")
    await push_and_promote(f, acme["integrator"], "secret", archive)
    # roles: 403
    r = await f.gateway.post("/v1/adapters", json={"name": "x"}, headers=auth(acme["app"]))
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = await f.gateway.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": "x"}, headers=auth(acme["sre"])
    )
    assert r.status_code == 403
    r = await f.gateway.post(
        "/admin/keys", json={"tenant": "acme", "role": "admin"}, headers=auth(acme["integrator"])
    )
    assert r.status_code == 403
    # tenants: 404, never 403
    for path in ("/v1/adapters/secret", "/v1/adapters/secret/versions/1"):
        r = await f.gateway.get(path, headers=auth(globex["integrator"]))
        assert r.status_code == 404, path
    r = await f.gateway.post(
        "/v1/completions", json={"model": "secret", "prompt": "x"}, headers=auth(globex["app"])
    )
    assert r.status_code == 404
    # bad and revoked keys: 401
    assert (await f.gateway.get("/v1/models")).status_code == 401
    assert (await f.gateway.get("/v1/models", headers=auth("tf-nope"))).status_code == 401
    keys = (await f.gateway.get("/admin/keys?tenant=acme", headers=auth(ADMIN_KEY))).json()
    app_key = next(k for k in keys["data"] if k["role"] == "app")
    assert "hash" not in app_key and acme["app"] not in str(keys)
    r = await f.gateway.delete(f"/admin/keys/{app_key['id']}", headers=auth(ADMIN_KEY))
    assert r.status_code == 200
    assert (await f.gateway.get("/v1/models", headers=auth(acme["app"]))).status_code == 401


async def test_audit_chain_detects_tampering(f: Fleet, archive: Path) -> None:
    keys = await onboard(f, "acme")
    await push_and_promote(f, keys["integrator"], "audited", archive)
    entries = (await f.gateway.get("/admin/audit", headers=auth(ADMIN_KEY))).json()["data"]
    actions = [e["action"] for e in entries]
    assert "put /v1/adapters/{name}/aliases/{alias}" in actions and "key.create" in actions
    ok = (await f.gateway.get("/admin/audit/verify", headers=auth(ADMIN_KEY))).json()
    assert ok["valid"] is True and ok["checked"] == len(entries)
    with f.gateway_app.state.gateway.db.session() as s:
        s.execute(text("UPDATE audit_log SET actor='mallory' WHERE id=2"))
    bad = (await f.gateway.get("/admin/audit/verify", headers=auth(ADMIN_KEY))).json()
    assert bad == {**bad, "valid": False, "first_bad_id": 2}


async def test_rate_limit_is_429_with_retry_after(f: Fleet) -> None:
    keys = await onboard(f, "tiny")
    st = f.gateway_app.state.gateway
    st.settings.default_rpm = 2
    body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 1}
    codes = [
        (await f.gateway.post("/v1/completions", json=body, headers=auth(keys["app"])))
        for _ in range(3)
    ]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1
    assert codes[2].json()["error"]["type"] == "rate_limit_error"


async def test_bad_bodies(f: Fleet) -> None:
    keys = await onboard(f, "acme")
    h = {**auth(keys["app"]), "Content-Type": "application/json"}
    r = await f.gateway.post("/v1/completions", content=b"{nope", headers=h)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = await f.gateway.post("/v1/completions", content=b'{"prompt": "x"}', headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = await f.gateway.post("/admin/tenants", json={"id": "Bad Tenant"}, headers=auth(ADMIN_KEY))
    assert r.status_code == 400 and r.json()["error"]["param"] == "id"


async def test_pii_guard_mask_and_block(f: Fleet) -> None:
    keys = await onboard(f, "acme")
    body = {
        "model": "tiny-llama",
        "max_tokens": 2,
        "messages": [
            {
                "role": "user",
                "content": "Mail jane.doe@example.com or call "
                "+1 201 555 0123 about card 4111 1111 1111 1111",
            }
        ],
    }
    admin = auth(ADMIN_KEY)
    r = await f.gateway.patch("/admin/tenants/acme", json={"pii_mode": "block"}, headers=admin)
    assert r.status_code == 200 and r.json()["pii_mode"] == "block"
    r = await f.gateway.post("/v1/chat/completions", json=body, headers=auth(keys["app"]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "pii_detected"
    message = r.json()["error"]["message"]
    assert "email" in message and "phone" in message and "card" in message
    assert "jane.doe" not in r.text and "4111" not in r.text  # kinds, never values
    await f.gateway.patch("/admin/tenants/acme", json={"pii_mode": "mask"}, headers=admin)
    # Look at what the gateway actually forwards to the inference replica.
    router = f.gateway_app.state.gateway.upstream.http._transport
    inference_asgi = router.apps["inference"]
    seen: list[bytes] = []

    async def spy(scope, receive, send):  # type: ignore[no-untyped-def]
        async def capture():  # type: ignore[no-untyped-def]
            message = await receive()
            seen.append(message.get("body", b""))
            return message

        await inference_asgi(scope, capture, send)

    router.apps["inference"] = spy
    try:
        r = await f.gateway.post("/v1/chat/completions", json=body, headers=auth(keys["app"]))
    finally:
        router.apps["inference"] = inference_asgi
    assert r.status_code == 200, r.text
    sent = b"".join(seen).decode()
    assert "[EMAIL]" in sent and "[PHONE]" in sent and "[CARD]" in sent
    assert "jane.doe@example.com" not in sent and "4111" not in sent
    r = await f.gateway.patch("/admin/tenants/acme", json={"pii_mode": "loud"}, headers=admin)
    assert r.status_code == 400 and r.json()["error"]["param"] == "pii_mode"
