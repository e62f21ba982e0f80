"""One generation through the gateway: resolve once, forward the immutable ref, account.

The request's ``model`` is resolved once (``ModelResolver``, the fleet's one alias cache) and
the immutable ref goes to the replica (``Upstream.generate``), which serves it as given. What
was generated is billed: usage is recorded and charged to the tenant's and key's token
budgets from the answer (non-streamed) or from the stream's final usage chunk (streamed), and
a non-streamed answer is remembered for feedback.

Tokens per minute: a generation first reserves what it may cost (``quotas.reservation``: the
prompt's estimate + ``max_tokens``; 429 if the budget does not cover it), and is charged once,
whatever way it ends (``Admission.settle``):

* answered: the replica's ``usage``;
* a stream cut short (client gone, replica died) before its usage chunk: the prompt's
  estimate + the events relayed so far (the upstream call is closed, which cancels it);
* a non-streamed call abandoned (client gone: the upstream call is closed, which cancels it):
  the prompt + the tokens the replica generated before it stopped, which it keeps under the
  request id for the gateway to fetch, in the background (``gateway.domain.abandoned``); the
  prompt's estimate if the replica reports nothing;
* nothing generated (an error before any token): nothing, the reservation is given back.

Usage rows are written for the first three, once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anyio

from gateway.domain.abandoned import AbandonedBilling
from gateway.domain.feedback import FeedbackBook, Prediction
from gateway.domain.quotas import DEFAULT_MAX_TOKENS, Admission, prompt_estimate, reservation
from gateway.domain.resolver import ModelResolver, adapter_label, route_key
from gateway.domain.upstream import (
    StreamTally,
    Upstream,
    ask_for_usage,
    relay_events,
    response_headers,
)
from gateway.domain.usage import UsageRecorder
from shared.schemas.registry import Resolution


@dataclass
class Answer:
    """What the replica answered: whole (``body``), or as server-sent ``events``."""

    status: int = 0
    headers: dict[str, str] | None = None
    body: bytes = b""
    events: AsyncGenerator[bytes, None] | None = None


def answer_text(data: dict[str, Any]) -> str:
    """The first choice's text of a chat or text completion ('' if none)."""
    choices = data.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    return str(message.get("content") or first.get("text") or "")


