"""What the gateway costs: the same load straight to inference and through the gateway, in one
run, every service a real process on loopback (``python -m services.registry``,
``python -m services.inference``, ``python -m gateway``).

The client keeps ``--concurrency`` requests in flight for ``--seconds`` per phase; phases
alternate direct / gateway ``--rounds`` times so background noise hits both alike. Prints JSON
(and writes ``benchmarks/results/gateway_overhead-<host>.json``): requests/s of each path,
their ratio, p50/p99 latency and what the gateway adds. Target: ratio >= 0.95, <= 3 ms p50.

    .venv/bin/python benchmarks/gateway_overhead.py --seconds 20 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from _common import PROMPTS, ROOT, host_label, latency_stats, log, machine_info

TOKEN = "bench-internal-token-000"
ADMIN_KEY = "tf-bench-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def service(module: str, home: Path, env: dict[str, str], url: str) -> Iterator[int]:
    """``python -m module`` until ready (GET /readyz 200); SIGTERM on exit."""
    full = {
        **os.environ,
        "TUNEFLEET_HOME": str(home),
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_LOG_LEVEL": "WARNING",
        **env,
    }
    full.pop("DATABASE_URL", None)
    logf = (home / f"{module}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", module], env=full, stdout=logf, stderr=logf)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited; see {logf.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} not ready; see {logf.name}")
            time.sleep(0.5)
        log(f"{module} ready at {url}")
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        logf.close()


async def phase(
    url: str, headers: dict[str, str], body_for: Any, seconds: float, concurrency: int
) -> tuple[int, list[float], int]:
    """(successes, latencies, errors) of ``concurrency`` closed-loop clients for ``seconds``."""
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        stop = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal errors
            n = i
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await c.post("/v1/completions", json=body_for(n))
                dt = time.perf_counter() - t0
                n += concurrency
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return len(lat), lat, errors


async def run(args: argparse.Namespace, urls: dict[str, str], gateway_pid: int) -> dict[str, Any]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=urls["gateway"], headers=admin, timeout=30) as c:
        (await c.post("/admin/tenants", json={"id": "bench"})).raise_for_status()
        (
            await c.put(
                "/admin/quotas",
                json={"tenant": "bench", "rpm": 10**9, "tpm": 10**9, "max_streams": 10**6},
            )
        ).raise_for_status()
        r = await c.post("/admin/keys", json={"tenant": "bench", "role": "app"})
        r.raise_for_status()
        key = r.json()["key"]

    def body(n: int) -> dict[str, Any]:
        return {
            "model": "tiny-llama",
            "prompt": PROMPTS[n % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": 0,
        }

    paths = {
        "direct": (urls["inference"], {"Authorization": f"Bearer {TOKEN}", "X-Tenant-Id": "bench"}),
        "gateway": (urls["gateway"], {"Authorization": f"Bearer {key}"}),
    }
    for url, h in paths.values():  # warm both paths (connections, caches, compile)
        await phase(url, h, body, 3, args.concurrency)
    gateway_cpu = 0.0
    totals: dict[str, dict[str, Any]] = {
        n: {"ok": 0, "lat": [], "errors": 0, "s": 0.0} for n in paths
    }
    for rnd in range(args.rounds):
        order = list(paths) if rnd % 2 == 0 else list(reversed(paths))
        for name in order:
            url, h = paths[name]
            t0, cpu0 = time.monotonic(), cpu_seconds(gateway_pid)
            ok, lat, errors = await phase(url, h, body, args.seconds, args.concurrency)
            totals[name]["s"] += time.monotonic() - t0
            if name == "gateway":
                gateway_cpu += cpu_seconds(gateway_pid) - cpu0
            totals[name]["ok"] += ok
            totals[name]["lat"] += lat
            totals[name]["errors"] += errors
            log(f"round {rnd} {name}: {ok / args.seconds:.1f} req/s, {errors} errors")
    out: dict[str, Any] = {}
    for name, t in totals.items():
        out[name] = {
            "requests": t["ok"],
            "errors": t["errors"],
            "rps": round(t["ok"] / t["s"], 2),
            **latency_stats(t["lat"], "latency"),
        }
    d, g = out["direct"], out["gateway"]
    # The gateway's own cost, independent of how busy the machine is: CPU per request.
    out["gateway_cpu_ms_per_request"] = (
        round(gateway_cpu * 1000 / g["requests"], 3) if g["requests"] else None
    )
    out["throughput_ratio"] = round(g["rps"] / d["rps"], 3) if d["rps"] else None
    out["added_p50_ms"] = round(g["latency_p50_ms"] - d["latency_p50_ms"], 2)
    out["added_p99_ms"] = round(g["latency_p99_ms"] - d["latency_p99_ms"], 2)
    out["meets_target"] = bool(
        out["throughput_ratio"] and out["throughput_ratio"] >= 0.95 and out["added_p50_ms"] <= 3
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=2, help="direct/gateway phase pairs")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="default: $TUNEFLEET_HOME/models/tiny-llama"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from shared.models.build import build_model, model_is_current

    model_dir = (
        args.model_dir
        or Path(os.environ.get("TUNEFLEET_HOME", ROOT / "var")) / "models" / "tiny-llama"
    )
    if not model_is_current(model_dir):
        build_model(model_dir)
    home = Path(tempfile.mkdtemp(prefix="tf-gw-bench-"))
    ports = {n: free_port() for n in ("registry", "inference", "gateway")}
    urls = {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        with ExitStack() as stack:
            stack.enter_context(
                service(
                    "services.registry",
                    home,
                    {
                        "TUNEFLEET_REGISTRY_PORT": str(ports["registry"]),
                        "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent),
                        "TUNEFLEET_REGISTRY_NOTIFY_URLS": json.dumps(
                            [
                                f"{urls['inference']}/internal/registry-events",
                                f"{urls['gateway']}/internal/registry-events",
                            ]
                        ),
                    },
                    urls["registry"],
                )
            )
            stack.enter_context(
                service(
                    "services.inference",
                    home,
                    {
                        "TUNEFLEET_INFERENCE_PORT": str(ports["inference"]),
                        "TUNEFLEET_INFERENCE_REGISTRY_URL": urls["registry"],
                        "TUNEFLEET_INFERENCE_MODEL_DIR": str(model_dir),
                    },
                    urls["inference"],
                )
            )
            gateway_pid = stack.enter_context(
                service(
                    "gateway",
                    home,
                    {
                        "TUNEFLEET_GATEWAY_PORT": str(ports["gateway"]),
                        "TUNEFLEET_GATEWAY_REGISTRY_URL": urls["registry"],
                        "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([urls["inference"]]),
                        "TUNEFLEET_ADMIN_KEY": ADMIN_KEY,
                    },
                    urls["gateway"],
                )
            )
            result = asyncio.run(run(args, urls, gateway_pid))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    info = machine_info()
    report = {
        "benchmark": "gateway_overhead",
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **result,
    }
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / f"gateway_overhead-{host_label(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
