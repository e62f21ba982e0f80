"""Sending a generation to an inference replica: affinity, one failover, usage from streams.

* Replicas are ranked by rendezvous hash of the immutable version; the request goes to the
  first, and once to the second if the first failed before answering (connection refused or
  reset, or 503 while draining): nothing was generated, so the retry cannot duplicate work.
* A streamed answer is relayed event by event. Its usage comes from the final chunk, which
  the gateway asks for (``stream_options.include_usage``) and hides again when the client did
  not ask for it itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from gateway.domain.forward import open_upstream
from gateway.domain.routing import ReplicaSet
from shared.errors import ServiceUnavailable

UsageSink = Callable[[int, int], None]
# Ray Serve's model-multiplexing header: behind a Serve proxy (deploy/ray-serve) the routing key
# picks the replica that has the version warm; plain replicas ignore it.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
MID_STREAM_ERROR = (
    b'data: {"error":{"message":"inference replica failed mid-stream",'
    b'"type":"server_error","code":"upstream_failed"}}\n\ndata: [DONE]\n\n'
)


async def send(
    replicas: ReplicaSet,
    http: httpx.AsyncClient,
    path: str,
    *,
    key: str,
    headers: dict[str, str],
    raw: bytes,
) -> httpx.Response:
    """The opened (streaming) upstream response from the best replica for ``key``."""
    last: ServiceUnavailable | None = None
    headers = {**headers, MULTIPLEX_HEADER: key}
    ranked = (await replicas.pick(key))[:2]
    for i, replica in enumerate(ranked):
        try:
            resp = await open_upstream(
                http,
                "POST",
                f"{replica.url}{path}",
                headers=headers,
                content=raw,
                service="inference",
            )
        except ServiceUnavailable as exc:
            replicas.mark_down(replica)
            last = exc
            continue
        if resp.status_code == 503 and i + 1 < len(ranked):  # draining: nothing generated yet
            await resp.aclose()
            continue
        return resp
    assert last is not None
    raise last


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


async def relay_events(
    resp: httpx.Response, on_usage: UsageSink, *, hide_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The upstream SSE stream, whole events at a time; reports the usage chunk. Closing this
    generator (client gone) closes the upstream response, which cancels the generation."""
    buf = b""
    try:
        async for chunk in resp.aiter_raw():
            buf += chunk
            *events, buf = buf.split(b"\n\n")
            out = []
            for ev in events:
                usage = _usage_of(ev)
                if usage is not None:
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
    except httpx.HTTPError:
        # The replica died mid-stream: end with a clean error event, never a hang.
        yield MID_STREAM_ERROR
    finally:
        await resp.aclose()
