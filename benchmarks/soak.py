"""Bounded soak of the fleet as real processes: a fixed number of mixed requests, JSON out.

Starts registry + inference + gateway on loopback (free ports, a temp home), pushes a few
adapters, then sends ``--requests`` completions through the gateway (base model and adapters,
a share of them streamed, ``--concurrency`` at a time), sampling each service's RSS (with its
children: vLLM's EngineCore) as it goes. Prints and writes one JSON object: requests sent,
errors by kind, latency percentiles, RSS at start/end and its growth per service. Not part of
``make test`` (``make reliability`` runs it); it stops by itself after the fixed count.

    .venv/bin/python benchmarks/soak.py --requests 300 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks._common import PROMPTS, percentile  # noqa: E402
from tests.fault.procs import rss_mb, start_at  # noqa: E402
from tests.support.postgres import free_port  # noqa: E402

TOKEN = "soak-internal-token"
ADMIN_KEY = "tf-soak-admin-key"


def start_fleet(home: Path, model_dir: Path) -> dict[str, Any]:
    ports = {n: free_port() for n in ("registry", "inference", "gateway")}
    reg, inf = (f"http://127.0.0.1:{ports[n]}" for n in ("registry", "inference"))
    base = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN}
    specs = [
        (
            "registry",
            "services.registry",
            "TUNEFLEET_REGISTRY_PORT",
            {
                "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
                "TUNEFLEET_REGISTRY_NOTIFY_URLS": json.dumps([f"{inf}/internal/registry-events"]),
            },
        ),
        (
            "inference",
            "services.inference",
            "TUNEFLEET_INFERENCE_PORT",
            {
                "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
                "TUNEFLEET_INFERENCE_REGISTRY_URL": reg,
                "TUNEFLEET_INFERENCE_MAX_MODEL_LEN": "512",
                "TUNEFLEET_INFERENCE_MAX_LORA_RANK": "16",
                "TUNEFLEET_INFERENCE_MAX_LORAS": "2",
                "TUNEFLEET_INFERENCE_MAX_CPU_LORAS": "4",
            },
        ),
        (
            "gateway",
            "gateway",
            "TUNEFLEET_GATEWAY_PORT",
            {
                "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
                "TUNEFLEET_GATEWAY_REGISTRY_URL": reg,
                "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([inf]),
                "TUNEFLEET_GATEWAY_TRAINING_URL": f"http://127.0.0.1:{free_port()}",
                "TUNEFLEET_GATEWAY_DEFAULT_RPM": "100000",
                "TUNEFLEET_GATEWAY_DEFAULT_TPM": "100000000",
            },
        ),
    ]
    procs = {}
    for name, module, port_var, env in specs:
        procs[name] = start_at(name, module, home, {**base, **env}, port_var, ports[name])
        procs[name].wait_ready(900)
    return procs


def setup_tenant(gw: str, reg: str, adapters: list[Path]) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(f"{gw}/admin/tenants", json={"id": "soak"}, headers=admin).raise_for_status()
    r = httpx.post(f"{gw}/admin/keys", json={"tenant": "soak", "role": "app"}, headers=admin)
    r.raise_for_status()
    h = {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "soak"}
    for i, archive in enumerate(adapters):
        with archive.open("rb") as fh:
            httpx.post(
                f"{reg}/v1/adapters/soak{i}/versions",
                headers=h,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": '{"base_model": "tiny-llama"}'},
                timeout=60,
            ).raise_for_status()
        httpx.put(
            f"{reg}/v1/adapters/soak{i}/aliases/production", json={"version": 1}, headers=h
        ).raise_for_status()
    return str(r.json()["key"])


async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, float]:
    """Send one request; ('ok' | error kind, seconds)."""
    t0 = time.perf_counter()
    try:
        if not body.get("stream"):
            r = await client.post("/v1/completions", json=body)
            return ("ok" if r.status_code == 200 else f"http_{r.status_code}"), (
                time.perf_counter() - t0
            )
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return f"http_{r.status_code}", time.perf_counter() - t0
            lines = [ln async for ln in r.aiter_lines() if ln.startswith("data: ")]
        if not lines or lines[-1] != "data: [DONE]":
            return "stream_unterminated", time.perf_counter() - t0
        if any('"error"' in ln for ln in lines):
            return "stream_error_event", time.perf_counter() - t0
        return "ok", time.perf_counter() - t0
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.perf_counter() - t0


async def soak(args: argparse.Namespace, gw: str, key: str, procs: dict[str, Any]) -> dict:  # type: ignore[type-arg]
    rng = random.Random(args.seed)
    models = ["tiny-llama"] + [f"soak{i}" for i in range(args.adapters)]
    sem = asyncio.Semaphore(args.concurrency)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    rss: dict[str, list[float]] = {n: [rss_mb(p.proc.pid)] for n, p in procs.items()}
    done = 0

    async with httpx.AsyncClient(
        base_url=gw, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as client:

        async def task(i: int) -> None:
            nonlocal done
            body = {
                "model": models[i % len(models)],
                "prompt": PROMPTS[i % len(PROMPTS)],
                "max_tokens": rng.choice([8, 16, 32]),
                "temperature": rng.choice([0, 0.7]),
                "stream": rng.random() < args.stream_fraction,
            }
            async with sem:
                kind, secs = await one(client, body)
            outcomes[kind] += 1
            if kind == "ok":
                latencies.append(secs)
            done += 1
            if done % 50 == 0:
                for n, p in procs.items():
                    rss[n].append(rss_mb(p.proc.pid))
                print(f"[soak] {done}/{args.requests} {dict(outcomes)}", file=sys.stderr)

        t0 = time.monotonic()
        await asyncio.gather(*(task(i) for i in range(args.requests)))
        elapsed = time.monotonic() - t0
    for n, p in procs.items():
        rss[n].append(rss_mb(p.proc.pid))
    errors = {k: v for k, v in outcomes.items() if k != "ok"}
    return {
        "requests": args.requests,
        "ok": outcomes["ok"],
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "concurrency": args.concurrency,
        "models": len(models),
        "stream_fraction": args.stream_fraction,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(args.requests / elapsed, 2),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "rss_mb": {n: {"start": v[0], "end": v[-1], "max": max(v)} for n, v in rss.items()},
        # Sampled after the warm-up call, then every 50 requests: the total growth, and the
        # growth after the first 50 (allocator and cache warm-up excluded).
        "rss_growth_mb": {n: round(v[-1] - v[0], 1) for n, v in rss.items()},
        "rss_growth_after_50_mb": {
            n: round(v[-1] - v[1], 1) if len(v) > 2 else None for n, v in rss.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--stream-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "var" / "models" / "tiny-llama")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()

    from shared.models.build import build_model, model_is_current
    from tests.fault.procs import kill_hard
    from tests.support.adapters import make_adapter, pack

    if not model_is_current(args.model_dir):
        build_model(args.model_dir)
    home = Path(tempfile.mkdtemp(prefix="tf-soak-"))
    adapters = [
        pack(make_adapter(args.model_dir, home / f"a{i}", seed=i), home / f"a{i}.tar.gz")
        for i in range(args.adapters)
    ]
    procs = start_fleet(home, args.model_dir)
    try:
        key = setup_tenant(procs["gateway"].url, procs["registry"].url, adapters)
        # Warm-up (first adapter loads, first compile) is not part of the measurement.
        warm = argparse.Namespace(**{**vars(args), "requests": args.adapters + 1, "concurrency": 1})
        asyncio.run(soak(warm, procs["gateway"].url, key, procs))
        result = asyncio.run(soak(args, procs["gateway"].url, key, procs))
    finally:
        for sp in reversed(list(procs.values())):
            sp.stop(90)
            if sp.proc.poll() is None:
                kill_hard(sp)
    result["home"] = str(home)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
