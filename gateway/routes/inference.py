"""Public inference routes: quota, routing by model affinity, pass-through, usage."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.deps import Caller, State
from gateway.domain import pii_guard
from gateway.domain.forward import open_upstream, relay, upstream_headers
from shared.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable

router = APIRouter(tags=["inference"])


async def _read_json(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model is required", param="model")
    return raw, body


async def _generate(path: str, request: Request, st: State, who: Caller) -> Response:
    who.require("infer")
    st.limiter.take(f"rpm:{who.tenant}", who.rpm or st.settings.default_rpm)
    raw, body = await _read_json(request, st.settings.max_body_bytes)
    if pii_guard.apply(who.pii_mode, body):
        raw = json.dumps(body).encode()
    headers = upstream_headers(request, who, st.internal_token)
    key = f"{who.tenant}/{body['model']}"
    last: ServiceUnavailable | None = None
    # One retry on another replica if the first failed before sending any byte.
    for replica in (await st.replicas.pick(key))[:2]:
        try:
            resp = await open_upstream(
                st.upstream,
                "POST",
                f"{replica.url}{path}",
                headers=headers,
                content=raw,
                service="inference",
            )
        except ServiceUnavailable as exc:
            st.replicas.mark_down(replica)
            last = exc
            continue
        if body.get("stream"):
            st.usage.add(who.tenant, who.key_id, body["model"], 0, 0)
            return await relay(resp)
        out = await relay(resp)
        if resp.status_code == 200:
            usage = json.loads(bytes(out.body)).get("usage", {})
            st.usage.add(
                who.tenant,
                who.key_id,
                body["model"],
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
            )
        return out
    assert last is not None
    raise last


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, st: State, who: Caller) -> Response:
    return await _generate("/v1/chat/completions", request, st, who)


@router.post("/v1/completions")
async def completions(request: Request, st: State, who: Caller) -> Response:
    return await _generate("/v1/completions", request, st, who)


@router.get("/v1/models")
async def models(request: Request, st: State, who: Caller) -> Response:
    who.require("read")
    replica = (await st.replicas.pick(who.tenant))[0]
    resp = await open_upstream(
        st.upstream,
        "GET",
        f"{replica.url}/v1/models",
        headers=upstream_headers(request, who, st.internal_token),
        content=None,
        service="inference",
    )
    return await relay(resp)
