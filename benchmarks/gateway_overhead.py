"""What the gateway costs: the same load straight to inference and through the gateway, in one
run, every service a real process on loopback (``python -m services.registry``,
``python -m services.inference``, ``python -m gateway``).

The client keeps ``--concurrency`` requests in flight for ``--seconds`` per phase; phases
alternate direct / gateway ``--rounds`` times so background noise hits both alike. Prints JSON
(and writes ``benchmarks/results/gateway_overhead-<host>.json``): requests/s of each path,
their ratio, p50/p99 latency, what the gateway adds, the gateway's CPU per request and the
load average around the run. Targets (issue 19): ratio >= 0.95 and <= 1 ms of gateway CPU per
request for 64-token completions at concurrency 16.

The gateway runs pinned to its own CPU(s) (``--gateway-cpus``, default the last one) and
everything else (registry, inference and its engine, this client) to the others
(``taskset``), as a gateway runs in production: on its own cores, never stealing the engine's.
``--profile`` samples the gateway with py-spy during its first measured phase and adds where
its CPU goes to the JSON.

    .venv/bin/python benchmarks/gateway_overhead.py --seconds 20 --rounds 2 --profile
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
from _common import PROMPTS, ROOT, host_label, latency_stats, log, machine_info, wait_ready

TOKEN = "bench-internal-token-000"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
ADMIN_KEY = "tf-bench-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def taskset(cpus: str | None) -> list[str]:
    """The command prefix pinning a process (and the children it starts) to ``cpus``."""
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


PROFILE_FRAMES = {
    # inclusive share of the gateway's busy samples spent under each frame
    "asgi_app_total": "RequestResponseCycle.run_asgi",
    "request_context_middleware": "RequestContextMiddleware.__call__",
    "fastapi_dependencies": "solve_dependencies",
    "inference_fast_path": "InferenceFastPath.__call__",
    "route_generate": "generate",
    "domain_generation": "Generations.complete",
    "upstream_hop_send": "Upstream.generate",
    "model_resolution": "ModelResolver.resolve",
    "auth": "authenticate_before_body",
    "quota_admission": "Quotas.admission",
    "response_send": "Response.__call__",
    "access_log": "Logger.info",
}


def profile_summary(raw: Path) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks) → share of samples under each frame; what
    is outside ``asgi_app_total`` is the event loop, HTTP parsing and the upstream reads."""
    total, under = 0, dict.fromkeys(PROFILE_FRAMES, 0)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "WorkerThread" in stack or not n.isdigit():
            continue  # idle thread-pool workers
        total += int(n)
        names = {f.split(" (")[0] for f in stack.split(";")}
        for key, frame in PROFILE_FRAMES.items():
            if frame in names:
                under[key] += int(n)
    shares = {k: round(100 * v / total, 1) for k, v in under.items()} if total else {}
    return {"busy_samples": total, "percent_under": shares}


