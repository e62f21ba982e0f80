"""Passing a public request through to an internal service: bounded bodies, idempotent
creates, audited state changes. Used by the registry and training routes alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response

from gateway.deps import GatewayState
from gateway.domain import audit, idempotency
from gateway.domain.keys import Principal
from gateway.domain.upstream import Body, internal_headers, passed_headers
from shared.app import request_id_of
from shared.errors import PayloadTooLarge, TunefleetError


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


def _declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes before reading them all."""
    _declared_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def bounded_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives (uploads are never held whole in memory), cut off at ``limit``."""
    _declared_length(request, limit)

    async def gen() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            yield chunk

    return gen()


def upload_limit(request: Request, st: GatewayState) -> int:
    """The route's limit (``shared.bodylimit``: upload routes get the upload limit), never
    lifted by what the client's ``Content-Type`` claims."""
    limit = request.scope.get("state", {}).get("body_limit")
    return limit if isinstance(limit, int) else st.settings.max_body_bytes


async def forward(
    request: Request,
    st: GatewayState,
    who: Principal,
    base_url: str,
    service: str,
    body: Body = None,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    """Send this request (same method, path, query) to ``service`` as the caller's tenant
    (``extra_headers``: gateway-set ones, e.g. the tenant's count limit)."""
    if body is None and request.method in ("POST", "PUT", "PATCH"):
        body = bounded_stream(request, upload_limit(request, st))
    passed = passed_headers(request.headers) | (extra_headers or {})
    return await st.upstream.forward(
        request.method,
        base_url.rstrip("/") + request.url.path,
        headers=internal_headers(st.internal_token, who, passed),
        content=body,
        params=dict(request.query_params),
        service=service,
    )


def route_action(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method.lower()} {getattr(route, 'path', request.url.path)}"


async def record_audit(
    request: Request,
    st: GatewayState,
    who: Principal,
    status: int,
    action: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append the outcome of this request to the audit chain."""

    def log() -> None:
        with st.db.session(write=True) as s:
            audit.record(
                s,
                st.audit_keys,
                tenant=who.tenant,
                actor=who.key_id,
                action=action or route_action(request),
                target=request.url.path,
                request_id=request_id_of(request),
                outcome="ok" if status < 400 else str(status),
                details=details,
            )

    await anyio.to_thread.run_sync(log)


async def idempotent(
    request: Request,
    st: GatewayState,
    who: Principal,
    body: Body,
    call: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``call`` once per (tenant, Idempotency-Key); replay its answer for retries.

    ``body`` must be the request's bytes when the header is present (see ``body_for``)."""
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return await call()
    idempotency.check_key(key)
    fp = idempotency.fingerprint(
        request.method,
        request.url.path,
        request.headers.get("content-type", ""),
        body if isinstance(body, bytes) else b"",
    )
    ttl = st.settings.idempotency_ttl_s

    def claim() -> idempotency.Stored | None:
        with st.db.session(write=True) as s:
            return idempotency.begin(s, who.tenant, key, fp, ttl)

    def done(status: int, content_type: str, out: bytes) -> None:
        with st.db.session(write=True) as s:
            idempotency.finish(s, who.tenant, key, status, content_type, out)

    def forget() -> None:
        with st.db.session(write=True) as s:
            idempotency.abandon(s, who.tenant, key)

    stored = await anyio.to_thread.run_sync(claim)
    if stored is not None:
        return Response(
            stored.body,
            status_code=stored.status,
            media_type=stored.content_type,
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        resp = await call()
    except TunefleetError as exc:
        envelope = json.dumps(exc.to_dict(request_id_of(request))).encode()
        await anyio.to_thread.run_sync(done, exc.status, "application/json", envelope)
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(forget)
        raise
    content_type = resp.headers.get("content-type", "application/json")
    await anyio.to_thread.run_sync(done, resp.status_code, content_type, bytes(resp.body))
    return resp


async def body_for(request: Request, st: GatewayState) -> Body:
    """Bytes when the request must be fingerprinted (Idempotency-Key), else a bounded stream."""
    limit = upload_limit(request, st)
    if request.headers.get(idempotency.HEADER) is not None:
        return await read_body(request, limit)
    return bounded_stream(request, limit)


async def list_all(
    st: GatewayState,
    who: Principal,
    base_url: str,
    path: str,
    service: str,
    cursor: str = "id",
) -> list[dict[str, Any]]:
    """Every item of an internal list endpoint for the caller's tenant (follows the cursor)."""
    headers = {"Authorization": f"Bearer {st.internal_token}", "X-Tenant-Id": who.tenant}
    return await st.upstream.list_all(
        base_url.rstrip("/") + path, headers, service=service, cursor=cursor
    )
