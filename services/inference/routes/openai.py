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
from shared.disconnect import CLIENT_CLOSED, cancel_on_disconnect
from shared.errors import NotFound, ServiceUnavailable
from shared.modelref import MODEL_REF_HEADER, RUNNING_HEADER
from shared.schemas.common import ListResponse
from shared.schemas.openai import (
    AbandonedUsageOut,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
)

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
            headers={
                **headers,
                RUNNING_HEADER: str(srv.admitted),  # this answer's sequences included
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )

    async def whole() -> Response:
        out = await complete(prepared, chunks, chat=chat, response_id=response_id)
        # this answer's sequences are released by now; the gateway still counts them
        running = srv.admitted + prepared.sequences
        return JSONResponse(out.model_dump(), headers={**headers, RUNNING_HEADER: str(running)})

    # A caller that goes away (the gateway's client disconnected) cancels the generation;
    # what it generated is kept for the gateway to bill (it never sees this answer).
    out = await cancel_on_disconnect(request, whole)
    if out.status_code == CLIENT_CLOSED:
        srv.abandoned.record(tenant, rid, *prepared.usage_so_far())
    return out


@router.get("/v1/internal/abandoned/{request_id}", response_model=AbandonedUsageOut)
async def abandoned_usage(request_id: str, srv: Srv, tenant: TenantId) -> AbandonedUsageOut:
    """The tokens a non-streamed call of the tenant (its ``X-Request-Id``) generated before
    its caller went away; 404 if none was abandoned here (or it was forgotten: minutes)."""
    kept = srv.abandoned.get(tenant, request_id)
    if kept is None:
        raise NotFound(f"no abandoned generation {request_id!r} here", param="request_id")
    return AbandonedUsageOut(
        request_id=request_id,
        prompt_tokens=kept.prompt_tokens,
        completion_tokens=kept.completion_tokens,
    )


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
