"""Turning OpenAI-shaped requests into engine work, with accounting.

Routes hand a validated request here; this module resolves the model to an immutable
identity, holds its adapter for the request's duration, builds the token prompt with the
one renderer training uses too (:mod:`shared.rendering`), bounds it by the context, and
yields engine chunks while recording metrics. Labels (``choices_allowed``, a JSON-schema
``enum``) are offered to the engine as the model learnt them and answered as written.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.inference.domain.abandoned import AbandonedLedger
from services.inference.engine.adapters import AdapterCache
from services.inference.engine.base import (
    AdapterHandle,
    AdapterLoadError,
    EngineOverloadedError,
    GenerationChunk,
    GenerationRequest,
    InferenceEngine,
)
from services.inference.engine.resolver import ModelResolver
from services.inference.metrics import InferenceMetrics
from shared.errors import InvalidRequest, NotFound, ServiceUnavailable, TunefleetError
from shared.rendering import LabelConstraint, label_constraint, render_chat, render_prompt
from shared.schemas.openai import ChatCompletionRequest, CompletionRequest, SamplingFields
from shared.schemas.registry import Resolution

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """One client request, resolved and tokenized, ready for the engine."""

    resolution: Resolution
    prompts: list[list[int]]
    body: SamplingFields
    max_tokens: int
    request_id: str
    metric_labels: tuple[str, str]
    created: int = field(default_factory=lambda: int(time.time()))
    # per prompt: the label constraint of the request (None: free text or a general schema)
    constraints: list[LabelConstraint | None] = field(default_factory=list)
    # per choice: the tokens generated so far (what a call abandoned mid-way is billed)
    generated: dict[int, int] = field(default_factory=dict)

    def usage_so_far(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens generated so far)."""
        return sum(len(x) for x in self.prompts), sum(self.generated.values())

    @property
    def served_ref(self) -> str:
        return self.resolution.ref

    @property
    def sequences(self) -> int:
        """Engine sequences the request runs: one per prompt and choice."""
        return len(self.prompts) * self.body.n


