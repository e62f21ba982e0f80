"""Multi-LoRA serving throughput of the inference engine vs. base model and a naive baseline.

    python benchmarks/inference_multilora.py [--requests N] [--concurrency C] [--out FILE]

Scenarios (same prompts, greedy, exactly ``max_tokens`` output tokens, C in flight, N
requests, ``--rounds`` interleaved rounds, median kept), all on ONE VllmEngine (device auto):

  base       the base model only
  adapter_1  every request on one rank-8 adapter
  mixed_8    8 adapters round-robin (ranks mixed 8/16), max_loras=8: all fit in the slots
  mixed_32   32 adapters round-robin with max_loras=8, max_cpu_loras>=32: slot swapping

On CPU every scenario runs twice per round on the same engine, once per LoRA path
(``--lora-paths``): ``stock`` (vLLM's own CPU punica ops) and ``fast`` (tunefleet's packed
LoRA linear, services/inference/engine/cpu_lora.py, switched at run time); on GPU only vLLM's
own kernels exist (``stock``). Plus, unless ``--no-reference``, the base model on an engine
started with LoRA disabled (what LoRA support costs), and, unless ``--no-naive``,
transformers + PEFT one request at a time. Prints one JSON document on stdout; progress goes
to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the JSON

from _common import (
    PROMPTS,
    ROOT,
    CpuMonitor,
    engine_arg_overrides,
    host_label,
    latency_stats,
    log,
    machine_info,
    make_adapters,
    median_round,
    naive_baseline,
    parse_value,
    ratio,
    versions,
    wait_quiet,
)

SCENARIOS = ("base", "adapter_1", "mixed_8", "mixed_32")
CPU_S = "output_tokens_per_cpu_s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--requests", type=int, default=64, help="requests per scenario")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median kept")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--out", type=Path, help="JSON file (default results/...-<host>.json)")
    p.add_argument("--no-out", action="store_true", help="print only, write no file")
    p.add_argument("--model", type=Path, default=ROOT / "var/models/tiny-llama")
    p.add_argument("--adapter-dir", type=Path, default=ROOT / "var/bench/adapters")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--ranks", default="8,8,8,16", help="adapter ranks, cycled over adapters 0..31")
    # Engine settings (EngineConfig); the defaults are the tuned CPU settings.
    p.add_argument("--max-lora-rank", type=int, help="default: the largest served rank")
    p.add_argument("--max-loras", type=int, default=8)
    p.add_argument("--max-cpu-loras", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=None, help="default: concurrency")
    p.add_argument(
        "--dtype", help="default: float32 on CPU (bf16 is slow without AVX512-BF16), auto on GPU"
    )
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="raw vLLM AsyncEngineArgs override, e.g. enforce_eager=false",
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="e.g. VLLM_CPU_* knobs"
    )
    p.add_argument(
        "--lora-paths",
        default="stock,fast",
        help="CPU LoRA paths to measure, each on the same engine (GPU: stock only)",
    )
    p.add_argument("--no-reference", action="store_true", help="skip the LoRA-off engine")
    p.add_argument("--no-naive", action="store_true", help="skip transformers + PEFT")
    p.add_argument("--naive-requests", type=int, default=32)
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each measurement wait up to S s for other processes to go idle",
    )
    return p.parse_args(argv)


def bench_engine_class() -> type:
    from services.inference.engine.base import GenerationRequest
    from services.inference.engine.vllm_engine import VllmEngine

    class BenchEngine(VllmEngine):
        """VllmEngine whose requests ignore EOS, so each yields exactly max_tokens tokens."""

        @staticmethod
        def sampling_params(req: GenerationRequest) -> Any:
            params = VllmEngine.sampling_params(req)
            params.ignore_eos = True
            return params

    return BenchEngine


async def run_load(
    engine: Any,
    adapters: list[Any],
    n: int,
    concurrency: int,
    max_tokens: int,
    tag: str,
) -> dict[str, Any]:
    """N requests, ``concurrency`` in flight (closed loop); request i uses
    ``adapters[i % len(adapters)]`` (``None`` = base) and prompt ``i % len(PROMPTS)``."""
    from services.inference.engine.base import GenerationRequest

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    ttft: list[float] = []
    e2e: list[float] = []
    tokens: list[int] = []

    async def one(i: int) -> None:
        req = GenerationRequest(
            request_id=f"{tag}-{i}",
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=max_tokens,
            temperature=0.0,
            adapter=adapters[i % len(adapters)],
        )
        t0 = time.perf_counter()
        first = None
        done = 0
        async for chunk in engine.generate(req):
            if first is None and chunk.completion_tokens > 0:
                first = time.perf_counter()
            done = max(done, chunk.completion_tokens)
        end = time.perf_counter()
        ttft.append((first or end) - t0)
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
    return {
        "requests": n,
        "distinct_adapters": len({a.int_id for a in adapters if a is not None}),
        "output_tokens": total,
        "min_tokens_per_request": min(tokens),
        "wall_s": round(wall, 2),
        "output_tokens_per_s": round(total / wall, 1),
        "requests_per_s": round(n / wall, 2),
        **latency_stats(ttft, "ttft"),
        **latency_stats(e2e, "e2e"),
        # Work per CPU-second of this process tree: what a busy machine distorts least.
        "output_tokens_per_cpu_s": round(total / max(cpu["own_cpu_s"], 1e-9), 1),
        **cpu,
    }


async def run_scenario(
    engine: Any, name: str, adapters: list[Any], args: argparse.Namespace, rnd: int, path: str
) -> dict[str, Any]:
    for handle in adapters:  # into vLLM's CPU cache first; loading is not measured
        if handle is not None:
            await engine.add_adapter(handle)
    # Warm-up: one short request per adapter (and a full concurrent wave for the first).
    warm = max(len(adapters), args.concurrency)
    await run_load(engine, adapters, warm, args.concurrency, 4, f"warm-{name}-{path}-{rnd}")
    if args.wait_quiet:
        await asyncio.to_thread(wait_quiet, args.wait_quiet)
    tag = f"{name}[{path}]"
    log(f"{tag} round {rnd + 1}/{args.rounds}: {args.requests} requests, C={args.concurrency}")
    result = await run_load(
        engine, adapters, args.requests, args.concurrency, args.max_tokens, f"{name}-{path}-{rnd}"
    )
    log(
        f"{tag} round {rnd + 1}: {result['output_tokens_per_s']} tok/s, "
        f"TTFT p50 {result['ttft_p50_ms']} ms, e2e p50 {result['e2e_p50_ms']} ms, "
        f"foreign CPU {result['foreign_cpu_share']}"
    )
    return result


async def run_engine(
    args: argparse.Namespace,
    config: Any,
    scenarios: list[str],
    adapter_paths: list[tuple[str, Path]],
    overrides: dict[str, Any],
    paths: list[str],
) -> dict[str, Any]:
    """Start one engine, run ``scenarios`` for each LoRA path on it, always shut it down."""
    from services.inference.engine.base import AdapterHandle

    engine = bench_engine_class()(config)
    try:
        with engine_arg_overrides(overrides):
            log(f"starting engine (overrides {overrides or 'none'})")
            await engine.start()
        log(f"engine up on {engine.device} in {engine.start_seconds:.1f}s")
        handles = [
            AdapterHandle(ref=name, int_id=engine.new_adapter_id(), path=path)
            for name, path in adapter_paths
        ]
        sets = {"base": [None], "adapter_1": handles[:1], "mixed_8": handles[:8]}
        sets["mixed_32"] = handles[:32]
        switchable = await engine.fast_cpu_lora() is not None
        if not switchable:  # GPU (vLLM's own kernels), or the plugin is not installed
            if "fast" in paths and engine.device == "cpu":
                log("fast CPU LoRA plugin not registered (pip install -e .): stock only")
            paths = ["stock"]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            path: {name: [] for name in scenarios} for path in paths
        }
        for rnd in range(args.rounds):  # interleaved, so slow drift hits every scenario
            for path in paths:
                if switchable:
                    await engine.fast_cpu_lora(path == "fast")
                for name in scenarios:
                    result = await run_scenario(engine, name, sets[name], args, rnd, path)
                    runs[path][name].append(result)
        results = {
            path: {name: median_round(r) for name, r in by_name.items()}
            for path, by_name in runs.items()
        }
        vcfg = engine.llm.vllm_config
        lora = vcfg.lora_config
        return {
            "device": engine.device,
            "start_seconds": round(engine.start_seconds or 0.0, 1),
            "model_dtype": str(vcfg.model_config.dtype),
            "lora_dtype": str(lora.lora_dtype) if lora else None,
            "vllm_max_lora_rank": lora.max_lora_rank if lora else None,
            "enforce_eager": vcfg.model_config.enforce_eager,
            "lora_paths": list(results),
            "scenarios": results,
        }
    finally:
        await engine.shutdown()


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    from services.inference.engine.base import EngineConfig
    from services.inference.engine.vllm_engine import resolve_device

    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    paths = [p for p in args.lora_paths.split(",") if p]
    if not paths or set(paths) - {"stock", "fast"}:
        raise SystemExit(f"--lora-paths: stock and/or fast, not {args.lora_paths!r}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    ranks = [int(r) for r in args.ranks.split(",")]
    n_adapters = 32 if "mixed_32" in scenarios else 8
    rank_list = [ranks[i % len(ranks)] for i in range(n_adapters)]
    log(f"making {n_adapters} adapters (ranks {sorted(set(rank_list))}) in {args.adapter_dir}")
    adapter_paths = make_adapters(args.model, args.adapter_dir, rank_list)
    served = {"base": [], "adapter_1": rank_list[:1], "mixed_8": rank_list[:8]}
    served["mixed_32"] = rank_list
    max_rank = max((r for s in scenarios for r in served[s]), default=8)
    overrides = {}
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = EngineConfig(
        model_path=args.model,
        model_id=args.model.name,
        max_model_len=512,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        max_lora_rank=args.max_lora_rank or max_rank,
        kv_cache_gib=args.kv_cache_gib,
        max_num_seqs=args.max_num_seqs or args.concurrency,
        dtype=args.dtype or ("auto" if resolve_device("auto") == "cuda" else "float32"),
        device="auto",
        fast_cpu_lora="fast" in paths,
    )
    t_start = time.perf_counter()
    main = await run_engine(args, config, scenarios, adapter_paths, overrides, paths)
    by_path = main["scenarios"]
    for res in by_path.values():
        for r in res.values():
            r["ratio_to_base"] = ratio(r, res.get("base"))
            r["ratio_to_base_per_cpu_s"] = ratio(r, res.get("base"), CPU_S)
    reference = None
    if not args.no_reference:
        ref_run = await run_engine(
            args, config, ["base"], [], {**overrides, "enable_lora": False}, ["stock"]
        )
        reference = ref_run["scenarios"]["stock"]["base"]
        for res in by_path.values():
            for r in res.values():
                r["ratio_to_base_lora_off"] = ratio(r, reference)
    naive = None
    if not args.no_naive:
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        naive = naive_baseline(args.model, adapter_paths[:8], args.naive_requests, args.max_tokens)
    naive_mixed = naive and naive["mixed_8"]
    ratios = {}
    for path, res in by_path.items():
        base = res.get("base")
        ratios[path] = {
            "adapter_1_over_base": ratio(res.get("adapter_1"), base),
            "mixed_8_over_base": ratio(res.get("mixed_8"), base),
            "mixed_8_over_base_per_cpu_s": ratio(res.get("mixed_8"), base, CPU_S),
            "mixed_32_over_base": ratio(res.get("mixed_32"), base),
            "mixed_8_over_base_lora_off": ratio(res.get("mixed_8"), reference),
            "mixed_8_over_naive_mixed_8": ratio(res.get("mixed_8"), naive_mixed),
            "mixed_8_over_naive_mixed_8_per_cpu_s": ratio(res.get("mixed_8"), naive_mixed, CPU_S),
            "base_over_naive_base": ratio(base, naive and naive["base"]),
        }
    if {"stock", "fast"} <= set(by_path):
        fast, stock = by_path["fast"], by_path["stock"]
        for suffix, key in (("", "output_tokens_per_s"), ("_per_cpu_s", CPU_S)):
            ratios[f"fast_over_stock{suffix}"] = {
                n: ratio(fast.get(n), stock.get(n), key) for n in scenarios
            }
    return {
        "benchmark": "inference_multilora",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "workload": {
            "requests": args.requests,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "distinct_prompts": len(PROMPTS),
            "sampling": "greedy (temperature 0), ignore_eos: every request yields max_tokens",
            "adapter_targets": "q_proj,k_proj,v_proj,o_proj",
            "adapter_ranks": rank_list,
        },
        "engine": {
            **{k: v for k, v in main.items() if k != "scenarios"},
            "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
            "vllm_arg_overrides": overrides,
            "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU")},
        },
        "scenarios": by_path,
        "reference_base_lora_disabled": reference,
        "naive": naive,
        "ratios": ratios,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }


def main() -> None:
    args = parse_args()
    # SIGTERM like Ctrl-C, so the engine's shutdown in `finally` runs (no orphaned cores).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = asyncio.run(amain(args))
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_out:
        out = args.out or (
            ROOT / f"benchmarks/results/inference_multilora-{host_label(report['machine'])}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
