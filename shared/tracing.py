"""OpenTelemetry traces across the fleet, on only when an OTLP endpoint is configured.

``start_tracing`` is called by the app factory (``shared.app.create_service_app``) with the
endpoint from the service's settings; it returns a per-app ``TracerProvider`` or None. With
None nothing is instrumented: no middleware, no client wrapper, no cost on the request path.
With a provider, each request the app serves is a server span (``TraceMiddleware``) and each
call its service clients make is a client span carrying the W3C ``traceparent`` header
(``instrument_client``), so gateway → registry → inference is one trace. The provider is per
app, not global: two apps in one test process keep their own.

Both layers are written here on the OpenTelemetry API rather than taken from the
``opentelemetry-instrumentation-fastapi``/``-httpx`` packages: those cost ~140 µs of CPU per
hop even with sampling off (benchmarks/tracing_overhead.py), a budget the gateway does not
have (≤ 1 ms per request). These record what an SRE follows a request by (route, status,
method, URL, request id, tenant) and nothing per ASGI message.

Spans are batched and sent over OTLP/HTTP (protobuf) by a background thread; the exporter
reads its headers, timeout and compression from the standard ``OTEL_EXPORTER_OTLP_*``
variables, and the provider its sampler from ``OTEL_TRACES_SAMPLER`` (default: parent-based,
always on).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING

import httpx
from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

# Probes and scrapes would be most of the spans and tell nothing about a request.
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_W3C = TraceContextTextMapPropagator()
_SCOPE = "tunefleet"


def start_tracing(service: str, traces_endpoint: str | None) -> TracerProvider | None:
    """A tracer provider exporting to ``traces_endpoint`` (the full OTLP/HTTP URL, ending in
    ``/v1/traces``), or None when there is none (tracing off)."""
    if not traces_endpoint:
        return None
    # Imported here: with tracing off, no SDK or exporter module is loaded at all.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "service.namespace": "tunefleet"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint)))
    return provider


class TraceMiddleware:
    """Pure ASGI: a server span per request, child of the caller's ``traceparent`` if any,
    current while the app runs (so client calls and log lines join it), named by route."""

    def __init__(self, app: ASGIApp, provider: TracerProvider) -> None:
        self.app = app
        self.tracer = provider.get_tracer(_SCOPE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {}
        for key, value in scope["headers"]:
            if key == b"traceparent" or key == b"tracestate":
                carrier[key.decode()] = value.decode("latin-1")
        parent = _W3C.extract(carrier) if carrier else None
        method = scope["method"]
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            context.detach(token)


class ClientSpans:
    """Client spans for calls made inside a traced request, ``traceparent`` put on the call's
    headers. Calls made outside one (health checks, background work) get no span: a trace
    starts at a request a service receives, never at a probe it sends."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer(_SCOPE)

    def start(
        self, method: str, host: str, url: str, headers: MutableMapping[str, str]
    ) -> Span | None:
        """A started span (its context in ``headers``), or None outside a traced request."""
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        span = self.tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "server.address": host, "url.full": url},
        )
        ctx = span.get_span_context()
        headers["traceparent"] = (
            f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        )
        if ctx.trace_state:
            headers["tracestate"] = ctx.trace_state.to_header()
        return span

    @staticmethod
    def fail(span: Span, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()

    @staticmethod
    def answered(span: Span, status: int) -> None:
        """End at the headers: a relayed stream is the server span's to time."""
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class TracedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that makes each call a client span (:class:`ClientSpans`)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, provider: TracerProvider) -> None:
        self.inner = inner
        self.spans = ClientSpans(provider)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        span = self.spans.start(
            request.method, url.host, str(url.copy_with(query=None)), request.headers
        )  # queries may carry ids: left out of the span
        if span is None:
            return await self.inner.handle_async_request(request)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            self.spans.fail(span, exc)
            raise
        self.spans.answered(span, response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def instrument_client(client: httpx.AsyncClient, provider: TracerProvider | None) -> None:
    """Trace the calls ``client`` makes (its transport and any proxy mounts); nothing when
    ``provider`` is None (tracing off)."""
    if provider is None:
        return
    # httpx has no public way to wrap a built client's transport; these two attributes are
    # where it keeps them (the OpenTelemetry httpx instrumentation wraps the same ones).
    client._transport = TracedTransport(client._transport, provider)
    client._mounts = {
        pattern: None if t is None else TracedTransport(t, provider)
        for pattern, t in client._mounts.items()
    }
