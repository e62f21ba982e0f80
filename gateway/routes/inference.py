"""Public inference routes: quotas, resolution to an immutable version, affinity routing,
pass-through (streamed or not), usage, and remembering answers for feedback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from gateway.deps import Caller, GatewayState, State
from gateway.domain import dispatch
from gateway.domain.feedback import Prediction
from gateway.domain.forward import open_upstream, relay, response_headers, upstream_headers
from gateway.domain.keys import Principal
from gateway.domain.resolver import adapter_label, route_key
from gateway.routes.proxy import read_body
from shared.app import request_id_of
from shared.errors import InvalidRequest
from shared.jsonbody import loads_untrusted

router = APIRouter(tags=["inference"])


def parse_json_body(raw: bytes) -> dict[str, Any]:
    body = loads_untrusted(raw, what="request body")
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model is required", param="model")
    return body


def answer_text(data: dict[str, Any]) -> str:
    """The first choice's text of a chat or text completion ('' if none)."""
    choices = data.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    return str(message.get("content") or first.get("text") or "")


async def cancel_on_disconnect(
    request: Request, work: Callable[[], Awaitable[Response]]
) -> Response:
    """Run ``work`` but abandon it (closing the upstream call) if the client goes away."""
    out: list[Response] = []

    async def watch(scope: anyio.CancelScope) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        out.append(await work())
        tg.cancel_scope.cancel()
    return out[0] if out else Response(status_code=499)


async def generate(
    st: GatewayState,
    who: Principal,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    *,
    request_id: str | None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One non-streamed generation (quota already admitted): status, headers, body."""
    t, k = await st.quotas.limits(who)
    res = await st.resolver.resolve(who.tenant, body["model"])
    resp = await dispatch.send(
        st.replicas,
        st.upstream,
        path,
        key=route_key(res),
        headers=headers,
        raw=raw if raw is not None else json.dumps(body).encode(),
    )
    try:
        out = await resp.aread()
    finally:
        await resp.aclose()
    if resp.status_code == 200:
        data = json.loads(out)
        usage = data.get("usage") or {}
        p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        st.usage.add(who.tenant, who.key_id, body["model"], p, c)
        st.quotas.charge(who, t, k, p + c)
        st.feedback.remember(
            [request_id or "", str(data.get("id", ""))],
            Prediction(who.tenant, adapter_label(res), answer_text(data)),
        )
    return resp.status_code, response_headers(resp), out


async def _generate(path: str, request: Request, st: State, who: Caller) -> Response:
    who.require("infer")
    t, k = await st.quotas.admit(who)
    raw = await read_body(request, st.settings.max_body_bytes)
    body = parse_json_body(raw)
    masked = await st.pii.enforce(who.pii_mode, body)
    res = await st.resolver.resolve(who.tenant, body["model"])
    headers = upstream_headers(request, who, st.internal_token)
    if not body.get("stream"):

        async def once() -> Response:
            status, out_headers, out = await generate(
                st,
                who,
                path,
                body,
                headers,
                request_id=request_id_of(request),
                raw=None if masked else raw,
            )
            return Response(out, status_code=status, headers=out_headers)

        return await cancel_on_disconnect(request, once)
    hide_usage = dispatch.ask_for_usage(body)
    if masked or hide_usage:
        raw = json.dumps(body).encode()
    hold = st.quotas.stream(who, t, k)
    hold.__enter__()  # released when the stream ends, however it ends
    try:
        resp = await dispatch.send(
            st.replicas, st.upstream, path, key=route_key(res), headers=headers, raw=raw
        )
    except BaseException:
        hold.__exit__(None, None, None)
        raise
    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
        hold.__exit__(None, None, None)
        return await relay(resp)  # an error envelope before any token

    def on_usage(p: int, c: int) -> None:
        st.usage.add(who.tenant, who.key_id, body["model"], p, c)
        st.quotas.charge(who, t, k, p + c)

    async def events() -> AsyncIterator[bytes]:
        upstream = dispatch.relay_events(resp, on_usage, hide_usage=hide_usage)
        try:
            async for chunk in upstream:
                yield chunk
        finally:
            hold.__exit__(None, None, None)
            # Closing the upstream response cancels the generation; shielded, because a client
            # disconnect arrives here as a cancellation that would cut the close short.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    return StreamingResponse(events(), status_code=resp.status_code, headers=response_headers(resp))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, st: State, who: Caller) -> Response:
    return await _generate("/v1/chat/completions", request, st, who)


@router.post("/v1/completions")
async def completions(request: Request, st: State, who: Caller) -> Response:
    return await _generate("/v1/completions", request, st, who)


async def _models_call(request: Request, st: GatewayState, who: Principal, path: str) -> Response:
    """A model listing/lookup, answered by the replica the tenant's listings go to."""
    who.require("read")
    replica = (await st.replicas.pick(who.tenant))[0]
    resp = await open_upstream(
        st.upstream,
        "GET",
        f"{replica.url}{path}",
        headers=upstream_headers(request, who, st.internal_token),
        content=None,
        service="inference",
    )
    return await relay(resp)


@router.get("/v1/models")
async def models(request: Request, st: State, who: Caller) -> Response:
    """Bases, the tenant's fine-tuned models and adapters, in every callable form."""
    return await _models_call(request, st, who, "/v1/models")


@router.get("/v1/models/{model:path}")
async def model(model: str, request: Request, st: State, who: Caller) -> Response:
    """One model by any callable form; 404 ``model_not_found`` otherwise."""
    return await _models_call(request, st, who, "/v1/models/" + quote(model, safe="@:"))
