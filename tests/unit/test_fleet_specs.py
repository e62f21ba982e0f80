"""The supervisor's wiring of the fleet (ports, URLs, event fan-out)."""

from __future__ import annotations

import json

from gateway.cli.supervisor import fleet_specs


def test_start_order_and_ports_follow_the_environment() -> None:
    specs = fleet_specs({"TUNEFLEET_GATEWAY_PORT": "9100", "TUNEFLEET_REGISTRY_PORT": "9101"})
    assert [s.name for s in specs] == ["registry", "inference", "training", "gateway"]
    by = {s.name: s for s in specs}
    assert by["gateway"].port == 9100 and by["registry"].port == 9101
    assert by["gateway"].env["TUNEFLEET_GATEWAY_REGISTRY_URL"] == "http://127.0.0.1:9101"


def test_alias_events_reach_inference_and_gateway() -> None:
    registry = fleet_specs({"TUNEFLEET_GATEWAY_PORT": "9100"})[0]
    urls = json.loads(registry.env["TUNEFLEET_REGISTRY_NOTIFY_URLS"])
    assert urls == [
        "http://127.0.0.1:8003/internal/registry-events",
        "http://127.0.0.1:9100/internal/registry-events",
    ]
