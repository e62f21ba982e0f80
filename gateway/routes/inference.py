"""Public inference routes: HTTP in, one domain call (``Generations``), HTTP out.

Answers are the replica's bytes, relayed without parsing and re-serialising them (the gateway
only reads usage from them); their OpenAI shapes are declared as the routes' response models,
so the OpenAPI document shows them, and streams as ``text/event-stream``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from gateway.deps import Caller, State
from gateway.domain import model_listing
from gateway.domain.upstream import internal_headers, passed_headers
from gateway.routes.proxy import read_body
from shared.app import request_id_of
from shared.disconnect import cancel_on_disconnect
from shared.errors import InvalidRequest
from shared.jsonbody import loads_untrusted
from shared.schemas.common import ListResponse
from shared.schemas.openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
)

router = APIRouter(tags=["inference"])

SSE_DOC = (
    "With `stream: true`: server-sent events, one `data: {chunk}` per event, ending with "
    "`data: [DONE]`."
)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined (an OpenAPI ``requestBody`` cannot
    point into a schema's own ``$defs``)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def _documented(request: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
    """Route arguments that document the OpenAI request body, the JSON answer and the stream,
    while the handler reads the body itself (it is forwarded as bytes)."""
    return {
        "response_model": response,
        "responses": {
            200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        },
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _inline(request.model_json_schema())}},
            }
        },
        "description": SSE_DOC,
    }


def parse_json_body(raw: bytes) -> dict[str, Any]:
    body = loads_untrusted(raw, what="request body")
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model is required", param="model")
    return body


async def generate(path: str, request: Request, st: State, who: Caller) -> Response:
    """A generation, behind both the FastAPI routes below and ``gateway.routes.fastpath``."""
    who.require("infer")
    quota = await st.quotas.admission(who)
    raw = await read_body(request, st.settings.max_body_bytes)
    body = parse_json_body(raw)
    masked = await st.pii.enforce(who.pii_mode, body)
    forwarded = None if masked else raw
    headers = internal_headers(st.internal_token, who, passed_headers(request.headers))
    if body.get("stream"):
        answer = await st.generations.stream(quota, path, body, headers, raw=forwarded)
        if answer.events is None:
            return Response(answer.body, status_code=answer.status, headers=answer.headers)
        return StreamingResponse(answer.events, status_code=answer.status, headers=answer.headers)

    async def once() -> Response:
        answer = await st.generations.complete(
            quota, path, body, headers, raw=forwarded, request_id=request_id_of(request)
        )
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return await cancel_on_disconnect(request, once)


@router.post("/v1/chat/completions", **_documented(ChatCompletionRequest, ChatCompletionResponse))
async def chat_completions(request: Request, st: State, who: Caller) -> Response:
    """A chat completion (OpenAI's shape), by a base model or a tenant's adapter."""
    return await generate("/v1/chat/completions", request, st, who)


@router.post("/v1/completions", **_documented(CompletionRequest, CompletionResponse))
async def completions(request: Request, st: State, who: Caller) -> Response:
    """A text completion (OpenAI's shape), by a base model or a tenant's adapter."""
    return await generate("/v1/completions", request, st, who)


def _models_headers(request: Request, st: State, who: Caller) -> dict[str, str]:
    who.require("read")
    return internal_headers(st.internal_token, who, passed_headers(request.headers))


@router.get("/v1/models", response_model=ListResponse[ModelCard])
async def models(request: Request, st: State, who: Caller) -> Response:
    """Bases, the tenant's fine-tuned models and adapters, in every callable form: the union
    over the ready replicas (each lists the base it serves)."""
    headers = _models_headers(request, st, who)
    return await model_listing.list_models(st.generations.upstream, who.tenant, headers)


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def model(model: str, request: Request, st: State, who: Caller) -> Response:
    """One model by any callable form; 404 ``model_not_found`` otherwise."""
    headers = _models_headers(request, st, who)
    path = "/v1/models/" + quote(model, safe="@:")
    return await model_listing.retrieve_model(st.generations.upstream, who.tenant, path, headers)
