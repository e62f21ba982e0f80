"""The upstream hop: every request the gateway sends on to an internal service goes through
``Upstream``.

* One pooled ``httpx.AsyncClient`` for all of them (keep-alive connections to each service).
* Headers: the internal token, the tenant, the actor and the request id are added; the body
  and the answer pass through unparsed (streams chunk by chunk, never buffered).
* Retries: an idempotent call (GET, HEAD, PUT, DELETE) that failed before any answer
  (connection refused or reset) is sent once more; a POST never is, except to another
  inference replica (below), where nothing was generated yet.
* Failover across inference replicas: ranked by rendezvous hash of the immutable version, the
  request goes to the first, and once to the second if the first failed before answering
  (connection failure, or 503 while draining). Each replica's open generations are counted
  until their answer is closed and each answer's report of what the replica runs (every
  gateway's) is kept: spill-over (``routing``) reads both.
* SSE relay: a streamed generation is relayed event by event; its usage comes from the final
  chunk, which the gateway asks for (``stream_options.include_usage``) and hides again when the
  client did not ask for it itself. A replica that dies mid-stream ends the stream with an
  error event, never a hang. Closing the relay (client gone) closes the upstream response,
  which cancels the upstream work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from gateway.domain import fasthop
from gateway.domain.keys import Principal
from gateway.domain.routing import Replica, ReplicaSet
from shared.errors import InvalidRequest, ServiceUnavailable, error_from_envelope
from shared.logging import request_id_var
from shared.modelref import MODEL_REF_HEADER, RUNNING_HEADER
from shared.tracing import ClientSpans

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

Body = bytes | AsyncIterator[bytes] | None
UsageSink = Callable[[int, int], None]

PASS_REQUEST_HEADERS = ("content-type", "accept", "idempotency-key")
PASS_RESPONSE_HEADERS = (
    "content-type",
    "content-disposition",
    "etag",
    "retry-after",
    "x-tunefleet-adapter-version",
    "x-tunefleet-sha256",
    "cache-control",
)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Ray Serve's model-multiplexing header: behind a Serve proxy (deploy/ray-serve) the routing key
# picks the replica that has the version warm; plain replicas ignore it.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
MID_STREAM_ERROR = (
    b'data: {"error":{"message":"inference replica failed mid-stream",'
    b'"type":"server_error","code":"upstream_failed"}}\n\ndata: [DONE]\n\n'
)


class Answered(Protocol):
    """An opened upstream answer: ``httpx.Response`` or ``fasthop.HopResponse``."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def aread(self) -> bytes: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


STREAM_ERRORS = (httpx.HTTPError, *fasthop.HOP_ERRORS)


def internal_headers(
    token: str, who: Principal, passed: dict[str, str] | None = None
) -> dict[str, str]:
    """What every internal call carries: token, tenant, actor, request id (+ ``passed``)."""
    headers = dict(passed or {})
    headers["Authorization"] = f"Bearer {token}"
    headers["X-Tenant-Id"] = who.tenant
    headers["X-Tunefleet-Actor"] = who.key_id
    rid = request_id_var.get()
    if rid:
        headers["X-Request-Id"] = rid
    return headers


def passed_headers(client_headers: Any) -> dict[str, str]:
    """The client's headers that travel on (content type, accept, idempotency key)."""
    return {k: v for k in PASS_REQUEST_HEADERS if (v := client_headers.get(k))}


def response_headers(resp: Answered) -> dict[str, str]:
    return {k: v for k in PASS_RESPONSE_HEADERS if (v := resp.headers.get(k))}


