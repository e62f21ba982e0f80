"""Engine-settings sweep for multi-LoRA throughput (adapter tokens/s relative to base).

    python benchmarks/sweep_multilora.py [--only NAME,...] [--out FILE]

Runs ``inference_multilora.py`` once per setting (each on its own fresh engine, scenarios
``base`` + ``mixed_8``, plus ``mixed_32`` where max_loras matters, each with both CPU LoRA
paths, stock and fast) and writes one JSON summary (default
``benchmarks/results/inference_multilora-sweep-<host>.json``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, host_label, log, machine_info, versions

SCRIPT = Path(__file__).resolve().parent / "inference_multilora.py"
BASIC = ["--scenarios", "base,mixed_8", "--no-naive", "--no-reference", "--no-out"]

# name -> (what it tests, extra arguments)
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "service_defaults": (
        "EngineConfig defaults: dtype auto (= bfloat16 on CPU), max_lora_rank 64, max_num_seqs 64",
        ["--dtype", "auto", "--max-lora-rank", "64", "--max-num-seqs", "64"],
    ),
    "bf16_rank16": ("dtype auto (= bfloat16), max_lora_rank 16", ["--dtype", "auto"]),
    "f32_rank64": ("float32, max_lora_rank 64", ["--max-lora-rank", "64"]),
    "f32_rank32": ("float32, max_lora_rank 32", ["--max-lora-rank", "32"]),
    "f32_rank16": ("float32, max_lora_rank 16 = largest served rank (tuned)", []),
    "f32_rank8_all_r8": (
        "float32, all adapters rank 8, max_lora_rank 8",
        ["--ranks", "8", "--max-lora-rank", "8"],
    ),
    "f32_loras16": ("float32, rank 16, max_loras 16 (> 8 distinct)", ["--max-loras", "16"]),
    "f32_compiled": (
        "float32, rank 16, enforce_eager=False (torch.compile)",
        ["--engine-arg", "enforce_eager=false"],
    ),
    "f32_c32": (
        "float32, rank 16, concurrency 32 and max_num_seqs 32",
        ["--concurrency", "32", "--max-num-seqs", "32"],
    ),
    "f32_c4": (
        "float32, rank 16, concurrency 4 and max_num_seqs 4",
        ["--concurrency", "4", "--max-num-seqs", "4"],
    ),
    "f32_bind_2cores": (
        "float32, rank 16, worker OpenMP on both cores (default 'auto' reserves one)",
        ["--env", "VLLM_CPU_OMP_THREADS_BIND=0-1", "--env", "VLLM_CPU_NUM_OF_RESERVED_CPU=0"],
    ),
    "f32_loras8_swap32": (
        "float32, rank 16, max_loras 8: 32 adapters swap through 8 slots",
        ["--max-loras", "8", "--scenarios", "base,mixed_8,mixed_32"],
    ),
    "f32_loras32": (
        "float32, rank 16, max_loras 32: all 32 adapters resident",
        ["--max-loras", "32", "--scenarios", "base,mixed_8,mixed_32"],
    ),
}


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def summarize(report: dict) -> dict:
    out: dict = {}
    for model, res in report["models"].items():
        out[f"{model}/engine"] = res["engine"]
        for path, scenarios in res["scenarios"].items():
            for name, r in scenarios.items():
                out[f"{model}/{name}[{path}]"] = {
                    "tokens_per_s": r["output_tokens_per_s"],
                    "ratio_to_base": r["ratio_to_base"],
                    "ttft_p50_ms": r["ttft_p50_ms"],
                    "ttft_p99_ms": r["ttft_p99_ms"],
                    "rounds_tokens_per_s": r["rounds_tokens_per_s"],
                    "foreign_cpu_share": r["rounds_foreign_cpu_share"],
                }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--only", help="comma-separated setting names")
    p.add_argument("--requests", default="128")
    p.add_argument("--rounds", default="2")
    p.add_argument("--wait-quiet", default="0", help="passed on (seconds)")
    p.add_argument("--models", default="tiny-llama", help="passed on")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(SETTINGS)
    machine = machine_info()
    results = {}
    for name in names:
        what, extra = SETTINGS[name]
        log(f"sweep {name}: {what}")
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--requests",
            args.requests,
            "--wait-quiet",
            args.wait_quiet,
            "--rounds",
            args.rounds,
            "--models",
            args.models,
            *BASIC,
            *extra,
        ]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            try:
                stdout, _ = proc.communicate()
            except BaseException:  # let the child shut its engine down
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
                raise
        if proc.returncode:
            raise SystemExit(f"{name}: benchmark failed (exit {proc.returncode})")
        results[name] = {"what": what, "args": extra, **summarize(json.loads(stdout))}
        summary = {k: v["ratio_to_base"] for k, v in results[name].items() if "[" in k}
        log(f"sweep {name}: ratio to base {json.dumps(summary)}")
    out = (
        args.out
        or ROOT / f"benchmarks/results/inference_multilora-sweep-{host_label(machine)}.json"
    )
    if args.only and out.is_file():  # a partial re-run updates the existing summary
        results = {**json.loads(out.read_text())["settings"], **results}
    report = {"benchmark": "inference_multilora_sweep", "timestamp": stamp(), "machine": machine}
    report |= {"versions": versions(), "settings": results}
    text = json.dumps(report, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
