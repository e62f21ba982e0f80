"""Multi-LoRA serving throughput of the inference engine vs. base model and a naive baseline.

    python benchmarks/inference_multilora.py [--models tiny-llama,perf-llama] [--out FILE]

Every scenario runs on each model of ``--models``: ``tiny-llama`` (5.6 M params, the fleet's
default base) and ``perf-llama`` (a 91 M-param random-weight Llama with tiny-llama's
tokenizer, built in seconds by ``perf_model.py``: big enough that batching and LoRA cost
show). Scenarios (same prompts, greedy, ``ignore_eos`` so every request yields exactly
``max_tokens`` tokens, C in flight, N requests, ``--rounds`` interleaved rounds, median
kept), all on ONE VllmEngine per model (device auto):

  base       the base model only
  base_c8    the base model with at most 8 requests in flight: the bound for a scenario
             whose batches can hold only 8 distinct adapters (max_loras 8)
  adapter_1  every request on one rank-8 adapter
  mixed_8    8 adapters round-robin (ranks mixed 8/16), max_loras=8: all fit in the slots
  mixed_32   32 adapters round-robin with max_loras=8: slot swapping
  zipf_256   256 tenants' adapters, Zipf-distributed traffic, pushed to a real registry
             (in-process) and served through the inference service's AdapterCache with
             capacity ``--max-cpu-loras`` (64): a miss downloads, verifies and loads on
             demand; TTFT is split into cold (adapter not loaded at arrival) and warm

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
    CPU_S,
    PROMPTS,
    ROOT,
    engine_arg_overrides,
    host_label,
    log,
    machine_info,
    make_adapters,
    make_archives,
    median_round,
    naive_baseline,
    parse_value,
    ratio,
    scenario_ratios,
    versions,
    wait_quiet,
)
from _load import run_load
from _tenants import Tenants, zipf_sample
from perf_model import NAME as PERF_MODEL
from perf_model import bench_models_root, build_perf_model

SCENARIOS = ("base", "base_c8", "adapter_1", "mixed_8", "mixed_32", "zipf_256")
MODELS = ("tiny-llama", PERF_MODEL)
# stock: vLLM's CPU punica ops; fast: tunefleet's packed path; fast_repack: the same without
# the per-adapter piece cache (every slot swap re-cuts every slot, as the first version did).
LORA_PATHS = ("stock", "fast_repack", "fast")
HOME = Path(os.environ.get("TUNEFLEET_HOME", ROOT / "var"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--requests", type=int, default=64, help="requests per scenario")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; median kept")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--out", type=Path, help="JSON file (default results/...-<host>.json)")
    p.add_argument("--no-out", action="store_true", help="print only, write no file")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated; {MODELS}")
    p.add_argument("--models-dir", type=Path, default=HOME / "models", help="has tiny-llama")
    p.add_argument("--adapter-dir", type=Path, default=HOME / "bench/adapters")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--ranks", default="8,8,8,16", help="adapter ranks, cycled over adapters")
    p.add_argument("--zipf-adapters", type=int, default=256, help="zipf_256: tenants' adapters")
    p.add_argument("--zipf-s", type=float, default=1.0, help="zipf_256: Zipf exponent")
    # Engine settings (EngineConfig); the defaults are the tuned CPU settings.
    p.add_argument("--max-lora-rank", type=int, help="default: the largest served rank")
    p.add_argument("--max-loras", type=int, default=8)
    p.add_argument(
        "--max-cpu-loras", type=int, default=64, help="vLLM CPU cache = zipf AdapterCache size"
    )
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
        help=f"CPU LoRA paths to measure ({', '.join(LORA_PATHS)}), each on the same engine "
        "(GPU: stock only)",
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


async def run_scenario(
    engine: Any,
    name: str,
    adapters: list[Any],
    args: argparse.Namespace,
    rnd: int,
    path: str,
    tenants: Tenants | None,
) -> dict[str, Any]:
    tag = f"{name}[{path}]"
    n, c = args.requests, args.concurrency
    if name == "base_c8":  # the most any scenario that can run only 8 sequences may reach
        c = min(c, 8)
    if name == "zipf_256":
        assert tenants is not None
        tenants.open_cache(engine)  # every round starts empty and warms up the head
        try:
            warm = zipf_sample(len(tenants.resolutions), 4 * c, args.zipf_s, seed=10_000 + rnd)
            await run_load(
                engine, warm.__getitem__, len(warm), c, 4, f"warm-{tag}-{rnd}", acquire=tenants.use
            )
            if args.wait_quiet:
                await asyncio.to_thread(wait_quiet, args.wait_quiet)
            log(f"{tag} round {rnd + 1}/{args.rounds}: {n} requests, C={c}")
            picks = zipf_sample(len(tenants.resolutions), n, args.zipf_s, seed=rnd)
            result = await run_load(
                engine,
                picks.__getitem__,
                n,
                c,
                args.max_tokens,
                f"{tag}-{rnd}",
                acquire=tenants.use,
                is_cold=tenants.is_cold,
            )
        finally:
            await tenants.close_cache()
    else:
        for handle in adapters:  # into vLLM's CPU cache first; loading is not measured
            if handle is not None:
                await engine.add_adapter(handle)
        # Warm-up: one short request per adapter (and a full concurrent wave for the first).
        k = len(adapters)
        await run_load(engine, lambda i: adapters[i % k], max(k, c), c, 4, f"warm-{tag}-{rnd}")
        if args.wait_quiet:
            await asyncio.to_thread(wait_quiet, args.wait_quiet)
        log(f"{tag} round {rnd + 1}/{args.rounds}: {n} requests, C={c}")
        result = await run_load(
            engine, lambda i: adapters[i % k], n, c, args.max_tokens, f"{tag}-{rnd}"
        )
        for handle in adapters:  # out of vLLM's CPU cache: zipf_256 gets all of it
            if handle is not None:
                await engine.remove_adapter(handle)
    extra = f", cold {result.get('cold_requests')}" if "cold_requests" in result else ""
    log(
        f"{tag} round {rnd + 1}: {result['output_tokens_per_s']} tok/s, "
        f"TTFT p50 {result['ttft_p50_ms']} ms p99 {result['ttft_p99_ms']} ms, "
        f"failed {result['failed_requests']}{extra}, foreign CPU {result['foreign_cpu_share']}"
    )
    return result


async def run_engine(
    args: argparse.Namespace,
    config: Any,
    scenarios: list[str],
    adapter_paths: list[tuple[str, Path]],
    overrides: dict[str, Any],
    paths: list[str],
    archives: list[Path] | None = None,
) -> dict[str, Any]:
    """Start one engine, run ``scenarios`` for each LoRA path on it, always shut it down."""
    from services.inference.engine.base import AdapterHandle
    from services.inference.engine.vllm_engine import VllmEngine

    engine = VllmEngine(config)
    tenants = None
    try:
        with engine_arg_overrides(overrides):
            log(f"starting engine for {config.model_id} (overrides {overrides or 'none'})")
            await engine.start()
        log(f"engine up on {engine.device} in {engine.start_seconds:.1f}s")
        handles = [
            AdapterHandle(ref=name, int_id=engine.new_adapter_id(), path=path)
            for name, path in adapter_paths[:32]
        ]
        sets = {"base": [None], "base_c8": [None], "adapter_1": handles[:1]}
        sets["mixed_8"] = handles[:8]
        sets["mixed_32"] = handles[:32]
        sets["zipf_256"] = []
        if "zipf_256" in scenarios and archives:
            tenants = Tenants(config.model_path, archives, args.max_cpu_loras, config.max_lora_rank)
            log(f"pushing {len(archives)} adapters to the in-process registry")
            await tenants.start()
        switchable = await engine.fast_cpu_lora() is not None
        if not switchable:  # GPU (vLLM's own kernels), or the plugin is not installed
            if paths != ["stock"] and engine.device == "cpu":
                log("fast CPU LoRA path not active in the worker: stock only")
            paths = ["stock"]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            path: {name: [] for name in scenarios} for path in paths
        }
        for rnd in range(args.rounds):  # interleaved, so slow drift hits every scenario
            for path in paths:
                if switchable:
                    await engine.fast_cpu_lora(path != "stock")
                    await engine.fast_cpu_lora_pack(cache_pieces=path == "fast")
                for name in scenarios:
                    before = await engine.fast_cpu_lora_pack() if switchable else {}
                    result = await run_scenario(engine, name, sets[name], args, rnd, path, tenants)
                    if switchable and path != "stock":  # what packing cost in this scenario
                        after = await engine.fast_cpu_lora_pack()
                        result["pack"] = {
                            k: round(v - before.get(k, 0), 4)
                            for k, v in after.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)
                        }
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
            "fast_cpu_lora": engine.stats().get("fast_cpu_lora"),
            "model_dtype": str(vcfg.model_config.dtype),
            "lora_dtype": str(lora.lora_dtype) if lora else None,
            "vllm_max_lora_rank": lora.max_lora_rank if lora else None,
            "enforce_eager": vcfg.model_config.enforce_eager,
            "lora_paths": list(results),
            "scenarios": results,
        }
    finally:
        if tenants is not None:
            await tenants.close()
        await engine.shutdown()


def model_dir(name: str, args: argparse.Namespace) -> Path:
    """tiny-llama from ``--models-dir``; perf-llama built (cached) next to the bench data."""
    tiny = args.models_dir / "tiny-llama"
    if name == PERF_MODEL:
        return build_perf_model(tiny, bench_models_root(HOME) / PERF_MODEL)
    return args.models_dir / name


async def bench_model(
    args: argparse.Namespace, name: str, scenarios: list[str], paths: list[str]
) -> dict[str, Any]:
    """Every scenario (and the reference and naive baselines) on one model."""
    from services.inference.engine.base import EngineConfig
    from services.inference.engine.vllm_engine import resolve_device

    path = model_dir(name, args)
    ranks = [int(r) for r in args.ranks.split(",")]
    n_adapters = args.zipf_adapters if "zipf_256" in scenarios else 32
    rank_list = [ranks[i % len(ranks)] for i in range(max(n_adapters, 32))]
    log(f"[{name}] making {len(rank_list)} adapters (ranks {sorted(set(rank_list))})")
    adapter_paths = make_adapters(path, args.adapter_dir / name, rank_list)
    archives = None
    if "zipf_256" in scenarios:
        archives = make_archives(adapter_paths[:n_adapters], args.adapter_dir / f"{name}-archives")
    overrides = {}
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    config = EngineConfig(
        model_path=path,
        model_id=name,
        max_model_len=512,
        max_loras=args.max_loras,
        max_cpu_loras=args.max_cpu_loras,
        max_lora_rank=args.max_lora_rank or max(rank_list),
        kv_cache_gib=args.kv_cache_gib,
        max_num_seqs=args.max_num_seqs or args.concurrency,
        dtype=args.dtype or ("auto" if resolve_device("auto") == "cuda" else "float32"),
        device="auto",
        fast_cpu_lora=any(p.startswith("fast") for p in paths),
    )
    main = await run_engine(args, config, scenarios, adapter_paths, overrides, paths, archives)
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
        naive = naive_baseline(path, adapter_paths[:8], args.naive_requests, args.max_tokens)
    ratios = scenario_ratios(by_path, scenarios, reference, naive)
    return {
        "model_dir": str(path),
        "adapter_ranks": rank_list[:32],
        "engine": {
            **{k: v for k, v in main.items() if k != "scenarios"},
            "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
            "vllm_arg_overrides": overrides,
        },
        "scenarios": by_path,
        "reference_base_lora_disabled": reference,
        "naive": naive,
        "ratios": ratios,
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    paths = [p for p in args.lora_paths.split(",") if p]
    if not paths or set(paths) - set(LORA_PATHS):
        raise SystemExit(f"--lora-paths: some of {LORA_PATHS}, not {args.lora_paths!r}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    if "base" not in scenarios:
        scenarios.insert(0, "base")  # every ratio is to base, measured in the same run
    models = [m for m in args.models.split(",") if m]
    t_start = time.perf_counter()
    results = {m: await bench_model(args, m, scenarios, paths) for m in models}
    return {
        "benchmark": "inference_multilora",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
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
            "zipf": {"adapters": args.zipf_adapters, "s": args.zipf_s},
            "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_CPU")},
        },
        "models": results,
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