class Upstream:
    """The gateway's one client for internal services (see the module docstring)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        replicas: ReplicaSet,
        *,
        hop: aiohttp.ClientSession | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """``hop``: the lean client generations go through (``fasthop``); None: ``http``.
        ``tracer_provider``: trace the ``hop`` calls too (``http`` is instrumented where it
        is built); None: tracing off."""
        self.http = http
        self.replicas = replicas
        self.hop = hop
        self.spans = None if tracer_provider is None else ClientSpans(tracer_provider)

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.hop is not None:
            await self.hop.close()

    async def _post(self, url: str, headers: dict[str, str], raw: bytes) -> Answered:
        """One POST, no retry; 503 ``inference_unavailable`` if nothing answered."""
        if self.hop is None:
            return await self.open(
                "POST", url, headers=headers, content=raw, service="inference", retry=False
            )
        span = None
        if self.spans is not None:
            span = self.spans.start("POST", urlsplit(url).hostname or "", url, headers)
        try:
            answer = await fasthop.post(self.hop, url, headers, raw)
        except fasthop.HOP_ERRORS as exc:
            if span is not None:
                ClientSpans.fail(span, exc)
            raise ServiceUnavailable(
                "inference is unreachable", code="inference_unavailable", retry_after=2
            ) from exc
        if span is not None:
            ClientSpans.answered(span, answer.status_code)
        return answer

    # ------------------------------------------------------------------ one call
    async def open(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        content: Body = None,
        params: dict[str, Any] | None = None,
        service: str,
        retry: bool | None = None,
    ) -> httpx.Response:
        """The opened (streaming) response; 503 ``<service>_unavailable`` if unreachable.

        ``retry`` (default: the method is idempotent and the body is not a stream) sends the
        call once more after a connection failure."""
        if retry is None:
            retry = method in IDEMPOTENT and not isinstance(content, AsyncIterator)
        try:
            req = self.http.build_request(
                method, url, headers=headers, content=content, params=params
            )
        except httpx.InvalidURL as exc:  # e.g. a control character in a path parameter
            raise InvalidRequest("the request path or query holds characters not allowed") from exc
        for attempt in (0, 1):
            try:
                return await self.http.send(req, stream=True)
            except httpx.TransportError as exc:
                if retry and attempt == 0:
                    await asyncio.sleep(0.05)
                    continue
                raise ServiceUnavailable(
                    f"{service} is unreachable", code=f"{service}_unavailable", retry_after=2
                ) from exc
        raise AssertionError("unreachable")

    async def forward(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        content: Body = None,
        params: dict[str, Any] | None = None,
        service: str,
    ) -> Response:
        """Pass a request through and relay the answer as ours."""
        resp = await self.open(
            method, url, headers=headers, content=content, params=params, service=service
        )
        return await relay(resp)

    async def list_all(
        self,
        url: str,
        headers: dict[str, str],
        *,
        service: str,
        cursor: str = "id",
    ) -> list[dict[str, Any]]:
        """Every item of an internal list endpoint (follows the cursor)."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        for _ in range(1000):  # a hard stop: never loop forever on a misbehaving cursor
            resp = await self.open("GET", url, headers=headers, params=params, service=service)
            try:
                raw = await resp.aread()
            finally:
                await resp.aclose()
            if resp.status_code != 200:
                raise error_from_envelope(resp.status_code, json.loads(raw or b"{}"))
            page = json.loads(raw)
            items.extend(page.get("data", []))
            if not page.get("has_more") or not page.get("data"):
                break
            params["after"] = page["data"][-1][cursor]
        return items

    # ------------------------------------------------------------------ inference
    async def generate(
        self,
        path: str,
        *,
        key: str,
        headers: dict[str, str],
        raw: bytes,
        base: str | None = None,
        sent_to: list[str] | None = None,
    ) -> Answered:
        """The opened (streaming) answer of the best replica serving ``base`` for ``key`` (the
        immutable ref), failing over once to the next if the first answered nothing.
        ``sent_to``: each replica's URL is appended as the call goes to it (the last one is
        where the generation runs, even if the call is cancelled before any answer)."""
        last: ServiceUnavailable | None = None
        headers = {
            **headers,
            "content-type": "application/json",
            MULTIPLEX_HEADER: key,
            MODEL_REF_HEADER: key,
        }
        ranked = (await self.replicas.pick(key, base))[:2]
        for i, replica in enumerate(ranked):
            replica.in_flight += 1  # counted until the answer is closed (spill-over)
            if sent_to is not None:
                sent_to.append(replica.url)
            try:
                resp = await self._post(f"{replica.url}{path}", headers, raw)
            except BaseException as exc:
                replica.in_flight -= 1
                if not isinstance(exc, ServiceUnavailable):
                    raise
                self.replicas.mark_down(replica)
                last = exc
                continue
            if resp.status_code == 503 and i + 1 < len(ranked):  # draining: nothing generated
                replica.in_flight -= 1
                await resp.aclose()
                continue
            replica.report(resp.headers.get(RUNNING_HEADER))  # every gateway's load on it
            return _Counted(resp, replica)
        assert last is not None
        raise last


