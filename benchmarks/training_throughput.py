"""Training throughput: a plain single-process PEFT loop vs Ray TorchTrainer (1 and 2 workers).

    .venv/bin/python benchmarks/training_throughput.py [--steps 30] [--batch-size 8]
        [--max-len 128] [--rows 400] [--rank 8] [--rounds 1] [--plain-2threads]
        [--out benchmarks/results/training_throughput-<host>.json]

Same ``tiny-llama`` base, LoRA config, sentiment rows (``shared.datasets.samples``),
per-worker batch size and step count in every scenario; each rank sees the rows the Ray
train loop's sharding gives it (``epoch_shard``), so the plain loop with ``world=1`` runs
exactly the batches of the 1-worker Ray run. Scenarios:

* ``plain_1thread`` (and with ``--plain-2threads`` ``plain_2threads``): the train loop's
  own pieces (``build_model``, ``encode_example``, ``collate``) in this process,
  ``torch.set_num_threads(1|2)``;
* ``ray_1worker`` / ``ray_2workers``: :func:`services.training.ray.driver.run_training`
  on an embedded Ray head (1 CPU and 1 torch thread per worker, DDP over gloo for
  2 workers), one report at the end (``report_every = steps``), ``TorchTrainer``;
* ``ray_warm_1worker``: the same entry with ``warm_ttl_s`` set, as the training service
  runs 1-worker jobs: on the base model's warm runner (:mod:`services.training.ray.warm`),
  already started; ``ray_warm_first_job`` (once, before the rounds) is the job that
  starts it.

Ray scenarios also report ``phases``: where the wall time went (``submit``, ``start``,
``setup``, ``train``, ``checkpoint``, ``finish``, ``export``; see
:func:`services.training.ray.driver.run_phases`).

Reported per scenario: ``tokens`` (non-padding tokens processed, all workers),
``steady_tokens_per_s`` (step time only: forward/backward/optimizer, plus DDP's
all-reduce) and ``e2e_tokens_per_s`` (wall time of the whole run: for Ray, ``fit()``
including controller/worker start, model load, checkpoint and export). Derived:
``ray_overhead_steady`` / ``ray_overhead_e2e`` = 1 - ray_1worker / plain_1thread and
``scaling_efficiency_*`` = ray_2workers / (2 * ray_1worker) (weak scaling: 2 workers do
twice the rows per step). Scenarios run interleaved for ``--rounds`` rounds after waiting
(up to ``--wait-quiet`` s) for idle CPUs; each scenario reports its median-steady round,
every round's numbers and the foreign CPU share during it. ``cpu`` records how much of the
machine other processes used over the whole run, since a busy machine skews every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, CpuMonitor, host_label, log, machine_info, wait_quiet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", type=Path, default=ROOT / "var/models/tiny-llama")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8, help="rows per step per worker")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians reported")
    p.add_argument("--plain-2threads", action="store_true", help="also a 2-thread plain loop")
    p.add_argument("--wait-quiet", type=float, default=60.0, help="max s to wait for idle CPUs")
    p.add_argument("--out", type=Path, help="JSON file (default results/...-<host>.json)")
    p.add_argument("--no-out", action="store_true", help="print only")
    return p.parse_args(argv)


def versions() -> dict[str, str]:
    import peft
    import ray
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__,
    }


def loop_config(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "base_model_path": str(args.model.resolve()),
        "datasets": {"train": rows},
        "method": "lora",
        "lora": {"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0},
        "hyperparameters": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": 1e-3,
            "max_len": args.max_len,
        },
        "seed": 0,
    }


def encoded_rows(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[Any]:
    from transformers import AutoTokenizer

    from services.training.ray.train_loop import encode_example

    tok = AutoTokenizer.from_pretrained(str(args.model))
    return [encode_example(tok, r, args.max_len) for r in rows]


def planned_tokens(encoded: list, steps: int, bs: int, world: int) -> int:
    """Non-padding tokens the train loop processes in ``steps`` steps on ``world`` ranks."""
    from services.training.ray.train_loop import epoch_shard

    per_epoch = max(1, math.ceil(len(encoded) / (world * bs)))
    total = 0
    for rank in range(world):
        for step in range(steps):
            epoch, pos = divmod(step, per_epoch)
            shard = epoch_shard(len(encoded), epoch, 0, rank, world, per_epoch, bs)
            total += sum(len(encoded[i][0]) for i in shard[pos * bs : (pos + 1) * bs])
    return total


def run_plain(args: argparse.Namespace, rows: list, encoded: list, threads: int) -> dict:
    """The train loop's math without Ray: one process, ``threads`` torch threads."""
    import torch

    from services.training.ray.train_loop import build_model, collate, epoch_shard

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg = loop_config(args, rows)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    bs = args.batch_size
    per_epoch = max(1, math.ceil(len(encoded) / bs))
    tokens, step_s = 0, 0.0
    for step in range(args.steps):
        epoch, pos = divmod(step, per_epoch)
        idx = epoch_shard(len(encoded), epoch, 0, 0, 1, per_epoch, bs)[pos * bs : (pos + 1) * bs]
        ts = time.perf_counter()
        batch = collate([encoded[i] for i in idx], 0)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_s += time.perf_counter() - ts
        tokens += int(batch["attention_mask"].sum())
    wall = time.perf_counter() - t0
    return {
        "tokens": tokens,
        "steady_tokens_per_s": round(tokens / step_s, 1),
        "e2e_tokens_per_s": round(tokens / wall, 1),
        "step_seconds": round(step_s, 2),
        "wall_seconds": round(wall, 2),
    }


