"""OpenTelemetry traces across the fleet, on only when an OTLP endpoint is configured.

``start_tracing`` is called by the app factory (``shared.app.create_service_app``) with the
endpoint from the service's settings; it returns a per-app ``TracerProvider`` or None. With
None nothing is instrumented: no middleware, no client wrapper, no cost on the request path.
With a provider, the app's server spans (FastAPI) and the service clients' client spans
(httpx) go to it, and every inter-service call carries the W3C ``traceparent`` header, so
gateway → registry → inference is one trace. The provider is per app, not global: two apps in
one test process keep their own.

Spans are batched and sent over OTLP/HTTP (protobuf) by a background thread; the exporter
reads its headers, timeout and compression from the standard ``OTEL_EXPORTER_OTLP_*``
variables, and the sampler from ``OTEL_TRACES_SAMPLER`` when it is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

# Probes and scrapes would be most of the spans and tell nothing about a request.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics")


class NoClientRoots(Sampler):
    """A trace starts at a request a service receives, never at a call it makes on its own:
    the gateway's replica health checks (one every second or so per replica) would otherwise
    each be a one-span trace. Calls made inside a request follow their parent's decision."""

    def __init__(self, root: Sampler = ALWAYS_ON) -> None:
        self._root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._root.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoClientRoots{{{self._root.get_description()}}}"


def start_tracing(
    service: str,
    traces_endpoint: str | None,
    *,
    processor: SpanProcessor | None = None,
) -> TracerProvider | None:
    """A tracer provider exporting to ``traces_endpoint`` (the full OTLP/HTTP URL, ending in
    ``/v1/traces``), or None when there is no endpoint and no ``processor`` (tracing off).

    ``processor`` replaces the OTLP exporter (an in-memory one in tests)."""
    if not traces_endpoint and processor is None:
        return None
    # Imported here: with tracing off, no SDK or exporter module is loaded at all.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(NoClientRoots())
    resource = Resource.create({"service.name": service, "service.namespace": "tunefleet"})
    provider = TracerProvider(resource=resource, sampler=sampler)
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_endpoint))
    provider.add_span_processor(processor)
    return provider


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    """Server spans for every request but probes, named by route template."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus' (shared.metrics)
        excluded_urls=",".join(f"{p}$" for p in UNTRACED_PATHS),
        # one span per ASGI message would be one per streamed token
        exclude_spans=["receive", "send"],
    )


def instrument_client(client: httpx.AsyncClient, provider: TracerProvider | None) -> None:
    """Client spans and ``traceparent`` on every call ``client`` makes; nothing when off."""
    if provider is None:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    HTTPXClientInstrumentor.instrument_client(
        client, tracer_provider=provider, meter_provider=NoOpMeterProvider()
    )
