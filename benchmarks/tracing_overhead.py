"""CPU per request of tracing (shared/tracing.py): off, and on with spans exported over OTLP.

Two fleet apps built by ``create_service_app`` in this process: ``front`` answers each
request with one call to ``back`` through a ``ServiceClient`` (the gateway's shape: a server
span, a client span with ``traceparent``, the callee's server span). Requests go through
``httpx.ASGITransport`` one at a time; the collector is a separate process, so the CPU
counted (``time.process_time``: every thread of this process, the exporter's included) is the
fleet's own. Prints CPU µs per request and the on - off difference.

    python benchmarks/tracing_overhead.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from shared.app import create_service_app  # noqa: E402
from shared.clients.base import ServiceClient  # noqa: E402

COLLECTOR = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def build(endpoint: str | None) -> tuple[FastAPI, FastAPI]:
    back = create_service_app("back", internal_token="t", traces_endpoint=endpoint)

    @back.get("/x")
    async def x() -> dict[str, str]:
        return {"ok": "yes"}

    front = create_service_app("front", internal_token="t", traces_endpoint=endpoint)

    @front.get("/y")
    async def y() -> dict[str, str]:
        client: ServiceClient = front.state.client
        return dict(await client.json("GET", "/x"))

    return front, back


async def measure(endpoint: str | None, n: int) -> tuple[float, float]:
    front, back = build(endpoint)
    async with LifespanManager(back), LifespanManager(front):
        front.state.client = ServiceClient(
            "http://back",
            "t",
            transport=httpx.ASGITransport(app=back),
            tracer_provider=front.state.tracer_provider,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=front), base_url="http://front"
        ) as c:
            for _ in range(200):  # warm up
                assert (await c.get("/y")).status_code == 200
            t0, l0 = time.process_time(), time.thread_time()
            for _ in range(n):
                await c.get("/y")
            cpu, loop = time.process_time() - t0, time.thread_time() - l0
        await front.state.client.aclose()
    # µs per request: all threads, and the event loop's alone (the request path; the rest is
    # the exporter's thread). Spans still queued when the loop ends are not counted.
    return cpu / n * 1e6, loop / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", COLLECTOR], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        endpoint = f"http://127.0.0.1:{proc.stdout.readline().strip()}/v1/traces"
        results: dict[str, list[float]] = {"off": [], "on": []}
        loop: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):  # interleaved: a busy box shifts both alike
            for mode in ("off", "on"):
                us, loop_us = asyncio.run(
                    measure(endpoint if mode == "on" else None, args.requests)
                )
                results[mode].append(round(us, 1))
                loop[mode].append(round(loop_us, 1))
    finally:
        proc.terminate()
    best = {k: min(v) for k, v in results.items()}
    best_loop = {k: min(v) for k, v in loop.items()}
    print(
        json.dumps(
            {
                "requests": args.requests,
                "cpu_us_per_request": results,
                "event_loop_cpu_us_per_request": loop,
                "tracing_cost_us": round(best["on"] - best["off"], 1),
                "tracing_cost_on_event_loop_us": round(best_loop["on"] - best_loop["off"], 1),
                "note": "per request = one server span at front, one client span, one at back",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