def run_ray(
    args: argparse.Namespace,
    rows: list,
    encoded: list,
    workers: int,
    storage: Path,
    warm_ttl_s: float = 0.0,
) -> dict:
    from services.training.ray.driver import TrainSpec, run_training

    cfg = loop_config(args, rows)
    spec = TrainSpec(
        base_model_path=args.model,
        datasets={"train": rows},
        lora=cfg["lora"],
        hyperparameters=cfg["hyperparameters"],
        num_workers=workers,
        report_every=args.steps,
        name=None,  # a fresh run name each round: V2 resumes a run dir that already exists
        warm_ttl_s=warm_ttl_s,  # > 0: the training service's fast path for 1-worker jobs
    )
    t0 = time.perf_counter()
    out = run_training(spec, storage_path=storage)
    wall = time.perf_counter() - t0
    final = out.final_metrics or {}
    tokens = planned_tokens(encoded, args.steps, args.batch_size, workers)
    return {
        "tokens": tokens,
        # the loop's own measure: tokens / (summed step seconds / world), one window
        "steady_tokens_per_s": round(float(final.get("tokens_per_second", 0.0)), 1),
        "e2e_tokens_per_s": round(tokens / wall, 1),
        "worker_setup_seconds": round(float(final.get("setup_seconds", 0.0)), 2),
        "wall_seconds": round(wall, 2),
        "path": out.path,
        "phases": out.phases,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median steady tokens/s, with every round's numbers alongside."""
    ordered = sorted(runs, key=lambda r: r["steady_tokens_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "rounds_steady_tokens_per_s": [r["steady_tokens_per_s"] for r in runs],
        "rounds_e2e_tokens_per_s": [r["e2e_tokens_per_s"] for r in runs],
        "rounds_foreign_cpu_share": [r["foreign_cpu_share"] for r in runs],
    }


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from services.training.ray.cluster import ensure_ray, shutdown_ray
    from shared.datasets import samples

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tf-tb-", dir="/tmp"))
    rows = samples.sentiment_examples(args.rows, seed=1)
    encoded = encoded_rows(args, rows)
    cpu = CpuMonitor()
    wait_quiet(args.wait_quiet)
    t0 = time.perf_counter()
    # 3 logical CPUs on 2 cores: the idle warm runner keeps its CPU while ray_2workers runs
    # (on a 2-CPU head that run would make it exit, and the next round start it again)
    ensure_ray(work / "ray", num_cpus=3, include_dashboard=True, log_to_driver=False)
    head_s = time.perf_counter() - t0
    runs: dict[str, list[dict[str, Any]]] = {}
    ttl = 3600.0

    def measure(name: str, fn: Any, *fn_args: Any) -> None:
        log(f"round {len(runs.get(name, [])) + 1}: {name}")
        mon = CpuMonitor()
        result = fn(*fn_args)
        result["foreign_cpu_share"] = mon.result()["foreign_cpu_share"]
        runs.setdefault(name, []).append(result)

    try:
        # the warm runner's first job starts it (process, imports, base model): once per
        # base model and TTL, reported on its own
        measure("ray_warm_first_job", run_ray, args, rows, encoded, 1, work / "runs", ttl)
        for _ in range(args.rounds):  # interleaved, so a busy spell hits every scenario
            measure("plain_1thread", run_plain, args, rows, encoded, 1)
            if args.plain_2threads:
                measure("plain_2threads", run_plain, args, rows, encoded, 2)
            measure("ray_1worker", run_ray, args, rows, encoded, 1, work / "runs")
            measure("ray_warm_1worker", run_ray, args, rows, encoded, 1, work / "runs", ttl)
            measure("ray_2workers", run_ray, args, rows, encoded, 2, work / "runs")
    finally:
        shutdown_ray()
    scenarios = {name: median_run(rs) for name, rs in runs.items()}
    plain, r1, r2 = scenarios["plain_1thread"], scenarios["ray_1worker"], scenarios["ray_2workers"]
    derived = {}
    for kind in ("steady", "e2e"):
        key = f"{kind}_tokens_per_s"
        derived[f"ray_overhead_{kind}"] = round(1 - r1[key] / plain[key], 3)
        derived[f"scaling_efficiency_{kind}"] = round(r2[key] / (2 * r1[key]), 3)
        for name in ("ray_1worker", "ray_warm_1worker", "ray_warm_first_job"):
            derived[f"{name}_vs_plain_{kind}"] = round(scenarios[name][key] / plain[key], 3)
        # the same ratio within each round (scenarios of a round saw the same load)
        for name in ("ray_1worker", "ray_warm_1worker"):
            derived[f"{name}_vs_plain_{kind}_rounds"] = [
                round(r[key] / p[key], 3)
                for r, p in zip(runs[name], runs["plain_1thread"], strict=True)
            ]
    report = {
        "benchmark": "training_throughput",
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "model": args.model.name,
            "steps": args.steps,
            "batch_size_per_worker": args.batch_size,
            "max_len": args.max_len,
            "rows": args.rows,
            "lora_rank": args.rank,
            "lora_targets": "q,k,v,o,gate,up,down",
            "rounds": args.rounds,
        },
        "ray_head_start_seconds": round(head_s, 2),
        "scenarios": scenarios,
        "derived": derived,
        "cpu": cpu.result(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if not args.no_out:
        label = host_label(report["machine"])
        out = args.out or ROOT / f"benchmarks/results/training_throughput-{label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log(f"wrote {out}")


if __name__ == "__main__":
    main()
