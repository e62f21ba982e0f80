"""Forwarding a client's request to an internal service, byte for byte.

The gateway adds the internal token, the tenant, the actor and the request id, and passes the
body and the answer through unparsed (streams chunk by chunk, never buffered). A client that
disconnects closes the upstream response, which cancels the upstream work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from gateway.domain.keys import Principal
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.logging import request_id_var

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


def upstream_headers(request: Request, who: Principal, token: str) -> dict[str, str]:
    headers = {k: v for k in PASS_REQUEST_HEADERS if (v := request.headers.get(k))}
    headers.update(
        {
            "Authorization": f"Bearer {token}",
            "X-Tenant-Id": who.tenant,
            "X-Tunefleet-Actor": who.key_id,
        }
    )
    rid = request_id_var.get()
    if rid:
        headers["X-Request-Id"] = rid
    return headers


def response_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k in PASS_RESPONSE_HEADERS if (v := resp.headers.get(k))}


async def open_upstream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    content: bytes | AsyncIterator[bytes] | None,
    params: dict[str, str] | None = None,
    service: str,
) -> httpx.Response:
    try:
        req = client.build_request(method, url, headers=headers, content=content, params=params)
    except httpx.InvalidURL as exc:  # e.g. a control character in a path parameter
        raise InvalidRequest("the request path or query holds characters not allowed") from exc
    try:
        return await client.send(req, stream=True)
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"{service} is unreachable", code=f"{service}_unavailable", retry_after=2
        ) from exc


async def relay(resp: httpx.Response) -> Response:
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


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        # The replica died mid-stream: end with a clean error event, never a hang.
        yield (
            b'data: {"error":{"message":"inference replica failed mid-stream",'
            b'"type":"server_error","code":"upstream_failed"}}\n\ndata: [DONE]\n\n'
        )
