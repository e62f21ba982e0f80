"""One chat request through the fleet as processes is one trace, as an SRE sees it: registry,
inference and gateway run with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an OTLP/HTTP
collector in the test, and the spans of the request's trace come from all three services,
each service's server span a child of its caller's client span. The gateway's JSON log line
of the request carries the same trace id."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.otlp import CLIENT, SERVER, OtlpCollector
from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service

pytestmark = [pytest.mark.slow]
TOKEN = "trace-fleet-token"
ADMIN = "tf-trace-fleet-admin"


@pytest.fixture(scope="module")
def traced_fleet(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OtlpCollector, dict[str, ServiceProcess]]]:
    home = tmp_path_factory.mktemp("traced-fleet")
    with OtlpCollector() as collector, ExitStack() as stack:
        base = {
            "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within the test's patience
        }
        reg_env = {**base, "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)}
        reg = stack.enter_context(
            service("registry", "services.registry", home, reg_env, "TUNEFLEET_REGISTRY_PORT")
        )
        reg.wait_ready(60)
        inf_env = {
            **base,
            "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
            "TUNEFLEET_INFERENCE_REGISTRY_URL": reg.url,
            "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
            "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
        }
        inf = stack.enter_context(
            service("inference", "services.inference", home, inf_env, "TUNEFLEET_INFERENCE_PORT")
        )
        gw_env = {
            **base,
            "TUNEFLEET_ADMIN_KEY": ADMIN,
            "TUNEFLEET_GATEWAY_REGISTRY_URL": reg.url,
            "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([inf.url]),
            "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
        }
        gw = stack.enter_context(
            service("gateway", "gateway", home, gw_env, "TUNEFLEET_GATEWAY_PORT")
        )
        inf.wait_ready(300)
        gw.wait_ready(60)
        yield collector, {"registry": reg, "inference": inf, "gateway": gw}


def test_one_chat_request_is_one_trace_across_three_services(
    traced_fleet: tuple[OtlpCollector, dict[str, ServiceProcess]],
) -> None:
    collector, procs = traced_fleet
    gw = procs["gateway"].url
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.post(f"{gw}/admin/tenants", json={"id": "acme"}, headers=admin).status_code == 201
    r = httpx.post(f"{gw}/admin/keys", json={"tenant": "acme", "role": "app"}, headers=admin)
    assert r.status_code == 201, r.text
    key = r.json()["key"]

    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "max_tokens": 4,
    }
    r = httpx.post(
        f"{gw}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]

    deadline = time.monotonic() + 30
    while True:  # spans are exported in batches, a moment after the response
        gw_server = [
            s
            for s in list(collector.spans)
            if s.service == "gateway"
            and s.kind == SERVER
            and s.attributes.get("tunefleet.request_id") == rid
        ]
        if gw_server or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(gw_server) == 1, collector.spans
    trace_id = gw_server[0].trace_id
    trace = collector.wait_for(trace_id, {"gateway", "registry", "inference"})
    assert {s.service for s in trace} >= {"gateway", "registry", "inference"}, trace
    # one trace rooted at the gateway; every other server span hangs under a client span
    # of the same trace (the W3C traceparent crossed each hop)
    assert [s for s in trace if s.parent_id == ""] == gw_server
    clients = {s.span_id for s in trace if s.kind == CLIENT}
    for s in trace:
        if s.kind == SERVER and s is not gw_server[0]:
            assert s.parent_id in clients, s
    assert "POST /v1/chat/completions" in {s.name for s in trace if s.service == "inference"}

    # the gateway's JSON access log line of this request carries its trace id
    lines = [json.loads(x) for x in procs["gateway"].log_text().splitlines() if x.startswith("{")]
    access = [e for e in lines if e.get("request_id") == rid and e.get("event") == "request"]
    assert access and all(e["trace_id"] == trace_id for e in access), access