class Generations:
    def __init__(
        self,
        resolver: ModelResolver,
        upstream: Upstream,
        usage: UsageRecorder,
        feedback: FeedbackBook,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        abandoned: AbandonedBilling | None = None,
    ) -> None:
        """``default_max_tokens``: what a request without ``max_tokens`` reserves;
        ``abandoned``: fetches what an abandoned call generated (None: bill its prompt)."""
        self.default_max_tokens = default_max_tokens
        self.abandoned = abandoned
        self.resolver = resolver
        self.upstream = upstream
        self.usage = usage
        self.feedback = feedback

    def _bill(self, quota: Admission, model: str, usage: dict[str, Any]) -> None:
        """Charge ``usage`` and record it, once per request (later calls do nothing)."""
        p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        if quota.settle(p + c):
            self.usage.add(quota.who.tenant, quota.who.key_id, model, p, c)

    async def complete(
        self,
        quota: Admission,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        raw: bytes | None = None,
        request_id: str | None = None,
    ) -> Answer:
        """One non-streamed generation (``raw``: the body's bytes when unchanged). Cancelling
        it (client gone) closes the upstream call, which cancels the generation there."""
        await quota.reserve(reservation(body, self.default_max_tokens))
        sent_to: list[str] = []
        try:
            res = await self.resolver.resolve(quota.who.tenant, body["model"])
            resp = await self.upstream.generate(
                path,
                key=route_key(res),
                headers=headers,
                raw=raw or json.dumps(body).encode(),
                base=res.base_model,
                sent_to=sent_to,
            )
            try:
                out = await resp.aread()
            finally:
                await resp.aclose()
        except BaseException as exc:
            if sent_to and isinstance(exc, asyncio.CancelledError):
                self._abandoned(quota, body, headers, sent_to[-1])
            else:
                quota.settle(0)  # nothing was generated: the reservation goes back
            raise
        if resp.status_code == 200:
            data = json.loads(out)
            self._bill(quota, body["model"], data.get("usage") or {})
            await self.feedback.remember(
                [request_id or "", str(data.get("id", ""))],
                Prediction(quota.who.tenant, adapter_label(res), answer_text(data)),
            )
        quota.settle(0)  # an error answer: nothing generated, the reservation goes back
        return Answer(resp.status_code, response_headers(resp), out)

    def _abandoned(
        self, quota: Admission, body: dict[str, Any], headers: dict[str, str], replica: str
    ) -> None:
        """A call its client abandoned once the replica had it: billed what the replica
        generated before the close stopped it (fetched in the background; the reservation
        is held until then), else the prompt's estimate."""
        model = body["model"]

        def bill(prompt: int, completion: int) -> None:
            self._bill(quota, model, {"prompt_tokens": prompt, "completion_tokens": completion})

        estimate = (prompt_estimate(body), 0)
        request_id = headers.get("X-Request-Id")
        if self.abandoned is None or not request_id:
            bill(*estimate)
            return
        self.abandoned.later(replica, quota.who.tenant, request_id, estimate, bill)

    async def stream(
        self,
        quota: Admission,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        raw: bytes | None = None,
    ) -> Answer:
        """A streamed generation: ``events`` set when the replica streams (the stream slot is
        held until they end, however they end), else the replica's error ``body``. Errors
        before the replica answers (429 no stream slot, 503 no replica) are raised here."""
        await quota.reserve(reservation(body, self.default_max_tokens))
        try:
            res = await self.resolver.resolve(quota.who.tenant, body["model"])
            hide_usage = ask_for_usage(body)
            if hide_usage or raw is None:
                raw = json.dumps(body).encode()
            answer = Answer()
            events = self._events(answer, quota, res, path, headers, raw, body, hide_usage)
            await anext(events)  # holds the slot and opens the upstream answer, or raises
        except BaseException:
            quota.settle(0)  # nothing generated: the reservation goes back
            raise
        if answer.events is None:
            await events.aclose()  # not a stream: the slot goes back now
        else:
            answer.events = events
        return answer

    async def _events(
        self,
        answer: Answer,
        quota: Admission,
        res: Resolution,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        body: dict[str, Any],
        hide_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        """First fills ``answer`` in (yields nothing), then relays the events, if any; billed
        once however it ends (see the module docstring)."""
        model = body["model"]
        async with quota.stream_slot():
            resp = await self.upstream.generate(
                path, key=route_key(res), headers=headers, raw=raw, base=res.base_model
            )
            answer.status, answer.headers = resp.status_code, response_headers(resp)
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                try:
                    answer.body = await resp.aread()  # an error envelope before any token
                finally:
                    await resp.aclose()
                    quota.settle(0)
                yield b""
                return

            def on_usage(p: int, c: int) -> None:
                self._bill(quota, model, {"prompt_tokens": p, "completion_tokens": c})

            tally = StreamTally()
            relay = relay_events(resp, on_usage, hide_usage=hide_usage, tally=tally)
            answer.events = relay  # marks a stream; stream() hands out this generator instead
            try:
                yield b""
                async for chunk in relay:
                    yield chunk
            finally:
                # Closing the upstream response cancels the generation; shielded, because a
                # client disconnect arrives here as a cancellation that would cut it short.
                with anyio.CancelScope(shield=True):
                    await relay.aclose()
                # cut short before the usage chunk: what was relayed (no-op if billed)
                cut = {"prompt_tokens": prompt_estimate(body), "completion_tokens": tally.events}
                self._bill(quota, model, cut)
