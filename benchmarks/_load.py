"""Closed-loop request load on one engine: throughput, TTFT (cold vs warm adapters), errors."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from _common import PROMPTS, CpuMonitor, latency_stats

Acquire = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


@contextlib.asynccontextmanager
async def as_is(target: Any) -> AsyncIterator[Any]:
    """The default ``acquire``: the target already is the engine's adapter handle (or None)."""
    yield target


async def run_load(
    engine: Any,
    pick: Callable[[int], Any],
    n: int,
    concurrency: int,
    max_tokens: int,
    tag: str,
    *,
    acquire: Acquire = as_is,
    is_cold: Callable[[Any], bool] | None = None,
) -> dict[str, Any]:
    """N requests, ``concurrency`` in flight (closed loop); request ``i`` serves ``pick(i)``
    (through ``acquire``, e.g. the adapter cache) with prompt ``i % len(PROMPTS)``, greedy,
    ``ignore_eos`` so each yields exactly ``max_tokens``. A failed request is counted, not
    raised. ``is_cold(target)``, checked as the request starts, splits TTFT into cold (the
    adapter had to be fetched and loaded) and warm."""
    from services.inference.engine.base import GenerationRequest

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ttft: dict[bool, list[float]] = {True: [], False: []}
    loading: list[float] = []  # cold requests: time to get the adapter (fetch, verify, load)
    e2e: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    adapters: set[int] = set()

    async def one(i: int) -> None:
        target = pick(i)
        cold = bool(is_cold and target is not None and is_cold(target))
        t0 = time.perf_counter()
        first = None
        done = 0
        try:
            async with acquire(target) as handle:
                if cold:
                    loading.append(time.perf_counter() - t0)
                if handle is not None:
                    adapters.add(handle.int_id)
                req = GenerationRequest(
                    request_id=f"{tag}-{i}",
                    prompt=PROMPTS[i % len(PROMPTS)],
                    max_tokens=max_tokens,
                    temperature=0.0,
                    ignore_eos=True,
                    adapter=handle,
                )
                async for chunk in engine.generate(req):
                    if first is None and chunk.completion_tokens > 0:
                        first = time.perf_counter()
                    done = max(done, chunk.completion_tokens)
        except Exception as e:  # counted: "no failed request" is a target
            errors.append(f"{type(e).__name__}: {e}"[:300])
            return
        end = time.perf_counter()
        ttft[cold].append((first or end) - t0)
        e2e.append(end - t0)
        tokens.append(done)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    mon = CpuMonitor()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    wall = time.perf_counter() - t0
    total = sum(tokens)
    cpu = mon.result()
    result: dict[str, Any] = {
        "requests": n,
        "failed_requests": len(errors),
        "distinct_adapters": len(adapters),
        "output_tokens": total,
        "min_tokens_per_request": min(tokens, default=0),
        "wall_s": round(wall, 2),
        "output_tokens_per_s": round(total / wall, 1),
        "requests_per_s": round(n / wall, 2),
        **latency_stats(ttft[True] + ttft[False], "ttft"),
        **latency_stats(e2e, "e2e"),
        # Work per CPU-second of this process tree: what a busy machine distorts least.
        "output_tokens_per_cpu_s": round(total / max(cpu["own_cpu_s"], 1e-9), 1),
        **cpu,
    }
    if is_cold is not None:
        result["cold_requests"] = len(ttft[True])
        result |= latency_stats(loading, "cold_adapter_load")
        result |= latency_stats(ttft[True], "cold_ttft") | latency_stats(ttft[False], "warm_ttft")
        if ttft[True] and ttft[False]:
            result["cold_extra_ttft_p99_ms"] = round(
                result["cold_ttft_p99_ms"] - result["warm_ttft_p99_ms"], 1
            )
            result["cold_extra_ttft_p50_ms"] = round(
                result["cold_ttft_p50_ms"] - result["warm_ttft_p50_ms"], 1
            )
    if errors:
        result["errors"] = sorted(set(errors))[:5]
    return result