class Server:
    def __init__(
        self,
        engine: InferenceEngine,
        cache: AdapterCache,
        resolver: ModelResolver,
        metrics: InferenceMetrics,
        *,
        base_model: str,
        max_model_len: int,
        default_max_tokens: int,
        max_waiting: int,
        max_running: int = 0,
        base_owner: str = "system",
    ) -> None:
        """``max_running + max_waiting`` bounds the engine sequences admitted at once (one
        per prompt and choice); past it a request is refused with 503 and Retry-After."""
        self.engine = engine
        self.cache = cache
        self.resolver = resolver
        self.metrics = metrics
        self.base_model = base_model
        self.base_owner = base_owner  # "system", or the tenant whose merged model it is
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.max_waiting = max_waiting
        self.max_admitted = max_running + max_waiting
        # Counted here, not read from the engine: vLLM's scheduler figures lag by a step, so
        # a burst arriving between two steps would all be admitted.
        self.admitted = 0
        # what non-streamed calls generated before their caller left (the gateway bills it)
        self.abandoned = AbandonedLedger()

    # ------------------------------------------------------------------ prepare
    async def prepare(
        self,
        tenant: str,
        body: CompletionRequest | ChatCompletionRequest,
        request_id: str,
        *,
        ref: str | None = None,
    ) -> Prepared:
        """``ref``: the immutable version the gateway already resolved ``body.model`` to
        (served as given: the alias is never resolved a second time); None for a direct call."""
        if ref:
            res = await self.resolver.resolve_ref(tenant, ref)
        else:
            res = await self.resolver.resolve(tenant, body.model)
        if res.base_model != self.base_model:
            raise NotFound(
                f"model {body.model!r} is built on {res.base_model!r}, which this "
                f"replica does not serve",
                param="model",
                code="model_not_found",
            )
        schema = body.json_schema()
        if isinstance(body, ChatCompletionRequest):
            prompts = [self._chat_tokens(body)]
            constraints = [label_constraint(None, body.choices_allowed, schema)]
            param = "messages"
        else:
            raw = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            prompts = [render_prompt(self.engine.tokenizer, p) for p in raw]
            constraints = [label_constraint(p, body.choices_allowed, schema) for p in raw]
            param = "prompt"
        longest = max(len(p) for p in prompts)
        room = self.max_model_len - longest
        if room < 1:
            raise InvalidRequest(
                f"{param} is {longest} tokens; this model's context is {self.max_model_len} "
                "tokens including the answer",
                param=param,
                code="context_length_exceeded",
            )
        if body.max_tokens is None:
            max_tokens = min(self.default_max_tokens, room)
        elif body.max_tokens > room:
            # (max_completion_tokens, when sent, has been copied into max_tokens)
            cap = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
            raise InvalidRequest(
                f"{cap} {body.max_tokens} + prompt {longest} tokens exceeds the context "
                f"of {self.max_model_len} tokens (at most {room} here)",
                param=cap,
                code="context_length_exceeded",
            )
        else:
            max_tokens = body.max_tokens
        # A label constraint answers one whole label: room for the longest one however the
        # engine spells it (at worst a token per byte) and its end, never a cut-off label.
        needed = max((c.max_answer_tokens for c in constraints if c is not None), default=0)
        max_tokens = max(max_tokens, min(needed, room))
        adapter = f"{res.adapter}@v{res.version}" if res.kind == "adapter" else res.ref
        return Prepared(
            resolution=res,
            prompts=prompts,
            body=body,
            max_tokens=max_tokens,
            request_id=request_id,
            metric_labels=(tenant, adapter),
            constraints=constraints,
        )

    def _chat_tokens(self, body: ChatCompletionRequest) -> list[int]:
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc
        return render_chat(self.engine.tokenizer, messages)

    # ------------------------------------------------------------------ run
    async def stream(self, p: Prepared) -> AsyncIterator[GenerationChunk]:
        """Chunks of every prompt's choices; choice index = prompt index * n + choice."""
        if self.engine.is_dead():
            raise ServiceUnavailable("inference engine is not running", code="engine_dead")
        seqs = p.sequences
        if self.admitted and self.admitted + seqs > self.max_admitted:
            # (A lone request larger than the bound is admitted rather than never served.)
            self.metrics.requests.labels(*p.metric_labels, "503").inc()
            raise EngineOverloadedError(
                f"inference engine is overloaded ({self.admitted} sequences in flight); "
                "retry shortly",
                retry_after=1,
            )
        self.admitted += seqs
        try:
            async for chunk in self._accounted(p):
                yield chunk
        finally:
            self.admitted -= seqs

    async def _accounted(self, p: Prepared) -> AsyncIterator[GenerationChunk]:
        """The request's chunks, recording its metrics."""
        labels = p.metric_labels
        start = time.perf_counter()
        first_at: float | None = None
        prompt_tokens = sum(len(x) for x in p.prompts)
        status = "error"
        try:
            if p.resolution.kind == "adapter":
                async with self.cache.use(p.resolution) as handle:
                    async for chunk in self._run(p, handle):
                        first_at = first_at or time.perf_counter()
                        yield chunk
            else:
                async for chunk in self._run(p, None):
                    first_at = first_at or time.perf_counter()
                    yield chunk
            status = "ok"
        except TunefleetError as exc:
            status = str(exc.status)
            if isinstance(exc, AdapterLoadError):
                self.metrics.adapter_load_failures.labels(exc.reason).inc()
                # the full text (server paths included) stays here; the client's has none
                log.warning(
                    "adapter load failed",
                    extra={"ref": exc.ref, "reason": exc.reason, "detail": exc.detail},
                )
            raise
        finally:
            m = self.metrics
            m.requests.labels(*labels, status).inc()
            m.prompt_tokens.labels(*labels).inc(prompt_tokens)
            end = time.perf_counter()
            m.e2e.labels(*labels).observe(end - start)
            if first_at is not None:
                m.ttft.labels(*labels).observe(first_at - start)

    async def _run(
        self,
        p: Prepared,
        handle: AdapterHandle | None,
    ) -> AsyncIterator[GenerationChunk]:
        n = p.body.n
        queue: asyncio.Queue[GenerationChunk | BaseException | None] = asyncio.Queue()
        totals = p.generated
        first_token_time: dict[int, float] = {}

        async def one(prompt_index: int, ids: list[int]) -> None:
            constraint = p.constraints[prompt_index] if p.constraints else None
            choices = constraint.engine_choices if constraint else p.body.choices_allowed
            reshape = constraint is not None and constraint.reshapes
            held: dict[int, str] = {}  # reshaped answers are short labels: sent whole
            req = GenerationRequest(
                request_id=f"{p.request_id}-{prompt_index}-{uuid.uuid4().hex[:6]}",
                prompt_token_ids=ids,
                max_tokens=p.max_tokens,
                temperature=p.body.temperature,
                top_p=p.body.top_p,
                stop=p.body.stop,
                seed=p.body.seed,
                n=n,
                choices=choices,
                json_schema=None if constraint else p.body.json_schema(),
                adapter=handle,
                ignore_eos=p.body.ignore_eos,
                min_tokens=p.body.min_tokens,
            )
            try:
                async for chunk in self.engine.generate(req):
                    idx = prompt_index * n + chunk.index
                    if chunk.first_token:
                        first_token_time[idx] = time.perf_counter()
                    totals[idx] = chunk.completion_tokens
                    text = chunk.text_delta
                    if reshape and constraint is not None:
                        held[idx] = held.get(idx, "") + text
                        if chunk.finish_reason is None:
                            continue
                        text = constraint.answer(held.pop(idx))
                    await queue.put(
                        GenerationChunk(
                            index=idx,
                            text_delta=text,
                            finish_reason=chunk.finish_reason,
                            prompt_tokens=chunk.prompt_tokens,
                            completion_tokens=chunk.completion_tokens,
                            first_token=chunk.first_token or reshape,
                        )
                    )
            except BaseException as exc:  # surfaced to the consumer below
                await queue.put(exc)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(one(i, ids)) for i, ids in enumerate(p.prompts)]
        pending = len(tasks)
        try:
            while pending:
                item = await queue.get()
                if item is None:
                    pending -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            generated = sum(totals.values())
            labels = p.metric_labels
            self.metrics.generation_tokens.labels(*labels).inc(generated)
            now = time.perf_counter()
            for idx, t0 in first_token_time.items():
                if totals.get(idx, 0) > 1:
                    self.metrics.tpot.labels(*labels).observe((now - t0) / (totals[idx] - 1))
