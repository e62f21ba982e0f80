"""Engine chunks → OpenAI response bodies and SSE events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from services.inference.domain.serving import Prepared
from services.inference.engine.base import GenerationChunk, collect
from shared.errors import TunefleetError
from shared.logging import request_id_var
from shared.schemas.openai import (
    ChatChoice,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionResponse,
    Usage,
)


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


async def complete(
    p: Prepared, chunks: AsyncIterator[GenerationChunk], *, chat: bool, response_id: str
) -> CompletionResponse | ChatCompletionResponse:
    result = await collect(chunks)
    prompt_tokens = sum(len(x) for x in p.prompts)
    usage = _usage(prompt_tokens, result.completion_tokens)
    model = p.body.model
    if chat:
        return ChatCompletionResponse(
            id=response_id,
            created=p.created,
            model=model,
            usage=usage,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=ChatMessageOut(content=c.text),
                    finish_reason=c.finish_reason,
                )
                for c in result.choices
            ],
        )
    return CompletionResponse(
        id=response_id,
        created=p.created,
        model=model,
        usage=usage,
        choices=[
            CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason)
            for c in result.choices
        ],
    )


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def sse_stream(
    p: Prepared, chunks: AsyncIterator[GenerationChunk], *, chat: bool, response_id: str
) -> AsyncIterator[bytes]:
    """OpenAI's streaming format: one ``data:`` event per delta, then ``data: [DONE]``.

    An error after the stream started cannot change the HTTP status any more, so it is sent as
    an ``error`` event (the same envelope) before ``[DONE]``: clients see a clean end, not a hang.
    """
    base = {
        "id": response_id,
        "created": p.created,
        "model": p.body.model,
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    totals: dict[int, int] = {}
    prompt_tokens = sum(len(x) for x in p.prompts)
    include_usage = bool(p.body.stream_options and p.body.stream_options.include_usage)
    started: set[int] = set()
    try:
        async for c in chunks:
            totals[c.index] = c.completion_tokens
            if chat:
                delta: dict[str, Any] = {"content": c.text_delta}
                if c.index not in started:
                    delta["role"] = "assistant"
                    started.add(c.index)
                choice: dict[str, Any] = {
                    "index": c.index,
                    "delta": delta,
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                }
            else:
                choice = {
                    "index": c.index,
                    "text": c.text_delta,
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                }
            yield _sse({**base, "choices": [choice]})
        if include_usage:
            usage = _usage(prompt_tokens, sum(totals.values()))
            yield _sse({**base, "choices": [], "usage": usage.model_dump()})
    except TunefleetError as exc:
        yield _sse(exc.to_dict(request_id_var.get()))
    yield b"data: [DONE]\n\n"
