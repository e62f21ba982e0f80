"""Inference metrics (per-app registry). Label ``adapter`` is ``name@vN`` or the base id; with
``tenant`` it stays bounded by the number of adapter versions, never by requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry, stats: Callable[[], dict[str, Any]]) -> None:
        p = "tunefleet_inference"
        labels = ["tenant", "adapter"]
        self.requests = Counter(
            f"{p}_requests",
            "Generation requests by outcome",
            [*labels, "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{p}_prompt_tokens", "Prompt tokens", labels, registry=registry
        )
        self.generation_tokens = Counter(
            f"{p}_generation_tokens", "Generated tokens", labels, registry=registry
        )
        self.ttft = Histogram(
            f"{p}_time_to_first_token_seconds",
            "Time to first token",
            labels,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            f"{p}_time_per_output_token_seconds",
            "Mean time per output token after the first",
            labels,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.e2e = Histogram(
            f"{p}_e2e_request_latency_seconds",
            "End-to-end latency",
            labels,
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.adapter_load = Histogram(
            f"{p}_adapter_load_seconds",
            "Download + validation + engine load of an adapter",
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.adapter_load_failures = Counter(
            f"{p}_adapter_load_failures",
            "Adapters refused or failed to load",
            ["reason"],
            registry=registry,
        )
        self.evictions = Counter(
            f"{p}_adapter_evictions", "Adapters evicted (LRU or admin)", registry=registry
        )
        self.loaded = Gauge(
            f"{p}_adapters_loaded", "Adapters loaded in the engine", registry=registry
        )
        # every series keyed by (tenant, adapter): removed when the adapter is deleted
        self._per_adapter: list[tuple[Counter | Histogram, tuple[str, ...]]] = [
            (self.requests, ("tenant", "adapter", "status")),
            (self.prompt_tokens, ("tenant", "adapter")),
            (self.generation_tokens, ("tenant", "adapter")),
            (self.ttft, ("tenant", "adapter")),
            (self.tpot, ("tenant", "adapter")),
            (self.e2e, ("tenant", "adapter")),
        ]
        running = Gauge(
            f"{p}_num_requests_running", "Sequences running in the engine", registry=registry
        )
        running.set_function(lambda: float(stats().get("running", 0)))
        waiting = Gauge(
            f"{p}_num_requests_waiting", "Sequences waiting in the engine", registry=registry
        )
        waiting.set_function(lambda: float(stats().get("waiting", 0)))

    def forget_adapter(self, tenant: str, adapter: str) -> int:
        """Remove the series of every version (label ``adapter@vN``) of ``tenant``'s deleted
        ``adapter``, so deleted versions do not keep series alive forever. Returns how many."""
        prefix = f"{adapter}@v"
        removed = 0
        for metric, names in self._per_adapter:
            doomed = {
                values
                for family in metric.collect()
                for sample in family.samples
                if (values := tuple(sample.labels.get(n, "") for n in names))[0] == tenant
                and values[1].startswith(prefix)
            }
            for values in doomed:
                metric.remove(*values)
            removed += len(doomed)
        return removed