@contextmanager
def service(
    module: str, home: Path, env: dict[str, str], url: str, cpus: str | None = None
) -> Iterator[int]:
    """``python -m module`` (pinned to ``cpus``) until ready (GET /readyz 200); SIGTERM on
    exit."""
    full = {
        **os.environ,
        "TUNEFLEET_HOME": str(home),
        "TUNEFLEET_INTERNAL_TOKEN": TOKEN,
        "TUNEFLEET_LOG_LEVEL": "WARNING",
        **env,
    }
    full.pop("DATABASE_URL", None)
    logf = (home / f"{module}.log").open("wb")
    cmd = [*taskset(cpus), sys.executable, "-m", module]
    proc = subprocess.Popen(cmd, env=full, stdout=logf, stderr=logf)
    try:
        wait_ready(proc, url, module, Path(logf.name), time.monotonic() + 600)
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
    # The gateway's CPU with no request at all: its background work (replica probes, usage
    # flush, key/quota refreshes, the registry's change feed), paid whatever the rate.
    idle_user0, idle_sys0 = cpu_times(gateway_pid)
    await asyncio.sleep(args.idle_seconds)
    idle_user1, idle_sys1 = cpu_times(gateway_pid)
    idle_ms_per_s = (idle_user1 + idle_sys1 - idle_user0 - idle_sys0) * 1000 / args.idle_seconds
    log(f"gateway idle: {idle_ms_per_s:.2f} ms of CPU per second")
    load_before = os.getloadavg()
    profile: dict[str, Any] | None = None
    gateway_cpu = 0.0
    gateway_sys = 0.0
    totals: dict[str, dict[str, Any]] = {
        n: {"ok": 0, "lat": [], "errors": 0, "s": 0.0} for n in paths
    }
    for rnd in range(args.rounds):
        order = list(paths) if rnd % 2 == 0 else list(reversed(paths))
        for name in order:
            url, h = paths[name]
            spy = None
            if name == "gateway" and args.profile and profile is None:
                raw = Path(tempfile.mkstemp(prefix="gw-pyspy-", suffix=".txt")[1])
                spy = subprocess.Popen(
                    [
                        PY_SPY,
                        "record",
                        "-p",
                        str(gateway_pid),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        "100",
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            t0, (user0, sys0) = time.monotonic(), cpu_times(gateway_pid)
            ok, lat, errors = await phase(url, h, body, args.seconds, args.concurrency)
            elapsed = time.monotonic() - t0
            if spy is not None:
                # the sampled phase is not counted at all: py-spy's pauses slow the gateway
                spy.wait()
                profile = profile_summary(raw) if raw.stat().st_size else {"error": "no samples"}
                if args.profile_stacks:
                    shutil.copyfile(raw, args.profile_stacks)
                raw.unlink()
                log(f"round {rnd} {name}: profiled, not counted")
                continue
            totals[name]["s"] += elapsed
            if name == "gateway":
                user1, sys1 = cpu_times(gateway_pid)
                gateway_cpu += user1 + sys1 - user0 - sys0
                gateway_sys += sys1 - sys0
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
    out["gateway_cpu_system_ms_per_request"] = (
        round(gateway_sys * 1000 / g["requests"], 3) if g["requests"] else None
    )
    out["gateway_idle_cpu_ms_per_s"] = round(idle_ms_per_s, 2)
    out["throughput_ratio"] = round(g["rps"] / d["rps"], 3) if d["rps"] else None
    out["added_p50_ms"] = round(g["latency_p50_ms"] - d["latency_p50_ms"], 2)
    out["added_p99_ms"] = round(g["latency_p99_ms"] - d["latency_p99_ms"], 2)
    out["load_average"] = {"before": load_before, "after": os.getloadavg()}
    if profile is not None:
        out["gateway_profile"] = profile
    cpu_ms = out["gateway_cpu_ms_per_request"]
    out["meets_target"] = bool(
        out["throughput_ratio"]
        and out["throughput_ratio"] >= 0.95
        and cpu_ms is not None
        and cpu_ms <= 1.0
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=2, help="direct/gateway phase pairs")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--idle-seconds", type=float, default=10.0, help="gateway CPU measured with no load"
    )
    last = max(os.sched_getaffinity(0))
    others = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)) if c != last)
    ap.add_argument("--gateway-cpus", default=str(last), help="taskset list; '' = unpinned")
    ap.add_argument(
        "--others-cpus", default=others, help="registry, inference, client; '' = unpinned"
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the first gateway phase")
    ap.add_argument(
        "--profile-stacks", type=Path, default=None, help="keep py-spy's collapsed stacks here"
    )
    ap.add_argument(
        "--stub-replica",
        type=float,
        default=None,
        metavar="DELAY_S",
        help="a stub replica answering after DELAY_S instead of vLLM (_stub_replica.py): the "
        "gateway's own CPU at request rates the engine cannot reach",
    )
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
    info = machine_info()  # before this process is pinned
    if args.others_cpus and shutil.which("taskset"):  # this client runs with the others
        os.sched_setaffinity(0, {int(c) for c in args.others_cpus.split(",")})
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
                    args.others_cpus,
                )
            )
            if args.stub_replica is not None:
                stub = [sys.executable, str(Path(__file__).with_name("_stub_replica.py"))]
                cmd = [*taskset(args.others_cpus), *stub]
                proc = subprocess.Popen([*cmd, str(ports["inference"]), str(args.stub_replica)])
                stack.callback(proc.terminate)
            else:
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
                        args.others_cpus,
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
                    args.gateway_cpus,
                )
            )
            result = asyncio.run(run(args, urls, gateway_pid))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report = {
        "benchmark": "gateway_overhead",
        "machine": info,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **result,
    }
    text = json.dumps(report, indent=2)
    print(text)
    name = f"gateway_overhead{'-stub' if args.stub_replica is not None else ''}"
    out = args.out or ROOT / "benchmarks" / "results" / f"{name}-{host_label(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
