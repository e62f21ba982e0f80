"""Feedback on served predictions: the correct value for a request id, turned into per-adapter
accuracy gauges so SREs see a model drift in production.

The gateway remembers the last ``capacity`` predictions (request id and response id → tenant,
adapter version, answer) in memory; feedback for an older or unknown request is a 404. Streamed
answers are not remembered (their text is never assembled by the gateway).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.errors import NotFound


@dataclass(frozen=True)
class Prediction:
    tenant: str
    adapter: str  # name@vN or the base model id (bounded)
    predicted: str


def _norm(value: str) -> str:
    return value.strip().casefold()


class FeedbackBook:
    def __init__(self, registry: CollectorRegistry, *, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, Prediction] = OrderedDict()
        # (tenant, adapter) -> [correct, total]: two tenants' "router@v1" are different adapters
        self._tally: dict[tuple[str, str], list[int]] = {}
        self.total = Counter(
            "tunefleet_gateway_feedback",
            "Feedback received on served predictions",
            ["tenant", "adapter", "outcome"],
            registry=registry,
        )
        self.accuracy = Gauge(
            "tunefleet_gateway_feedback_accuracy",
            "Share of fed-back predictions that were correct, per adapter version",
            ["tenant", "adapter"],
            registry=registry,
        )

    def remember(self, ids: list[str], prediction: Prediction) -> None:
        for i in ids:
            if i:
                self._seen[i] = prediction
                self._seen.move_to_end(i)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def record(self, tenant: str, request_id: str, correct: str) -> dict[str, Any]:
        """Score one prediction; another tenant's request id is unknown (404)."""
        p = self._seen.get(request_id)
        if p is None or p.tenant != tenant:
            raise NotFound(f"no recent prediction with id {request_id!r}", param="request_id")
        ok = _norm(p.predicted) == _norm(correct)
        tally = self._tally.setdefault((p.tenant, p.adapter), [0, 0])
        tally[0] += int(ok)
        tally[1] += 1
        self.total.labels(p.tenant, p.adapter, "correct" if ok else "wrong").inc()
        self.accuracy.labels(p.tenant, p.adapter).set(tally[0] / tally[1])
        return {
            "object": "feedback",
            "request_id": request_id,
            "adapter": p.adapter,
            "predicted": p.predicted,
            "correct": correct,
            "match": ok,
            "accuracy": tally[0] / tally[1],
            "count": tally[1],
        }
