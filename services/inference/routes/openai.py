"""OpenAI-compatible routes: completions, chat completions, models."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.inference.deps import Srv
from services.inference.domain.models import list_models, retrieve_model
from services.inference.domain.responses import complete, sse_stream
from shared.app import request_id_of
from shared.auth import TenantId
from shared.disconnect import cancel_on_disconnect
from shared.errors import ServiceUnavailable
from shared.modelref import MODEL_REF_HEADER
from shared.schemas.common import ListResponse
from shared.schemas.openai import ChatCompletionRequest, CompletionRequest, ModelCard

router = APIRouter(tags=["openai"])
VERSION_HEADER = "X-Tunefleet-Adapter-Version"


async def _serve(
    request: Request,
    srv: Srv,
    tenant: str,
    body: CompletionRequest | ChatCompletionRequest,
    *,
    chat: bool,
) -> Response:
    if request.app.state.draining:
        raise ServiceUnavailable("replica is draining; retry on another", code="draining")
    rid = request_id_of(request) or uuid.uuid4().hex
    ref = request.headers.get(MODEL_REF_HEADER)
    prepared = await srv.prepare(tenant, body, rid, ref=ref)
    response_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    headers = {VERSION_HEADER: prepared.served_ref}
    chunks = srv.stream(prepared)
    if body.stream:
        # Pull the first chunk before answering 200, so resolution/adapter/overload errors
        # still get their proper status instead of an error event in a 200 stream.
        first = await anext(chunks, None)

        async def replay():  # type: ignore[no-untyped-def]
            if first is not None:
                yield first
            async for c in chunks:
                yield c

        return StreamingResponse(
            sse_stream(prepared, replay(), chat=chat, response_id=response_id),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def whole() -> Response:
        out = await complete(prepared, chunks, chat=chat, response_id=response_id)
        return JSONResponse(out.model_dump(), headers=headers)

    # A caller that goes away (the gateway's client disconnected) cancels the generation.
    return await cancel_on_disconnect(request, whole)


@router.post("/v1/completions")
async def completions(
    body: CompletionRequest, request: Request, srv: Srv, tenant: TenantId
) -> Response:
    return await _serve(request, srv, tenant, body, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, srv: Srv, tenant: TenantId
) -> Response:
    return await _serve(request, srv, tenant, body, chat=True)


@router.get("/v1/models", response_model=ListResponse[ModelCard])
async def models(srv: Srv, tenant: TenantId) -> ListResponse[ModelCard]:
    """The base this replica serves, the tenant's own bases, its adapters in every form."""
    registry = srv.resolver.registry
    cards = await list_models(registry, tenant, srv.base_model, served_owner=srv.base_owner)
    return ListResponse(data=cards)


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def model(model: str, srv: Srv, tenant: TenantId) -> ModelCard:
    """Any form that resolves (``name``, ``name@v3``, ``name@3``, ``name@staging``, a base)."""
    registry = srv.resolver.registry
    return await retrieve_model(
        srv.resolver, registry, tenant, model, srv.base_model, srv.base_owner
    )
