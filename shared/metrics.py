"""Per-app Prometheus registries (two apps in one test process never collide).

Metric names start with ``tunefleet_<service>_``; labels are bounded (route templates, status
codes, adapter versions), never request ids or raw paths.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

__all__ = ["CONTENT_TYPE_LATEST", "HttpMetrics", "new_registry", "render"]


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class HttpMetrics:
    """Request count, latency and in-flight gauge for one service's HTTP surface."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        prefix = f"tunefleet_{service}_http"
        self.requests = Counter(
            f"{prefix}_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{prefix}_request_duration_seconds",
            "HTTP request latency (to last byte)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_requests_in_flight", "HTTP requests being served", registry=registry
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
