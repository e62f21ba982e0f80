"""The pieces every service app is assembled from.

``create_service_app`` gives a FastAPI app with: the request-context middleware (request id,
tenant, JSON access log, HTTP metrics), the one error handler that renders API.md's envelope,
and ``/healthz``, ``/readyz``, ``/metrics``. Services add their routers and lifespan.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.apidocs import install_docs
from shared.bodylimit import BeforeBody, BodyLimitMiddleware, Limit
from shared.errors import (
    STATUS_TO_ERROR,
    Forbidden,
    InvalidRequest,
    NotFound,
    TunefleetError,
    Unauthorized,
)
from shared.logging import request_id_var, tenant_var
from shared.metrics import CONTENT_TYPE_LATEST, HttpMetrics, new_registry, render
from shared.tracing import TraceMiddleware, start_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("tunefleet.http")

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not."""

_QUIET_PATHS = {"/healthz", "/readyz", "/metrics"}


_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def new_request_id() -> str:
    """``req_`` and 24 random hex digits (96 bits; ``os.urandom`` directly: a ``uuid4``
    per request was 2 % of the gateway's CPU)."""
    return "req_" + os.urandom(12).hex()


def client_request_id(raw: bytes) -> str | None:
    """A client's ``X-Request-Id`` when it is 1-128 printable ASCII characters; None otherwise
    (a new id is made: non-ASCII ids broke the headers sent on to other services)."""
    return raw.decode("ascii") if _REQUEST_ID.fullmatch(raw) else None


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streams pass through untouched and cheaply."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = client_request_id(headers.get(b"x-request-id", b"")) or new_request_id()
        tenant = headers.get(b"x-tenant-id", b"").decode("latin-1")[:64] or None
        rid_token = request_id_var.set(rid)
        tenant_token = tenant_var.set(tenant)
        scope.setdefault("state", {})["request_id"] = rid
        span = trace.get_current_span()
        if span.is_recording():  # a request id or tenant leads an SRE to its trace
            span.set_attribute("tunefleet.request_id", rid)
            if tenant:
                span.set_attribute("tunefleet.tenant", tenant)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", rid.encode("latin-1")),
                ]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if _DOT_SEGMENT.search(scope["path"]):
                # "%2e%2e" arrives decoded: passed on, it would re-target the upstream path
                err = InvalidRequest(
                    "path segments '.' and '..' are not allowed", code="invalid_path"
                )
                await error_response(err, rid)(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, elapsed)
            if scope["path"] not in _QUIET_PATHS:
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": template,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(rid_token)
            tenant_var.reset(tenant_token)


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(
    exc: TunefleetError, request_id: str | None, *, status: int | None = None
) -> JSONResponse:
    headers = dict(exc.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(exc.to_dict(request_id), status_code=status or exc.status, headers=headers)


def _validation_param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install_error_handlers(app: FastAPI) -> None:
    """The one place domain errors become HTTP: the envelope of API.md, never a traceback."""

    @app.exception_handler(TunefleetError)
    async def _domain(request: Request, exc: TunefleetError) -> JSONResponse:
        return error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _validation_param(tuple(first.get("loc", ())))
        msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(InvalidRequest(msg, param=param or None), request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns whatever reading the body raised into a 400: keep a domain error's
        # own status (a body cut off at its limit is a 413).
        if isinstance(exc.__cause__, TunefleetError):
            return error_response(exc.__cause__, request_id_of(request))
        # Routing errors (unknown path, wrong method): same envelope, their own status.
        cls = STATUS_TO_ERROR.get(exc.status_code, InvalidRequest)
        if not issubclass(cls, (InvalidRequest, Unauthorized, Forbidden, NotFound)):
            cls = InvalidRequest
        err = cls(str(exc.detail), code=_http_code(exc.status_code))
        return error_response(err, request_id_of(request), status=exc.status_code)

    @app.exception_handler(ExceptionGroup)
    async def _group(request: Request, exc: ExceptionGroup[Exception]) -> JSONResponse:
        # A task group (anyio, asyncio.TaskGroup) wraps what its tasks raise: a domain error
        # inside one keeps its own status (a 503 stays a 503 with its Retry-After).
        domain = _domain_error_in(exc)
        if domain is not None:
            return error_response(domain, request_id_of(request))
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"error_type": type(exc).__name__})
        err = TunefleetError("internal error; quote the request id when reporting it")
        return error_response(err, request_id_of(request))