class _Counted:
    """An opened answer that gives its replica's in-flight count back once, when closed."""

    def __init__(self, resp: Answered, replica: Replica) -> None:
        self._resp = resp
        self._replica: Replica | None = replica
        self.status_code = resp.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def aread(self) -> bytes:
        return await self._resp.aread()

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._resp.aiter_raw()

    async def aclose(self) -> None:
        if self._replica is not None:
            self._replica.in_flight -= 1
            self._replica = None
        await self._resp.aclose()


async def relay(resp: Answered) -> Response:
    """The upstream answer as ours: streamed unless it is JSON."""
    headers = response_headers(resp)
    # JSON answers are small and read whole (callers may keep them: idempotency); anything
    # else (SSE, archives, file contents) is streamed through chunk by chunk.
    if not resp.headers.get("content-type", "application/json").startswith("application/json"):
        return StreamingResponse(
            _chunks(resp),
            status_code=resp.status_code,
            headers=headers,
            background=BackgroundTask(resp.aclose),
        )
    try:
        body = await resp.aread()
    finally:
        await resp.aclose()
    return Response(body, status_code=resp.status_code, headers=headers)


async def _chunks(resp: Answered) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except STREAM_ERRORS:
        yield MID_STREAM_ERROR  # the replica died mid-stream: a clean error event, no hang


def ask_for_usage(body: dict[str, Any]) -> bool:
    """Make a streamed request report usage in its last chunk; True if we added it."""
    opts = body.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage"):
        return False
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return True


def _usage_of(event: bytes) -> dict[str, Any] | None:
    if b'"usage"' not in event:
        return None
    for line in event.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                data = json.loads(line[6:])
            except json.JSONDecodeError:
                return None
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict) and not data.get("choices"):
                return usage
    return None


@dataclass
class StreamTally:
    """What a relayed stream has passed on: events with choices (one token each, or more when
    the replica merged them), so a stream cut short is billed what it delivered."""

    events: int = 0


async def relay_events(
    resp: Answered, on_usage: UsageSink, *, hide_usage: bool, tally: StreamTally | None = None
) -> AsyncGenerator[bytes, None]:
    """The upstream SSE stream, whole events at a time; reports the usage chunk and counts
    the events relayed (``tally``). Closing this generator (client gone) closes the upstream
    response, which cancels the generation."""
    buf = b""
    tally = StreamTally() if tally is None else tally
    try:
        async for chunk in resp.aiter_raw():
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            out = []
            for ev in events:
                usage = _usage_of(ev)
                if usage is None:
                    if b'"choices"' in ev:
                        tally.events += 1
                else:
                    on_usage(
                        int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
                    )
                    if hide_usage:
                        continue
                out.append(ev + b"\n\n")
            if out:
                yield b"".join(out)
        if buf:
            yield buf
    except STREAM_ERRORS:
        yield MID_STREAM_ERROR
    finally:
        await resp.aclose()
