"""Scale-out (issue 16): what a second gateway and a second replica buy, whether a tenant's
limit holds across gateways, and how fast an alias move reaches every gateway and replica.

Every service is a real process on loopback (``_fleet.py``): a throwaway Postgres shared by
every gateway, a registry, stub replicas (``_stub_replica.py``) or the real inference app with
the tests' digest engine, gateways pinned with ``taskset``. Scenarios, each with ratios measured
in one run (phases alternate round by round so background load hits both sides alike):

* ``gateways``: the same closed-loop load (``--concurrency`` in flight) through 1 gateway, or
  split round-robin over 2 (one per core), to one fast stub replica (the gateway is the
  bottleneck): requests/s of each and their ratio, gateway CPU per request.
* ``replicas``: one gateway in front of 1 or 2 capped stub replicas (each serves at most
  ``--replica-cap`` at once, ``--replica-delay`` s each, like an engine's batch), for one model
  (the base) and for traffic spread over ``--adapters`` adapters: replica affinity sends every
  request for one model version to one replica, so only the spread traffic gains.
* ``quota``: a tenant limited to ``--rpm`` requests a minute, both gateways driven as fast as
  they go for ``--quota-window`` s, with the shared (database) and the per-process (memory)
  quota state: admitted vs what one token bucket allows (``N + N * window / 60``).
* ``swap``: 2 replicas (digest engine: every answer names the weights that served it) and 2
  gateways under load; the alias ``production`` moves ``--moves`` times; per move, the time
  from the PUT until no gateway answers with the old version any more (p50 / max).

    .venv/bin/python benchmarks/scale_out.py                      # 4.5-6 min on 2 busy cores
    .venv/bin/python benchmarks/scale_out.py --seconds 20 --rounds 3 --moves 8
    .venv/bin/python benchmarks/scale_out.py --only replicas --replica-kind vllm

``--replica-kind vllm`` puts real vLLM engines (tiny-llama) behind the ``replicas`` scenario
instead of the capped stubs (on a CPU-only box both engines share its cores: expect ~1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import PROMPTS, ROOT, CpuMonitor, host_label, latency_stats, log, machine_info
from _fleet import Fleet, cpu_seconds

SCENARIOS = ("gateways", "replicas", "quota", "swap")
UNLIMITED = {"rpm": 10**9, "tpm": 10**9, "max_streams": 10**6}


async def drive(
    targets: list[tuple[str, str]], models: list[str], seconds: float, concurrency: int
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``seconds``, client ``i`` on gateway
    ``targets[i % len]`` (url, key), request ``n`` for ``models[n % len]``."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        stop = time.monotonic() + seconds

        async def worker(i: int) -> None:
            url, key = targets[i % len(targets)]
            headers = {"Authorization": f"Bearer {key}"}
            n = i
            while time.monotonic() < stop:
                body = {
                    "model": models[n % len(models)],
                    "prompt": PROMPTS[n % len(PROMPTS)],
                    "max_tokens": 16,
                    "temperature": 0,
                }
                n += concurrency
                t0 = time.perf_counter()
                try:
                    async with http.post(f"{url}/v1/completions", json=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except aiohttp.ClientError:
                    status = 0
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    lat.append(time.perf_counter() - t0)

        t0 = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.monotonic() - t0
    return {"ok": len(lat), "codes": codes, "wall_s": wall, "lat": lat}


def summarize(runs: list[dict[str, Any]], cpu_s: float | None = None) -> dict[str, Any]:
    ok = sum(r["ok"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    codes: dict[str, int] = {}
    for r in runs:
        for c, n in r["codes"].items():
            codes[str(c)] = codes.get(str(c), 0) + n
    out = {
        "requests_ok": ok,
        "status_counts": codes,
        "rps": round(ok / wall, 1) if wall else 0.0,
        "rounds_rps": [round(r["ok"] / r["wall_s"], 1) for r in runs],
        **latency_stats([x for r in runs for x in r["lat"]], "latency"),
    }
    if cpu_s is not None and ok:
        out["gateway_cpu_ms_per_request"] = round(1000 * cpu_s / ok, 3)
    return out


async def compare(
    arms: dict[str, tuple[list[tuple[str, str]], list[str], list[int]]],
    args: argparse.Namespace,
    extra: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    """Alternate the arms (targets, models, gateway pids) ``--rounds`` times."""
    for targets, models, _ in arms.values():  # warm connections, caches, resolutions
        await drive(targets, models, 2, args.concurrency)
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    cpu = dict.fromkeys(arms, 0.0)
    mon = CpuMonitor()
    for rnd in range(args.rounds):
        for name in list(arms)[:: 1 if rnd % 2 == 0 else -1]:
            targets, models, pids = arms[name]
            before = [cpu_seconds(p) for p in pids]
            x0 = extra() if extra else []
            run = await drive(targets, models, args.seconds, args.concurrency)
            cpu[name] += sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
            if extra:
                run["extra"] = [b - a for a, b in zip(x0, extra(), strict=True)]
            runs[name].append(run)
            log(f"round {rnd} {name}: {run['ok'] / run['wall_s']:.1f} req/s {run['codes']}")
    out: dict[str, Any] = {n: summarize(r, cpu[n]) for n, r in runs.items()}
    if extra:
        for n, r in runs.items():
            out[n]["served_per_replica"] = [
                sum(x) for x in zip(*(y["extra"] for y in r), strict=True)
            ]
    out["cpu"] = mon.result() | {"load_average_after": os.getloadavg()}
    return out


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return round(a["rps"] / b["rps"], 3) if b.get("rps") else None


# ---------------------------------------------------------------------- scenarios
def scenario_gateways(fleet: Fleet, args: argparse.Namespace, cpus: list[str]) -> dict[str, Any]:
    stub = fleet.stub("stub-fast", args.stub_delay)
    with ExitStack() as stack:
        ga, gb = fleet.gateways(["gw-a", "gw-b"], [stub], stack, cpus)
        key = fleet.tenant_key(ga, "bench", **UNLIMITED)
        pa, pb = fleet.pids["gw-a"], fleet.pids["gw-b"]
        arms = {
            "one_gateway": ([(ga, key)], ["tiny-llama"], [pa]),
            "two_gateways": ([(ga, key), (gb, key)], ["tiny-llama"], [pa, pb]),
        }
        out = asyncio.run(compare(arms, args))
    out["two_over_one"] = ratio(out["two_gateways"], out["one_gateway"])
    out["setup"] = (
        f"1 stub replica (answers after {args.stub_delay} s, uncapped), gateways pinned to "
        f"CPU {cpus[-1]} and {cpus[0]}, database quota state on one Postgres; client, stub, "
        "registry and Postgres unpinned"
    )
    return out


def make_archives(fleet: Fleet, names: list[str], seed0: int) -> list[Path]:
    from perf_model import write_adapter

    from shared.adapters.archive import pack_adapter_dir

    out = []
    for i, name in enumerate(names):
        d = fleet.home / "adapters" / name
        write_adapter(
            fleet.model_dir, d, r=4, targets=("q_proj", "v_proj"), seed=seed0 + i, scale=0.05
        )
        out.append(pack_adapter_dir(d, fleet.home / "adapters" / f"{name}.tar.gz"))
    return out


def scenario_replicas(fleet: Fleet, args: argparse.Namespace, cpus: list[str]) -> dict[str, Any]:
    names = [f"b{i}" for i in range(args.adapters)]
    for name, archive in zip(names, make_archives(fleet, names, 100), strict=True):
        fleet.move_alias("bench", name, fleet.push_adapter("bench", name, archive))
    if args.replica_kind == "stub":
        reps = [fleet.stub(f"stub-c{i}", args.replica_delay, args.replica_cap) for i in (0, 1)]
    else:
        reps = fleet.replicas([f"{args.replica_kind}-{i}" for i in (0, 1)], args.replica_kind)

    def served() -> list[int]:
        if args.replica_kind != "stub":
            return [0, 0]
        return [int(httpx.get(f"{r}/stats").json()["served"]) for r in reps]

    with ExitStack() as stack:
        (g1,) = fleet.gateways(["gw-r1"], reps[:1], stack, cpus[-1:])
        (g2,) = fleet.gateways(["gw-r2"], reps, stack, cpus[-1:])
        key = fleet.tenant_key(g1, "bench", **UNLIMITED)
        p1, p2 = fleet.pids["gw-r1"], fleet.pids["gw-r2"]
        arms = {
            "one_replica_one_model": ([(g1, key)], ["tiny-llama"], [p1]),
            "two_replicas_one_model": ([(g2, key)], ["tiny-llama"], [p2]),
            "one_replica_spread": ([(g1, key)], names, [p1]),
            "two_replicas_spread": ([(g2, key)], names, [p2]),
        }
        out = asyncio.run(compare(arms, args, served))
    out["one_model_two_over_one"] = ratio(
        out["two_replicas_one_model"], out["one_replica_one_model"]
    )
    out["spread_two_over_one"] = ratio(out["two_replicas_spread"], out["one_replica_spread"])
    if args.replica_kind == "stub":
        cap = args.replica_cap / args.replica_delay
        out["setup"] = (
            f"stub replicas serving at most {args.replica_cap} at once, {args.replica_delay} s "
            f"each (capacity {cap:.0f} req/s per replica); one gateway on CPU {cpus[-1]}; "
            f"'spread' = {args.adapters} adapters round-robin (rendezvous affinity places each "
            "version on one replica)"
        )
    else:
        out["setup"] = f"2 {args.replica_kind} replicas on the same {len(cpus)} cores"
    return out


async def hammer(gws: list[str], key: str, seconds: float) -> dict[str, int]:
    r = await drive([(g, key) for g in gws], ["tiny-llama"], seconds, 16)
    return {str(c): n for c, n in r["codes"].items()}


def scenario_quota(fleet: Fleet, args: argparse.Namespace, cpus: list[str]) -> dict[str, Any]:
    stub = fleet.stub("stub-quota", 0.005)
    n, window = args.rpm, args.quota_window
    allowed = n + n * window / 60  # one full bucket plus what it refills meanwhile
    out: dict[str, Any] = {"rpm": n, "window_s": window, "one_bucket_allows": round(allowed, 1)}
    for store in ("database", "memory"):
        with ExitStack() as stack:
            names = [f"gw-q{store[0]}{i}" for i in (1, 2)]
            gws = fleet.gateways(names, [stub], stack, cpus, store=store)
            key = fleet.tenant_key(gws[0], f"quota-{store}", rpm=n, tpm=10**9, max_streams=100)
            time.sleep(2.5)  # every gateway re-reads limits every 2 s
            codes = asyncio.run(hammer(gws, key, window))
        admitted = codes.get("200", 0)
        out[store] = {
            "status_counts": codes,
            "admitted": admitted,
            "admitted_over_one_bucket": round(admitted / allowed, 2),
        }
        log(f"quota {store}: {codes}")
    return out


async def swap_load(
    gws: list[str], key: str, moves: list[int], gap: float, move: Any
) -> tuple[list[tuple[float, float, int, int, str]], list[float]]:
    answers: list[tuple[float, float, int, int, str]] = []
    stop = asyncio.Event()

    async def worker(g: int) -> None:
        body = {"model": "a", "prompt": "Hi", "max_tokens": 1}
        async with httpx.AsyncClient(base_url=gws[g], timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = await http.post(
                        "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                    )
                    status = r.status_code
                    text = r.json()["choices"][0]["text"] if status == 200 else r.text
                except httpx.HTTPError as exc:
                    status, text = 0, repr(exc)
                answers.append((sent, time.monotonic(), g, status, text))

    tasks = [asyncio.create_task(worker(g)) for g in range(len(gws)) for _ in range(3)]
    moved = []
    await asyncio.sleep(gap)
    for version in moves:
        moved.append(time.monotonic())  # before the PUT is sent: the strict reference
        await asyncio.to_thread(move, version)
        await asyncio.sleep(gap)
    stop.set()
    await asyncio.gather(*tasks)
    return answers, moved


def scenario_swap(fleet: Fleet, args: argparse.Namespace, cpus: list[str]) -> dict[str, Any]:
    from tests.support.digest_engine import weights_digest

    archives = make_archives(fleet, ["swap-v1", "swap-v2"], 7)
    digests = {}
    for v, name in ((1, "swap-v1"), (2, "swap-v2")):
        assert fleet.push_adapter("swap", "a", archives[v - 1]) == v
        digests[v] = weights_digest(fleet.home / "adapters" / name)
    fleet.move_alias("swap", "a", 1)
    reps = fleet.replicas(["digest-0", "digest-1"], "digest")
    versions = [2 if i % 2 == 0 else 1 for i in range(args.moves)]
    with ExitStack() as stack:
        gws = fleet.gateways(["gw-s1", "gw-s2"], reps, stack, cpus, resolve_ttl_s=300)
        key = fleet.tenant_key(gws[0], "swap", **UNLIMITED)
        answers, moved = asyncio.run(
            swap_load(gws, key, versions, args.move_gap, lambda v: fleet.move_alias("swap", "a", v))
        )
    per_move: list[dict[str, Any]] = []
    for k, (t, v) in enumerate(zip(moved, versions, strict=True)):
        end = moved[k + 1] if k + 1 < len(moved) else float("inf")
        window = [a for a in answers if t <= a[1] < end]
        old = digests[3 - v]
        stale = [a[1] - t for a in window if a[3] == 200 and a[4] == old]
        first_new = [
            min((a[1] - t for a in window if a[2] == g and a[4] == digests[v]), default=None)
            for g in range(len(gws))
        ]
        per_move.append(
            {
                "to_version": v,
                "converged_s": round(max(stale, default=0.0), 3),
                "first_new_answer_per_gateway_s": [
                    None if f is None else round(f, 3) for f in first_new
                ],
                "old_answers_after_put": len(stale),
                "old_answers_sent_after_put": sum(
                    1 for a in window if a[3] == 200 and a[4] == old and a[0] > t
                ),
            }
        )
    conv: list[float] = [m["converged_s"] for m in per_move]
    failed = sum(1 for a in answers if a[3] != 200)
    return {
        "setup": "2 replicas (inference app, digest engine), 2 gateways (resolve TTL 300 s: "
        "only the registry's change feed can make them see a move), 3 clients per gateway",
        "requests": len(answers),
        "failed": failed,
        "moves": per_move,
        "converged_p50_s": round(statistics.median(conv), 3),
        "converged_max_s": round(max(conv), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma list of " + "/".join(SCENARIOS)
    )
    ap.add_argument("--seconds", type=float, default=6.0, help="per phase")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stub-delay", type=float, default=0.005, help="gateways: the stub's delay")
    ap.add_argument("--replica-kind", choices=("stub", "vllm", "digest"), default="stub")
    ap.add_argument("--replica-delay", type=float, default=0.05)
    ap.add_argument("--replica-cap", type=int, default=4)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rpm", type=int, default=60)
    ap.add_argument("--quota-window", type=float, default=10.0)
    ap.add_argument("--moves", type=int, default=4)
    ap.add_argument("--move-gap", type=float, default=3.0, help="seconds between alias moves")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    model_dir = (
        args.model_dir
        or Path(os.environ.get("TUNEFLEET_HOME", ROOT / "var")) / "models" / "tiny-llama"
    )
    info = machine_info()
    cpus = [str(c) for c in sorted(os.sched_getaffinity(0))]
    home = Path(tempfile.mkdtemp(prefix="tf-scale-out-"))
    os.chmod(home, 0o755)  # Postgres runs as its own user when this runs as root
    report: dict[str, Any] = {"benchmark": "scale_out", "machine": info}
    report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    runners = {
        "gateways": scenario_gateways,
        "replicas": scenario_replicas,
        "quota": scenario_quota,
        "swap": scenario_swap,
    }
    t0 = time.monotonic()
    try:
        with ExitStack() as stack:
            fleet = Fleet(home, model_dir, stack)
            for name in only:
                log(f"scenario {name}")
                t1 = time.monotonic()
                report[name] = runners[name](fleet, args, cpus)
                report[name]["wall_s"] = round(time.monotonic() - t1, 1)  # starts included
    finally:
        shutil.rmtree(home, ignore_errors=True)
    report["total_wall_s"] = round(time.monotonic() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or ROOT / "benchmarks" / "results" / f"scale_out-{host_label(info)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