def _domain_error_in(group: BaseExceptionGroup[BaseException]) -> TunefleetError | None:
    """The first TunefleetError inside a (possibly nested) exception group, if any."""
    for sub in group.exceptions:
        found = _domain_error_in(sub) if isinstance(sub, BaseExceptionGroup) else sub
        if isinstance(found, TunefleetError):
            return found
    return None


def _render_error(exc: TunefleetError, scope: Scope) -> ASGIApp:
    return error_response(exc, scope.get("state", {}).get("request_id"))


def _http_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed"}.get(status, f"http_{status}")


def create_service_app(
    service: str,
    *,
    internal_token: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    title: str | None = None,
    registry: CollectorRegistry | None = None,
    max_body_bytes: Limit = 32 * 2**20,
    max_upload_bytes: Limit = 2**30,
    upload_limits: Mapping[str, Limit] | None = None,
    before_body: BeforeBody | None = None,
    traces_endpoint: str | None = None,
) -> FastAPI:
    """A FastAPI app with the fleet's middleware, error envelope and health endpoints.

    Bodies are bounded per route before they are read (``shared.bodylimit``): upload routes
    by ``max_upload_bytes`` (or ``upload_limits[name]`` for a route marked
    ``shared.bodylimit.upload_route(name)``), all others by ``max_body_bytes``;
    ``before_body`` (e.g. authentication) runs before a byte of the body is read.

    Readiness: append async checks to ``app.state.readiness_checks``; ``/readyz`` is 503 with
    the first failing reason, and also while ``app.state.draining`` is set. Fields put in
    ``app.state.ready_info`` are added to the ready answer, a callable one called per answer
    (an inference replica announces the base models it serves and how busy it is there).

    Tracing (``shared.tracing``) is on when ``traces_endpoint`` is set: the app's requests
    become server spans and ``app.state.tracer_provider`` is the provider for its clients
    (None when off); spans still buffered are flushed when the lifespan ends.
    """
    provider = start_tracing(service, traces_endpoint)
    if provider is not None:
        lifespan = _flushing(lifespan, provider)
    # docs pages are installed below, with assets served here rather than from a CDN
    app = FastAPI(
        title=title or f"tunefleet {service}", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    install_docs(app)
    app.state.tracer_provider = provider
    app.state.service = service
    app.state.internal_token = internal_token
    app.state.metrics_registry = registry or new_registry()
    app.state.http_metrics = HttpMetrics(app.state.metrics_registry, service)
    app.state.readiness_checks = []
    app.state.ready_info = {}  # extra fields of the ready answer (inference: its bases)
    app.state.draining = False
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=max_body_bytes,
        max_upload_bytes=max_upload_bytes,
        upload_limits=upload_limits,
        before_body=before_body,
        render=_render_error,
    )
    # added last, so outermost: refusals above carry the request id and are measured
    app.add_middleware(RequestContextMiddleware, metrics=app.state.http_metrics)
    if provider is not None:  # outermost: the whole request, its access log too, in its span
        app.add_middleware(TraceMiddleware, provider=provider)
    install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        reason = "draining" if app.state.draining else None
        for check in app.state.readiness_checks:
            if reason:
                break
            try:
                reason = await check()
            except Exception as exc:  # a readiness probe must answer, never raise
                reason = f"{type(exc).__name__}: {exc}"
        if reason:
            return JSONResponse(
                {"status": "unavailable", "service": service, "reason": reason},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        info = {k: v() if callable(v) else v for k, v in app.state.ready_info.items()}
        return JSONResponse({"status": "ready", "service": service, **info})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(render(app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _flushing(
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None,
    provider: TracerProvider,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """``lifespan``, then the spans still buffered are exported (off the event loop)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await anyio.to_thread.run_sync(provider.shutdown)

    return run
