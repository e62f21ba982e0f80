"""Tracing through the gateway to a registry process, exported over OTLP/HTTP to a collector
in the test: one trace, the registry's server span a child of the gateway's client span, the
trace id in both services' JSON log lines; and with no endpoint, nothing is instrumented."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from shared.logging import JsonFormatter
from shared.tracing import TraceMiddleware
from tests.support.otlp import CLIENT, SERVER, OtlpCollector
from tests.support.postgres import free_port
from tests.support.procs import service

TOKEN = "trace-test-token"
ADMIN = "tf-trace-test-admin"


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_gateway_to_registry_is_one_trace(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within the test's patience
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter("gateway"))
    http_log = logging.getLogger("tunefleet.http")
    http_log.addHandler(handler)
    http_log.setLevel(logging.INFO)
    with OtlpCollector() as collector:
        env = {
            "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
            "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        port = "TUNEFLEET_REGISTRY_PORT"
        with service("registry", "services.registry", tmp_path, env, port) as reg:
            reg.wait_ready(60)
            settings = GatewaySettings(
                home=tmp_path,
                internal_token=TOKEN,
                admin_key=ADMIN,
                otlp_endpoint=collector.url,
                **{
                    "registry_url": reg.url,
                    "inference_urls": [f"http://127.0.0.1:{free_port()}"],  # none: not needed
                    "training_url": f"http://127.0.0.1:{free_port()}",
                },
            )
            app = create_gateway(settings)
            assert app.state.tracer_provider is not None
            assert [m for m in app.user_middleware if m.cls is TraceMiddleware]
            try:
                async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
                    transport = httpx.ASGITransport(app=app)
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://gateway"
                    ) as gw:
                        r = await gw.get(
                            "/v1/base-models", headers={"Authorization": f"Bearer {ADMIN}"}
                        )
                        assert r.status_code == 200, r.text
                        rid = r.headers["x-request-id"]
            finally:
                http_log.removeHandler(handler)
            # the gateway's access log line of that request names its trace
            line = next(e for e in _json_lines(log.getvalue()) if e.get("request_id") == rid)
            trace_id = str(line["trace_id"])
            assert len(trace_id) == 32 and len(str(line["span_id"])) == 16
            spans = collector.wait_for(trace_id, {"gateway", "registry"})
            reg_log = reg.log_text()
        by_service = {s.service for s in spans}
        assert by_service == {"gateway", "registry"}, spans
        gw_server = [s for s in spans if s.service == "gateway" and s.kind == SERVER]
        assert [s.name for s in gw_server] == ["GET /v1/base-models"]
        assert gw_server[0].parent_id == ""
        assert gw_server[0].attributes["tunefleet.request_id"] == rid
        # W3C traceparent: the registry's server span hangs under the gateway's client span
        clients = {s.span_id for s in spans if s.service == "gateway" and s.kind == CLIENT}
        reg_server = [s for s in spans if s.service == "registry" and s.kind == SERVER]
        assert reg_server and all(s.parent_id in clients for s in reg_server), spans
        # the registry logs the same trace id (and the request id the gateway passed on)
        reg_lines = [e for e in _json_lines(reg_log) if e.get("trace_id") == trace_id]
        assert reg_lines and all(e["request_id"] == rid for e in reg_lines)
        # probes are not traced, neither served nor sent (the gateway's replica checks)
        probes = [s for s in collector.spans if "/readyz" in f"{s.name} {s.attributes}"]
        assert not probes, probes
        assert any("/v1/base-models" in str(s.attributes) for s in spans if s.kind == CLIENT)


async def test_no_endpoint_no_instrumentation(tmp_path: Path) -> None:
    settings = GatewaySettings(home=tmp_path, internal_token=TOKEN)
    assert settings.traces_endpoint() is None
    app = create_gateway(settings)
    assert app.state.tracer_provider is None
    assert not [m for m in app.user_middleware if m.cls is TraceMiddleware]
    on = GatewaySettings(home=tmp_path, internal_token=TOKEN, otlp_endpoint="http://c:4318/")
    assert on.traces_endpoint() == "http://c:4318/v1/traces"
    off = on.model_copy(update={"otel_sdk_disabled": True})
    assert off.traces_endpoint() is None
